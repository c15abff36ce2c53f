"""VideoGen-RewardBench (video generation, pairwise; an evaluation set).

CSV rows ``{path_A, path_B, prompt, VQ, MQ, TA, Overall, ...}``: two generated videos
and human verdicts per dimension (visual quality, motion quality, text alignment,
overall), each ``A``, ``B`` or ``same`` (a tie). The option ``dimension=`` (default
``Overall``; matched ignoring case) picks the column that labels the record; the
verdicts of all four columns are kept in ``meta["verdicts"]``, the models in ``meta``.
A verdict other than A/B/same in the chosen column is an error on that column; the
others are kept raw. Video paths are resolved against ``media_root`` if given, else
the data set's folder.
"""

from __future__ import annotations

from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources.common import (
    evidence_of,
    load_rows,
    map_rows,
    media_ref,
    require,
    row_id,
    source_root,
)

NAME = "videogen_rewardbench"
TASKS = ("video_generation",)
DIMENSIONS = ("VQ", "MQ", "TA", "Overall")
VERDICTS = {"a": "first", "b": "second", "same": "tie"}


def _dimension(value) -> str:
    for dim in DIMENSIONS:
        if str(value).strip().lower() == dim.lower():
            return dim
    raise RecordError(f"unknown dimension {value!r}; expected one of {', '.join(DIMENSIONS)}",
                      field="dimension")


def read(path, *, split=None, media_root=None, dimension: str = "Overall"):
    root = source_root(path, media_root)
    column = _dimension(dimension)

    def build(row, file, i):
        prompt = require(row, "prompt", str)
        verdict = require(row, column, str).strip().lower()
        if verdict not in VERDICTS:
            raise RecordError(f"verdict {row[column]!r} is not A, B or same", field=column)
        media = tuple(media_ref(require(row, k), kind="video", root=root, field=k)
                      for k in ("path_A", "path_B"))
        meta = {"dimension": column,
                "verdicts": {d: row[d] for d in DIMENSIONS if row.get(d) is not None}}
        meta.update({k: row[k] for k in ("A_model", "B_model") if row.get(k) is not None})
        return PreferenceRecord(
            task="video_generation", form="pairwise", source=NAME, id=row_id(row, file, i),
            prompt=prompt, media=media, label=VERDICTS[verdict], evidence=evidence_of(row),
            meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)
