"""Vision-language models: loading by id or path, parts and LoRA, tiny real checkpoints."""

from ur.models.loading import (
    PARTS,
    load_vlm,
    lora_wrap,
    parameter_counts,
    part_of,
    trainable_parts,
)
from ur.models.tiny import FAMILIES, build_tiny_vlm, read_manifest

__all__ = [
    "FAMILIES",
    "PARTS",
    "build_tiny_vlm",
    "load_vlm",
    "lora_wrap",
    "parameter_counts",
    "part_of",
    "read_manifest",
    "trainable_parts",
]
