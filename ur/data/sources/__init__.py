"""Source adapters: one module per public data set schema, each mapping its files onto
:class:`ur.data.records.PreferenceRecord`.

Every adapter module defines ``NAME``, ``TASKS`` (the tasks it can yield) and
``read(path, *, split=None, media_root=None, **options)``, which yields records and, for
rows that cannot be used, :class:`RecordError` items (so a caller can list every
problem, or skip and count them). :func:`read_source` is the one entry point.

The DPO pair schemas (:data:`PAIR_SCHEMAS`, one per task) are written too: their
modules define ``write_pairs(path, pairs, *, media_root=None, **options) -> Path``,
which writes pairwise records (the preferred candidate as the chosen one) in the
schema, so that ``read`` gives the same judgments back. :func:`write_pairs` is the
entry point.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Iterator
from pathlib import Path

from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources.common import Item

SOURCE_NAMES: tuple[str, ...] = (
    "pickapic_v2",
    "hpdv2",
    "evalmuse",
    "videofeedback",
    "videodpo",
    "llava_critic",
    "sharegptvideo_dpo",
    "image_dpo",
    "genai_bench",
    "videogen_rewardbench",
    "vl_rewardbench",
    "llava_sft",
)
# The schema DPO pairs of each task are written in (FACTS.md section 7, "DPO pairs").
PAIR_SCHEMAS: dict[str, str] = {
    "image_generation": "pickapic_v2",
    "video_generation": "videodpo",
    "image_understanding": "image_dpo",
    "video_understanding": "sharegptvideo_dpo",
}


def get_source(name: str):
    if name not in SOURCE_NAMES:
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(SOURCE_NAMES)}")
    return importlib.import_module(f"ur.data.sources.{name}")


def adapter_options(name: str) -> tuple[str, ...]:
    """The options source ``name``'s reader takes (beyond path, split and media root)."""
    params = inspect.signature(get_source(name).read).parameters
    return tuple(k for k in params if k not in ("path", "split", "media_root"))


def option_errors(name: str, options: dict, path: str | Path | None = None
                  ) -> list[RecordError]:
    """An error naming each of ``options`` that source ``name`` does not take."""
    known = adapter_options(name)
    return [RecordError(f"{name} has no option {key!r}; its options: "
                        f"{', '.join(known) or 'none'}", file=path, field=key)
            for key in options if key not in known]


def read_source(name: str, path: str | Path, *, split: str | None = None,
                media_root: str | Path | None = None, **options) -> Iterator[Item]:
    """Yield every record (and every problem, as a RecordError) of one source."""
    adapter = get_source(name)
    unknown = option_errors(name, options, path)
    if unknown:
        yield from unknown
        return
    try:
        yield from adapter.read(path, split=split, media_root=media_root, **options)
    except RecordError as e:
        yield e.located(file=path)
    except (OSError, UnicodeDecodeError) as e:
        yield RecordError(f"cannot read: {e}", file=path)


def write_pairs(name: str, path: str | Path, pairs: Iterable[PreferenceRecord], *,
                media_root: str | Path | None = None, **options) -> Path:
    """Write pairwise records to ``path`` in the schema of source ``name`` (one of
    :data:`PAIR_SCHEMAS`' values) and return the path."""
    adapter = get_source(name)
    if not hasattr(adapter, "write_pairs"):
        raise ValueError(f"source {name!r} is read only; pairs are written in "
                         f"{', '.join(sorted(set(PAIR_SCHEMAS.values())))}")
    return adapter.write_pairs(path, pairs, media_root=media_root, **options)
