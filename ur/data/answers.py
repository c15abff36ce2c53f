"""The answer conventions of the released UnifiedReward judges, written and parsed.

Pairwise answers end in a verdict naming the candidate kind of the task: "Image 1 is
better", "Video 2 is better", "Answer 1 is better" (optionally after "Overall
Judgment:"), or a tie: "Both images are equally good". Pointwise answers end in
"Final Score: X". Keeping these exact strings lets released checkpoints be used as
judges and lets their training files be read back.

Parsing reads verdict sentences, not words. A pairwise verdict is "<Noun> N is
[slightly, clearly, ...] better" (or preferred, superior, the better one, the winner)
with Noun one of Image, Video, Answer, Response; or a tie: "Both [images] are equally
good" (equal, tied, equally bad), "Neither answer is better", "It is a tie" (this,
that, the result, a draw), "I'd call it a tie", or "Tie." standing alone as a sentence
or after a label ("Overall Judgment: Tie"). A tie phrase must end its clause ("It is a
tie on accuracy" rules on one aspect, not the pair). What is not asserted is no verdict:
a phrase inside quotation marks (the question's or a candidate's words), one negated or
hedged just before it in its clause ("I don't think Answer 1 is better", "if it is a
tie"), a question ("Answer 1 is better?"), and a negated tie is not a tie phrase at all
("this is not a tie", "isn't a tie"). Words that only contain "tie" ("tie-break",
"tied to", "untied") are never verdicts.

The *last* verdict in the text decides, so evidence stated before it (which may itself
say "Image 1 is better at colour") does not; a text with no verdict parses to ``None``.
Unlike the reference scripts, nothing unparseable is ever read as "candidate 1" or as a
tie, and scores are returned as numbers, never strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Verdict:
    """One asserted verdict sentence of a judge's answer."""

    label: str
    """``first``, ``second`` or ``tie``."""
    noun: str | None
    """What the verdict calls the candidates ("image", "video", "answer", "response"),
    or None when it names none ("It is a tie")."""


_NOUNS = r"image|video|answer|response"
# Where a tie phrase may stop: the end of its clause, or a word that keeps it about the pair.
_CLAUSE_END = r"(?=[\s*]*(?:[.!;,:)\]\n]|$)|\s+(?:overall|here|between|in\s+quality)\b)"
_VERDICT_RE = re.compile(
    # a winner: "Image 2 is better", "Answer 1 is clearly the better one"
    rf"\b(?P<noun>{_NOUNS})\s*(?P<number>[12])\s+is\s+"
    r"(?:(?:slightly|clearly|much|far|significantly|somewhat|marginally|definitely|overall"
    r"|a\s+(?:bit|little))\s+)?"
    rf"(?:better|preferred|preferable|superior|the\s+winner|the\s+better(?:\s+(?:one|{_NOUNS}))?)"
    r"(?!\w|\s*\?)"
    # a tie between the candidates: "Both images are equally good", "Neither answer is better"
    rf"|\b(?:both|the\s+two|the|they)(?:\s+(?P<plural>{_NOUNS})s)?\s+are\s+"
    r"(?:equally\s+(?:good|bad|acceptable|preferable)|equal|tied|evenly\s+matched)" + _CLAUSE_END
    + rf"|\bneither(?:\s+(?P<single>{_NOUNS}))?\s+is\s+better" + _CLAUSE_END
    # a tie stated of the outcome: "It is a tie", "the result is a draw", "call it a tie"
    + r"|\b(?:it|this|that|there|the\s+(?:result|outcome|verdict|judge?ment|comparison))"
    r"(?:['’]s|\s+is|\s+was|\s+would\s+be)\s+a\s+(?:close\s+)?(?:tie|draw)" + _CLAUSE_END
    + r"|\bcall\s+(?:it|this|that)\s+a\s+(?:tie|draw)" + _CLAUSE_END
    # "Tie." on its own, or after a label ("Overall Judgment: Tie")
    + r"|(?:\A[\s*]*|(?<=[.!?:\n])[ \t*]{0,8})(?:a\s+)?(?:tie|draw)" + _CLAUSE_END,
    re.IGNORECASE,
)
# Quoted words are someone else's (the question, a candidate answer), never the verdict.
# A single quote opens only after a non-word character, so "it's" holds no quotation.
_QUOTED_RE = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”|(?<!\w)'[^'\n]*'(?!\w)|‘[^’\n]*’(?!\w)")
# What ends a clause before a verdict; a denial further back does not reach it.
_CLAUSE_BREAK_RE = re.compile(
    r"[.!?;:,()\n]|\b(?:and|but|so|yet|however|although|though|while|whereas|because|since"
    r"|therefore|thus|hence|overall|instead)\b", re.IGNORECASE)
_DENIALS = frozenset({"not", "never", "hardly", "cannot", "neither", "nor", "if", "whether",
                      "unless"})
_DENIAL_REACH = 4  # words before a verdict that a denial ("I do not think ...") spans


def _denied(text: str, start: int) -> bool:
    """Whether the words just before ``start`` in its clause deny or hedge what follows."""
    before = text[max(0, start - 200):start]
    cut = max((m.end() for m in _CLAUSE_BREAK_RE.finditer(before)), default=0)
    words = re.findall(r"[\w'’]+", before[cut:].lower())[-_DENIAL_REACH:]
    return any(w in _DENIALS or w.endswith(("n't", "n’t")) for w in words)


def pairwise_verdicts(text: str) -> list[Verdict]:
    """Every asserted pairwise verdict of ``text``, in order (see the module docstring)."""
    text = _QUOTED_RE.sub(lambda m: " " * len(m.group()), text or "")
    out = []
    for m in _VERDICT_RE.finditer(text):
        if _denied(text, m.start()):
            continue
        number = m.group("number")
        noun = m.group("noun") or m.group("plural") or m.group("single")
        label = "tie" if number is None else "first" if number == "1" else "second"
        out.append(Verdict(label, noun.lower() if noun else None))
    return out


def parse_pairwise(text: str) -> str | None:
    """``first``, ``second``, ``tie`` from the last verdict, or ``None`` when the text
    holds none."""
    verdicts = pairwise_verdicts(text)
    return verdicts[-1].label if verdicts else None


_SCORE_RE = re.compile(r"Final\s+Score\s*[:：]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_score(text: str) -> float | None:
    """The number after the last "Final Score:", or ``None``."""
    matches = list(_SCORE_RE.finditer(text or ""))
    return float(matches[-1].group(1)) if matches else None
