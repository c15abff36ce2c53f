"""VideoFeedback (video generation, pointwise, scale 1-4).

Rows ``{id, images: [frame paths], text prompt, visual quality, temporal consistency,
dynamic degree, text-to-video alignment, factual consistency, ...}``: one clip as its
extracted frames, and five integer ratings on 1-4. Field names are matched ignoring
case, spaces, underscores and hyphens, so ``text prompt``/``text_prompt`` and
``visual quality``/``visual_quality`` are the same field; the prompt may also be in
``prompt``.

The record's score is the mean of the five dimensions, or with the option
``dimension=`` (any spelling of one of :data:`DIMENSIONS`) that dimension alone; the
five ratings are kept in ``meta["dimensions"]`` either way. ``images`` may also be a
single string: a frame folder or a video file. Frame paths are resolved against
``media_root`` if given, else the data set's folder.
"""

from __future__ import annotations

import re

from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources.common import (
    evidence_of,
    load_rows,
    map_rows,
    media_ref,
    number,
    row_id,
    source_root,
    within,
)

NAME = "videofeedback"
TASKS = ("video_generation",)
SCALE = (1.0, 4.0)
DIMENSIONS = ("visual quality", "temporal consistency", "dynamic degree",
              "text-to-video alignment", "factual consistency")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _field(row: dict, *names: str) -> str | None:
    """The row's own spelling of the first of ``names`` it holds (non-null)."""
    keys = {_key(k): k for k in row if row[k] is not None}
    for name in names:
        if _key(name) in keys:
            return keys[_key(name)]
    return None


def _dimension(value) -> str:
    for dim in DIMENSIONS:
        if _key(dim) == _key(value):
            return dim
    raise RecordError(f"unknown dimension {value!r}; expected one of {', '.join(DIMENSIONS)}",
                      field="dimension")


def read(path, *, split=None, media_root=None, dimension: str | None = None):
    root = source_root(path, media_root)
    chosen = None if dimension is None else _dimension(dimension)

    def build(row, file, i):
        prompt_field = _field(row, "text prompt", "prompt")
        if prompt_field is None:
            raise RecordError("required field is missing", field="text prompt")
        prompt = row[prompt_field]
        if not isinstance(prompt, str):
            raise RecordError(f"expected str, got {type(prompt).__name__}", field=prompt_field)
        frames_field = _field(row, "images") or "images"
        video = media_ref(row.get(frames_field), kind="video", root=root, field=frames_field)
        dims = {}
        for dim in DIMENSIONS:
            name = _field(row, dim)
            if name is None:
                if chosen is not None and dim != chosen:
                    continue
                raise RecordError("required field is missing", field=dim)
            dims[dim] = within(number(row[name], name), SCALE, name)
        score = dims[chosen] if chosen is not None else sum(dims.values()) / len(dims)
        meta = {"dimensions": dims}
        if chosen is not None:
            meta["dimension"] = chosen
        link = _field(row, "video link")
        if link is not None:
            meta["video_link"] = row[link]
        return PreferenceRecord(
            task="video_generation", form="pointwise", source=NAME, id=row_id(row, file, i),
            prompt=prompt, media=(video,), score=score, scale=SCALE,
            evidence=evidence_of(row), meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)
