"""ShareGPTVideo DPO (video understanding, pairwise).

JSONL rows ``{id, video, prompt, chosen, rejected}``: a question about a video and two
answers, the chosen one preferred. ``video`` is a video file or a folder of extracted
frames (the release ships frame folders named by video id), resolved against
``media_root`` if given, else the data set's folder. ``<video>``/``<image>`` placeholders
in the prompt (a model-format artefact) are removed. Responses are (chosen, rejected),
label ``first``; the DataModule swaps the order (seeded). Scores and the reference
``answer``, where present, are kept in ``meta``.
"""

from __future__ import annotations

from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources.common import (
    evidence_of,
    load_rows,
    map_rows,
    media_ref,
    require,
    response_scores_of,
    row_id,
    source_root,
    strip_placeholders,
)

NAME = "sharegptvideo_dpo"
TASKS = ("video_understanding",)


def _answer(row: dict, key: str) -> str:
    text = require(row, key, str)
    if not text.strip():
        raise RecordError("answer is empty", field=key)
    return text


def read(path, *, split=None, media_root=None):
    root = source_root(path, media_root)

    def build(row, file, i):
        prompt = strip_placeholders(require(row, "prompt", str))
        if not prompt.strip():
            raise RecordError("the question is empty", field="prompt")
        video = media_ref(require(row, "video"), kind="video", root=root, field="video")
        meta = {k: row[k] for k in ("chosen_score", "rejected_score", "answer")
                if row.get(k) is not None}
        return PreferenceRecord(
            task="video_understanding", form="pairwise", source=NAME, id=row_id(row, file, i),
            prompt=prompt, media=(video,), responses=(_answer(row, "chosen"),
                                                      _answer(row, "rejected")),
            label="first", evidence=evidence_of(row),
            response_scores=response_scores_of(row), meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)
