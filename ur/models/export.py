"""Saving a (possibly LoRA-wrapped) model as a Hugging Face folder transformers alone loads."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path


def save_hf(model, processor, out: str | Path, *, merge_lora: bool = True) -> Path:
    """Write ``model`` and ``processor`` to ``out`` with ``save_pretrained`` (safetensors).

    A PEFT model is merged into plain weights when ``merge_lora`` (on a copy, so the
    model being trained is left as it is; that copy costs one model's memory), else saved
    as an adapter folder next to its base's processor. The folder is written under a
    temporary name and renamed, so ``out`` is never half written.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    to_save = model
    if merge_lora and hasattr(model, "merge_and_unload"):
        to_save = copy.deepcopy(model).merge_and_unload()
    to_save.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    gen = getattr(to_save, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
