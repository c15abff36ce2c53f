"""EvalMuse (image generation, pointwise, scale 1-5).

JSON rows ``{prompt, img_path, total_score, element_score, ...}``. ``total_score`` is a
list with one score per annotator and is averaged (``null`` entries, an annotator who
gave none, are left out; a list with no score at all is an error); a plain number is
accepted too. ``element_score`` (per-element alignment), ``prompt_id``, ``type`` and the
annotator scores are kept in ``meta``. Images are resolved against ``media_root`` if
given, else the data set's folder. The release has no id field; ids are
``<file stem>-<row>`` unless a row carries ``id``.
"""

from __future__ import annotations

from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources.common import (
    as_list,
    evidence_of,
    load_rows,
    map_rows,
    media_ref,
    number,
    require,
    row_id,
    source_root,
    within,
)

NAME = "evalmuse"
TASKS = ("image_generation",)
SCALE = (1.0, 5.0)


def _total_score(row: dict) -> tuple[float, list[float]]:
    value = require(row, "total_score")
    if isinstance(value, list | tuple) or (isinstance(value, str) and value.lstrip()[:1] == "["):
        scores = [number(v, "total_score") for v in as_list(value, "total_score")
                  if v is not None]
        if not scores:
            raise RecordError("no annotator score in the list", field="total_score")
    else:
        scores = [number(value, "total_score")]
    for s in scores:
        within(s, SCALE, "total_score")
    return sum(scores) / len(scores), scores


def read(path, *, split=None, media_root=None):
    root = source_root(path, media_root)

    def build(row, file, i):
        prompt = require(row, "prompt", str)
        image = media_ref(require(row, "img_path"), kind="image", root=root, field="img_path")
        score, scores = _total_score(row)
        meta = {"annotator_scores": scores}
        for key in ("element_score", "prompt_id", "type"):
            if row.get(key) is not None:
                meta[key] = row[key]
        return PreferenceRecord(
            task="image_generation", form="pointwise", source=NAME, id=row_id(row, file, i),
            prompt=prompt, media=(image,), score=score, scale=SCALE,
            evidence=evidence_of(row), meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)
