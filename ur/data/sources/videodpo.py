"""VideoDPO (video generation, pairwise).

Rows ``{id, caption, chosen, rejected}``: a caption and two generated videos, the
chosen one preferred. Each video is a file or a folder of extracted frames (a list of
frame paths is accepted too), resolved against ``media_root`` if given, else the data
set's folder. The record keeps the data set's order, chosen first, so its label is
always ``first``; the DataModule swaps the order (seeded) so position carries no signal.
Optional ``chosen_score``/``rejected_score`` columns are kept in ``meta``.
"""

from __future__ import annotations

from ur.data.records import PreferenceRecord
from ur.data.sources.common import (
    evidence_of,
    load_rows,
    map_rows,
    media_ref,
    require,
    row_id,
    source_root,
)

NAME = "videodpo"
TASKS = ("video_generation",)


def read(path, *, split=None, media_root=None):
    root = source_root(path, media_root)

    def build(row, file, i):
        caption = require(row, "caption", str)
        media = tuple(media_ref(require(row, key), kind="video", root=root, field=key)
                      for key in ("chosen", "rejected"))
        meta = {k: row[k] for k in ("chosen_score", "rejected_score") if row.get(k) is not None}
        return PreferenceRecord(
            task="video_generation", form="pairwise", source=NAME, id=row_id(row, file, i),
            prompt=caption, media=media, label="first", evidence=evidence_of(row),
            meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)
