"""Pick-a-Pic v2 (image generation, pairwise).

Parquet shards with ``caption``, ``jpg_0`` and ``jpg_1`` (JPEG bytes), ``label_0`` and
``label_1`` (1/0 for a preference, 0.5/0.5 for a tie), ``model_0``/``model_1`` and
``ranking_id``. ``label_0 == 1`` means the first image was preferred. The models are
kept in ``meta``, and so is the synthetic world's ``ur_scores`` column (one score per
image, in the row's order).

:func:`write_pairs` writes pairwise image-generation records in this schema, in the
record's order with the label saying which image is preferred (``first`` is ``label_0 =
1``), the images inline as bytes (a path is read, not copied), ``model_0``/``model_1``
from ``meta``. A tie is refused unless asked for with ``ties=True`` (the public set
holds ties as 0.5/0.5; a DPO trainer leaves them out).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

from ur.data.records import Media, PreferenceRecord, RecordError
from ur.data.sources.common import (
    candidate_scores_of,
    check_pair,
    evidence_of,
    generation_scores,
    load_rows,
    map_rows,
    media_ref,
    number,
    refuse_tie,
    require,
    source_root,
)
from ur.io import write_bytes_atomic

NAME = "pickapic_v2"
TASKS = ("image_generation",)
MODEL_COLUMNS = ("model_0", "model_1")
_LABELS = {"first": (1.0, 0.0), "second": (0.0, 1.0), "tie": (0.5, 0.5)}


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
        meta = {k: row[k] for k in MODEL_COLUMNS if k in row}
        scores = candidate_scores_of(row)
        if scores is not None:
            meta["ur_scores"] = scores
        return PreferenceRecord(
            task="image_generation", form="pairwise", source=NAME, id=str(rid),
            prompt=caption, media=media, label=_label(row), evidence=evidence_of(row),
            meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)


def _image_bytes(media: Media, path: Path, record_id: str) -> bytes:
    if media.data is not None:
        return media.data
    try:
        return Path(media.path).read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: record {record_id!r}: cannot read {media.field or 'image'} "
                         f"{media.path!r} ({e.strerror or e})") from None


def write_pairs(path: str | Path, pairs: Iterable[PreferenceRecord], *,
                media_root: str | Path | None = None, ties: bool = False) -> Path:
    """Write ``pairs`` to the parquet file ``path`` and return the path. Images are
    stored as bytes, so ``media_root`` (kept for the writers' common shape) has nothing
    to do. ``ties=True`` writes tie records as 0.5/0.5 instead of refusing them. The
    file is written only when every record could be."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix != ".parquet":
        raise ValueError(f"{path}: Pick-a-Pic pairs are written to a .parquet file")
    rows = []
    for record in pairs:
        check_pair(record, "image_generation", path)
        if not ties:
            refuse_tie(record, path)
        l0, l1 = _LABELS[record.label]
        row = {"ranking_id": record.id, "caption": record.prompt,
               "jpg_0": _image_bytes(record.media[0], path, record.id),
               "jpg_1": _image_bytes(record.media[1], path, record.id),
               "label_0": l0, "label_1": l1}
        row.update({k: record.meta[k] for k in MODEL_COLUMNS if k in record.meta})
        # The world's extra columns, as JSON text (a column type every reader takes).
        if record.evidence is not None:
            row["ur_evidence"] = json.dumps(list(record.evidence))
        scores = generation_scores(record, path)
        if scores is not None:
            row["ur_scores"] = json.dumps(scores)
        rows.append(row)
    if rows:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        table = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows])
    else:
        table = pa.schema([("ranking_id", pa.string()), ("caption", pa.string()),
                           ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
                           ("label_0", pa.float64()),
                           ("label_1", pa.float64())]).empty_table()
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, buf.getvalue())
