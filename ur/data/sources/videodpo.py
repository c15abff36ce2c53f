"""VideoDPO (video generation, pairwise).

Rows ``{id, caption, chosen, rejected}``: a caption and two generated videos, the
chosen one preferred. Each video is a file or a folder of extracted frames (a list of
frame paths is accepted too), resolved against ``media_root`` if given, else the data
set's folder. The record keeps the data set's order, chosen first, so its label is
always ``first``; the DataModule swaps the order (seeded) so position carries no signal.
Optional ``chosen_score``/``rejected_score`` columns are kept in ``meta``, and so is the
synthetic world's ``ur_scores`` column (one score per video, chosen first).

:func:`write_pairs` writes pairwise video-generation records in this schema: the
preferred video as ``chosen``, each video (file, frame folder, or frame list) as paths
relative to the output's folder (or ``media_root``), ``meta``'s scores back in their
columns. A tie cannot be written (ValueError naming the record).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ur.data.records import PreferenceRecord
from ur.data.sources.common import (
    candidate_scores_of,
    check_pair,
    evidence_of,
    extra_columns,
    generation_scores,
    load_rows,
    map_rows,
    media_base,
    media_path_value,
    media_ref,
    preferred_first,
    require,
    row_id,
    source_root,
    write_json_rows,
)

NAME = "videodpo"
TASKS = ("video_generation",)
SCORE_COLUMNS = ("chosen_score", "rejected_score")


def read(path, *, split=None, media_root=None):
    root = source_root(path, media_root)

    def build(row, file, i):
        caption = require(row, "caption", str)
        media = tuple(media_ref(require(row, key), kind="video", root=root, field=key)
                      for key in ("chosen", "rejected"))
        meta = {k: row[k] for k in SCORE_COLUMNS if row.get(k) is not None}
        scores = candidate_scores_of(row)
        if scores is not None:
            meta["ur_scores"] = scores
        return PreferenceRecord(
            task="video_generation", form="pairwise", source=NAME, id=row_id(row, file, i),
            prompt=caption, media=media, label="first", evidence=evidence_of(row),
            meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)


def write_pairs(path: str | Path, pairs: Iterable[PreferenceRecord], *,
                media_root: str | Path | None = None) -> Path:
    """Write ``pairs`` to ``path`` (a ``.json`` list, or ``.jsonl``) and return the path;
    video paths are written relative to ``media_root`` if given, else the output's
    folder, and a video outside that folder's tree is refused. The file is written only
    when every record could be."""
    path = Path(path)
    base = media_base(path, media_root)
    rows = []
    for record in pairs:
        check_pair(record, "video_generation", path)
        scores = generation_scores(record, path)
        rec = preferred_first(record, path)
        if scores is not None and rec is not record:
            scores = scores[::-1]
        row = {"id": rec.id, "caption": rec.prompt,
               "chosen": media_path_value(rec.media[0], base, path, rec.id),
               "rejected": media_path_value(rec.media[1], base, path, rec.id)}
        row.update({k: rec.meta[k] for k in SCORE_COLUMNS if rec.meta.get(k) is not None})
        row.update(extra_columns(rec.evidence, scores))
        rows.append(row)
    return write_json_rows(path, rows)
