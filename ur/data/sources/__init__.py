"""Source adapters: one module per public data set schema, each mapping its files onto
:class:`ur.data.records.PreferenceRecord`.

Every adapter module defines ``NAME``, ``TASKS`` (the tasks it can yield) and
``read(path, *, split=None, media_root=None, **options)``, which yields records and, for
rows that cannot be used, :class:`RecordError` items (so a caller can list every
problem, or skip and count them). :func:`read_source` is the one entry point.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

from ur.data.records import RecordError
from ur.data.sources.common import Item

SOURCE_NAMES: tuple[str, ...] = (
    "pickapic_v2",
    "hpdv2",
    "evalmuse",
    "videofeedback",
    "videodpo",
    "llava_critic",
    "sharegptvideo_dpo",
    "genai_bench",
    "videogen_rewardbench",
    "vl_rewardbench",
    "llava_sft",
)


def get_source(name: str):
    if name not in SOURCE_NAMES:
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(SOURCE_NAMES)}")
    return importlib.import_module(f"ur.data.sources.{name}")


def read_source(name: str, path: str | Path, *, split: str | None = None,
                media_root: str | Path | None = None, **options) -> Iterator[Item]:
    """Yield every record (and every problem, as a RecordError) of one source."""
    adapter = get_source(name)
    try:
        yield from adapter.read(path, split=split, media_root=media_root, **options)
    except RecordError as e:
        yield e.located(file=path)
    except (OSError, UnicodeDecodeError) as e:
        yield RecordError(f"cannot read: {e}", file=path)
