"""When a cached tiny base must be built: missing, or built by ``pretrain:`` from other
settings. A folder that ``pretrain:`` did not build (a trained judge, an exported
generator, a downloaded checkpoint) is never replaced."""

from __future__ import annotations

import json
from pathlib import Path

SPEC_FILE = "ur_pretrain.json"
"""The marker a built base carries: the settings it was built from, and its metrics."""


class NotABuiltBase(FileExistsError):
    """The checkpoint folder holds files that ``pretrain:`` did not build."""


def needs_build(checkpoint: Path, wanted: dict, *, option: str = "pretrain") -> bool:
    """Whether the base at ``checkpoint`` must be (re)built for the settings ``wanted``.

    Raises :class:`NotABuiltBase` when the folder holds files but no marker: building
    there would replace them (say, a trained judge named as the model's checkpoint in a
    config that also builds a base)."""
    checkpoint = Path(checkpoint)
    marker = checkpoint / SPEC_FILE
    if marker.exists():
        try:
            stored = json.loads(marker.read_text()).get("spec")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            stored = None  # a torn marker of our own: build again
        return stored != wanted
    if checkpoint.is_dir() and any(checkpoint.iterdir()):
        raise NotABuiltBase(
            f"{checkpoint} holds files that {option}: did not build (it has no {SPEC_FILE}), "
            f"so it is not replaced by a new tiny base. To use the model there, drop the "
            f"option (--{option} null); to build a tiny base, name a new folder.")
    if checkpoint.exists() and not checkpoint.is_dir():
        raise NotABuiltBase(f"{checkpoint} is a file, not a folder a tiny base can be built in")
    return True
