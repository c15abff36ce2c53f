"""Tiny bases made on the synthetic world, each cached under a lock and recorded as a
run of its own: :mod:`.tiny_vlm`, the tiny vision-language model that judges and
answers, and :mod:`.tiny_generator`, the tiny text-to-image and text-to-video models.
Used by the command line and by whoever needs a base before training; no
LightningModule builds one in its ``__init__``."""

from ur.pretrain.tiny_generator import TinyGeneratorSpec, ensure_tiny_generator
from ur.pretrain.tiny_vlm import TinyVLMSpec, ensure_tiny_vlm

__all__ = ["TinyGeneratorSpec", "TinyVLMSpec", "ensure_tiny_generator", "ensure_tiny_vlm"]
