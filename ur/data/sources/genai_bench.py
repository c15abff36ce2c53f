"""GenAI-Bench (image and video generation, pairwise; an evaluation set).

Two configurations, told apart per row by their fields:

* image_generation: ``{prompt, left_image, right_image, vote_type, ...}``
* video_generation: ``{prompt, left_video, right_video, vote_type, ...}``

``vote_type`` is ``leftvote`` (first), ``rightvote`` (second), ``tievote`` or
``bothbad_vote``; the official scorer accepts a tie answer for both of the last two, so
both are ties (the raw vote is kept in ``meta["vote_type"]``). Any other vote is an
error on ``vote_type``. Images may be stored inline (the hub copy) or as paths; videos
are paths, or URLs (the hub copy) read as the file of the same name in ``media_root``
(nothing is downloaded). ``config=`` picks the hub configuration when ``path`` is a hub
id. Models are kept in ``meta``.
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

NAME = "genai_bench"
TASKS = ("image_generation", "video_generation")
VOTES = {"leftvote": "first", "rightvote": "second", "tievote": "tie", "bothbad_vote": "tie"}


def _label(row: dict) -> str:
    vote = require(row, "vote_type", str).strip().lower()
    if vote not in VOTES:
        raise RecordError(f"unknown vote {row['vote_type']!r}; expected one of "
                          f"{', '.join(VOTES)}", field="vote_type")
    return VOTES[vote]


def read(path, *, split=None, media_root=None, config: str | None = None):
    root = source_root(path, media_root)

    def build(row, file, i):
        if "left_image" in row or "right_image" in row:
            task, kind, keys = "image_generation", "image", ("left_image", "right_image")
        elif "left_video" in row or "right_video" in row:
            task, kind, keys = "video_generation", "video", ("left_video", "right_video")
        else:
            raise RecordError("row has neither left_image/right_image nor "
                              "left_video/right_video", field="left_image")
        prompt = require(row, "prompt", str)
        label = _label(row)
        media = tuple(media_ref(require(row, k), kind=kind, root=root, field=k) for k in keys)
        meta = {"vote_type": row["vote_type"]}
        meta.update({k: row[k] for k in ("left_model", "right_model") if row.get(k) is not None})
        return PreferenceRecord(
            task=task, form="pairwise", source=NAME, id=row_id(row, file, i),
            prompt=prompt, media=media, label=label, evidence=evidence_of(row),
            meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split, hub_config=config), build)
