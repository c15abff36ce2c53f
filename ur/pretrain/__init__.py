"""Tiny bases made on the synthetic world, each cached under a lock and recorded as a
run of its own: :mod:`.tiny_vlm`, the tiny vision-language model that judges and
answers. Used by the command line and by whoever needs a base before training; no
LightningModule builds one in its ``__init__``."""

from ur.pretrain.tiny_vlm import TinyVLMSpec, ensure_tiny_vlm

__all__ = ["TinyVLMSpec", "ensure_tiny_vlm"]
