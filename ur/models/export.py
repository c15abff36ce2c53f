"""Saving a (possibly LoRA-wrapped) model as a Hugging Face folder transformers alone loads."""

from __future__ import annotations

import copy
from pathlib import Path

from ur.io import atomic_dir


def refuse_to_replace(out: str | Path) -> None:
    """Raise :class:`FileExistsError` if ``out`` is a file or a folder with anything in
    it: an export goes into a new or empty folder unless asked to replace one."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder")


def save_hf(model, processor, out: str | Path, *, merge_lora: bool = True,
            overwrite: bool = False) -> Path:
    """Write ``model`` and ``processor`` to ``out`` with ``save_pretrained`` (safetensors).

    A PEFT model is merged into plain weights when ``merge_lora`` (on a copy, so the
    model being trained is left as it is; that copy costs one model's memory), else saved
    as an adapter folder next to its base's processor. The folder is written under a
    temporary name and renamed, so ``out`` is never half written. An ``out`` that holds
    anything is replaced only with ``overwrite`` (and only once the new folder is
    complete); otherwise it is left as it is and :class:`FileExistsError` says so, before
    anything is written.
    """
    out = Path(out)
    if not overwrite:
        refuse_to_replace(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        to_save = model
        if merge_lora and hasattr(model, "merge_and_unload"):
            to_save = copy.deepcopy(model).merge_and_unload()
        to_save.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        gen = getattr(to_save, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
    return out
