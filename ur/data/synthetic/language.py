"""Reading answers in the world's language: the values an answer claims and the values
a description gives, side by side.

Text only: questions, answers and descriptions are parsed with the grammar of
:mod:`.scene`, and nothing here looks at pixels. The oracle scores answers with these
readers, and the prompt templates write claims checks with :func:`answer_claims`; both
import this module, which imports nothing of ur but :mod:`.scene`, so the templates use
the grammar without depending on the oracle or the world.
"""

from __future__ import annotations

import itertools
import re

from ur.data.synthetic.scene import (
    COLOUR_NAMES,
    NUMBER_WORDS,
    SHAPES,
    Element,
    asks_to_describe,
    parse_question,
    parse_text,
)

MAX_OBJECTS = 4  # objects of a scene (or of a description of one) that are read
MAX_NAMED = 6  # objects of an answer's description that are read

_ATTR_PATTERNS = {
    "colour": "|".join(COLOUR_NAMES),
    "shape": "|".join(SHAPES),
    "place": "left|right|top|bottom|center|centre|middle",
}
_CANON_PLACE = {"centre": "center", "middle": "center"}


def mentioned(asks: str, text: str) -> set[str]:
    """The values of attribute ``asks`` (colour, shape, place or motion) that ``text``
    names; ``still`` for a motion when the text says the object does not move."""
    low = text.lower()
    if asks == "motion":
        found = set(re.findall(r"\b(?:mov(?:ing|es?)|going|heads?|heading)\s+(left|right|up|down)\b",
                               low))
        if re.search(r"\b(still|static|stationary|not moving|does not move|stays?)\b", low):
            found.add("still")
        return found
    return {_CANON_PLACE.get(w, w) for w in re.findall(rf"\b({_ATTR_PATTERNS[asks]})s?\b", low)}


def count_in(text: str) -> int | None:
    """The count ``text`` states (a numeral or a number word), or None."""
    low = text.lower()
    m = re.search(r"\b(\d+)\b", low)
    if m:
        return int(m.group(1))
    for i, w in enumerate(NUMBER_WORDS):
        if re.search(rf"\b{w}\b", low):
            return i
    return None


def count_word(n: int) -> str:
    """A count as a claim writes it ("zero", not "no", which is a verdict word)."""
    return "zero" if n == 0 else NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def answer_claims(question: str, answer: str, evidence: str) -> list[tuple[str, str]] | None:
    """What ``answer`` claims, each value beside the one ``evidence`` (a description in the
    world's grammar) gives: ``[("purple", "orange")]`` for "It is purple." about an
    orange shape; for a description, one pair per attribute of every object either side
    names (objects matched to the evidence's as the oracle matches them), ``"none"`` where
    a side names nothing. The share of pairs that agree is the oracle's
    ``score_answer``. None when the question, the evidence or the answer is outside the
    grammar."""
    q = parse_question(question)
    truth = parse_text(evidence)[:MAX_OBJECTS]
    if q.asks == "count":
        n = count_in(answer)
        return None if n is None else [(count_word(n), count_word(len(truth)))]
    if not truth:
        return None
    if q.asks == "describe":
        if not asks_to_describe(question):
            return None  # parse_question's fallback: not a question of the grammar
        named = parse_text(answer)[:MAX_NAMED]
        if not named:
            return None
        spatial = "motion" if any(e.motion for e in truth) else "place"
        attrs = ("colour", "shape", spatial)
        size = max(len(named), len(truth))

        def held(perm):
            return sum(getattr(named[j], a) == getattr(t, a)
                       for t, j in zip(truth, perm, strict=True) if j < len(named) for a in attrs)

        best = max(itertools.permutations(range(size), len(truth)), key=held)
        pairs = []
        for j, e in enumerate(named):
            t = truth[best.index(j)] if j in best else Element()
            pairs += [(getattr(e, a) or "none", getattr(t, a) or "none") for a in attrs]
        for t, j in zip(truth, best, strict=True):
            if j >= len(named):  # an object the answer leaves out
                pairs += [("none", getattr(t, a) or "none") for a in attrs]
        return pairs
    matches = [t for t in truth if all(getattr(t, k) == v for k, v in
                                       q.about.attributes().items())]
    said = sorted(mentioned(q.asks, answer))
    if not matches or not said:
        return None
    return [(s, getattr(matches[0], q.asks) or "none") for s in said]


DEFECT_WORDS: tuple[str, ...] = ("noisy", "blurry", "flickering", "stuttering")
"""The words the oracle's evidence names a generated picture's defects with."""


def shown_and_defects(evidence: str) -> tuple[str, tuple[str, ...]]:
    """A generated picture's evidence ("a red circle on the left, blurry") split into
    what it shows and the defects it names."""
    parts = [p.strip() for p in evidence.split(",")]
    defects = tuple(p for p in parts if p in DEFECT_WORDS)
    return ", ".join(p for p in parts if p not in DEFECT_WORDS), defects


def caption_claims(caption: str, evidence: str) -> list[tuple[str, str]] | None:
    """What a caption asks for beside what a generated image or clip shows (its evidence,
    defects left out): one ``(asked, shown)`` pair per attribute of every object either
    side names, matched as :func:`answer_claims` matches a description, ``"none"`` where
    a side names nothing (a missing object shows ``none`` for each attribute asked; an
    extra one is asked ``none``). None when the caption is outside the grammar."""
    named = parse_text(caption)[:MAX_NAMED]
    if not named:
        return None
    shown, _ = shown_and_defects(evidence)
    if not parse_text(shown):
        spatial = "motion" if any(e.motion for e in named) else "place"
        return [(getattr(e, a) or "none", "none") for e in named for a in ("colour", "shape", spatial)]
    return answer_claims("Describe the image.", caption, shown)
