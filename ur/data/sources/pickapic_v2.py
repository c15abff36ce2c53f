"""Pick-a-Pic v2 (image generation, pairwise).

Parquet shards with ``caption``, ``jpg_0`` and ``jpg_1`` (JPEG bytes), ``label_0`` and
``label_1`` (1/0 for a preference, 0.5/0.5 for a tie), ``model_0``/``model_1`` and
``ranking_id``. ``label_0 == 1`` means the first image was preferred.
"""

from __future__ import annotations

from pathlib import Path

from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources.common import (
    evidence_of,
    load_rows,
    map_rows,
    media_ref,
    number,
    require,
    source_root,
)

NAME = "pickapic_v2"
TASKS = ("image_generation",)


def _label(row: dict) -> str:
    l0 = number(require(row, "label_0"), "label_0")
    l1 = number(row.get("label_1", 1 - l0), "label_1")
    if l0 == 0.5 and l1 == 0.5:
        return "tie"
    if (l0, l1) == (1.0, 0.0):
        return "first"
    if (l0, l1) == (0.0, 1.0):
        return "second"
    raise RecordError(f"labels ({l0:g}, {l1:g}) are not one of (1, 0), (0, 1), (0.5, 0.5)",
                      field="label_0")


def read(path, *, split=None, media_root=None):
    root = source_root(path, media_root)

    def build(row, file, i):
        caption = require(row, "caption", str)
        media = (media_ref(require(row, "jpg_0"), kind="image", root=root, field="jpg_0"),
                 media_ref(require(row, "jpg_1"), kind="image", root=root, field="jpg_1"))
        rid = row.get("ranking_id") or row.get("id") or f"{Path(file).stem}-{i}"
        return PreferenceRecord(
            task="image_generation", form="pairwise", source=NAME, id=str(rid),
            prompt=caption, media=media, label=_label(row), evidence=evidence_of(row),
            meta={k: row[k] for k in ("model_0", "model_1") if k in row},
            file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)
