"""The answer conventions of the released UnifiedReward judges, written and parsed.

Pairwise answers end in a verdict naming the candidate kind of the task: "Image 1 is
better", "Video 2 is better", "Answer 1 is better" (optionally after "Overall
Judgment:"), or a tie: "Both images are equally good". Pointwise answers end in
"Final Score: X". Keeping these exact strings lets released checkpoints be used as
judges and lets their training files be read back.

Parsing looks at the *last* verdict in the text, so evidence stated before it (which
may itself mention "Image 1") does not decide; a text with no verdict parses to
``None``. Unlike the reference scripts, nothing unparseable is ever read as
"candidate 1", and scores are returned as numbers, never strings.
"""

from __future__ import annotations

import re

from ur.data.records import is_generation, task_modality

_NOUN = {"image": "Image", "video": "Video"}
_PLURAL = {"Image": "images", "Video": "videos", "Answer": "answers"}


def candidate_noun(task: str) -> str:
    """What the candidates of a task are called in verdicts: Image, Video or Answer."""
    return _NOUN[task_modality(task)] if is_generation(task) else "Answer"


def pairwise_verdict(task: str, label: str) -> str:
    noun = candidate_noun(task)
    if label == "first":
        return f"{noun} 1 is better"
    if label == "second":
        return f"{noun} 2 is better"
    if label == "tie":
        return f"Both {_PLURAL[noun]} are equally good"
    raise ValueError(f"unknown pairwise label {label!r}")


def format_score(score: float) -> str:
    return f"{score:g}" if float(score).is_integer() else f"{score:.1f}"


def pointwise_verdict(score: float) -> str:
    return f"Final Score: {format_score(score)}"


_PAIR_RE = re.compile(
    r"\b(?:(Image|Video|Answer|Response)\s*([12])\s+is\s+(?:better|preferred|superior)"
    r"|Both\s+(?:images|videos|answers|responses)\s+are\s+(?:equally\s+good|equal|tied)"
    r"|(?:it's\s+a\s+)?\btie\b)",
    re.IGNORECASE,
)
_SCORE_RE = re.compile(r"Final\s+Score\s*[:：]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_pairwise(text: str) -> str | None:
    """``first``, ``second``, ``tie``, or ``None`` when the text holds no verdict."""
    matches = list(_PAIR_RE.finditer(text or ""))
    if not matches:
        return None
    last = matches[-1]
    if last.group(2) is None:
        return "tie"
    return "first" if last.group(2) == "1" else "second"


def parse_score(text: str) -> float | None:
    """The number after the last "Final Score:", or ``None``."""
    matches = list(_SCORE_RE.finditer(text or ""))
    return float(matches[-1].group(1)) if matches else None
