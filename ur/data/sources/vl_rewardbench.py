"""VL-RewardBench (image understanding, pairwise; an evaluation set).

Rows ``{id, query, response: [2 answers], image, human_ranking, query_source, ...}``.
``human_ranking`` holds the rank of each response, lower better: ``[0, 1]`` means the
first is preferred, ``[1, 0]`` the second; equal ranks (not in the release) are a tie.
Ranks other than 0/1, or not two of them, are an error on ``human_ranking``.

``meta["group"]`` is the benchmark's reporting group (general / hallucination /
reasoning), from ``query_source`` as the official scorer maps it (vlfeedback and
wildvision-battle: general; povid, rlhf-v, rlaif-v: hallucination; reasoning_tasks,
mathverse, mmmu: reasoning), falling back to keywords in the source name, then to the
id prefix the official scorer uses, then to ``general`` (the scorer's default). The
raw ``query_source`` is kept in ``meta["query_source"]``. Images may be stored inline
(the hub copy) or as paths resolved against ``media_root`` or the data set's folder.
"""

from __future__ import annotations

import re

from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources.common import (
    as_list,
    evidence_of,
    load_rows,
    map_rows,
    media_ref,
    number,
    require,
    response_scores_of,
    row_id,
    source_root,
)

NAME = "vl_rewardbench"
TASKS = ("image_understanding",)
_SOURCE_GROUP = {
    "vlfeedback": "general", "wildvisionbattle": "general", "wildvision": "general",
    "povid": "hallucination", "rlhfv": "hallucination", "rlaifv": "hallucination",
    "reasoningtasks": "reasoning", "mathverse": "reasoning", "mmmu": "reasoning",
    "mmmupro": "reasoning",
}
_KEYWORDS = (("hallucin", "hallucination"), ("povid", "hallucination"),
             ("rlhf", "hallucination"), ("rlaif", "hallucination"),
             ("reason", "reasoning"), ("math", "reasoning"), ("mmmu", "reasoning"),
             ("wildvision", "general"), ("vlfeedback", "general"), ("general", "general"))


def group_of(query_source, rid: str | None = None) -> str:
    """The reporting group of a VL-RewardBench item."""
    key = re.sub(r"[^a-z0-9]", "", str(query_source or "").lower())
    if key in _SOURCE_GROUP:
        return _SOURCE_GROUP[key]
    for word, group in _KEYWORDS:
        if word in key:
            return group
    prefix = re.split(r"[_-]", str(rid or ""), maxsplit=1)[0].lower()
    if prefix in ("rlaif", "rlhf"):
        return "hallucination"
    if prefix in ("mathverse", "mmmu"):
        return "reasoning"
    return "general"


def _label(row: dict) -> str:
    ranks = as_list(require(row, "human_ranking"), "human_ranking", length=2)
    a, b = (number(r, "human_ranking") for r in ranks)
    if a not in (0.0, 1.0) or b not in (0.0, 1.0):
        raise RecordError(f"ranks of two responses are 0 or 1, got {ranks}",
                          field="human_ranking")
    if a == b:
        return "tie"
    return "first" if a < b else "second"


def read(path, *, split=None, media_root=None):
    root = source_root(path, media_root)

    def build(row, file, i):
        query = require(row, "query", str)
        responses = as_list(require(row, "response"), "response", length=2)
        for r in responses:
            if not isinstance(r, str) or not r.strip():
                raise RecordError("a response is missing or empty", field="response")
        label = _label(row)
        image = media_ref(require(row, "image"), kind="image", root=root, field="image")
        rid = row_id(row, file, i)
        meta = {"group": group_of(row.get("query_source"), row.get("id")),
                "query_source": row.get("query_source")}
        meta.update({k: row[k] for k in ("models", "ground_truth") if row.get(k) is not None})
        return PreferenceRecord(
            task="image_understanding", form="pairwise", source=NAME, id=rid, prompt=query,
            media=(image,), responses=tuple(responses), label=label,
            evidence=evidence_of(row), response_scores=response_scores_of(row), meta=meta,
            file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)
