"""Pairs by the judge: pair ranking, then point sifting, over one prompt's candidates.

UnifiedReward's construction (FACTS.md section 2), with its defects left out:

1. **Pair ranking.** The usable candidates (non-empty answers; images or clips that
   exist) are split into fixed pairs in sampling order, (0, 1), (2, 3), ... (an odd one
   out sits out), and the judge says which of each pair is better, optionally in both
   orders (:class:`ur.reward.judge.Judge` ``both_orders``). Winners form the chosen
   group, losers the rejected group. A tie or a verdict that does not parse decides
   nothing: that pair leaves both groups and is counted (``ties``, ``unparsed``), never
   handed to candidate 1.
2. **Point sifting.** Every member of both groups is scored pointwise on the task's
   scale; chosen is the best-scoring winner, rejected the worst-scoring loser (the first
   of equals in sampling order). Scores are numbers; a score that does not parse leaves
   its candidate out (counted). With ``reject="typical"``, rejected is instead the first
   loser in sampling order, chosen aside, that scores below the middle of the scale (the
   worst when none does): a wrong answer as the policy writes it, where the worst-scoring
   one is the most obviously wrong, often an answer the policy seldom gives ("green" for
   an orange shape it mostly calls red). The oracle's own pairs reject that way: every
   wrong answer scores 0 there, and the first of them is taken.
3. The prompt is dropped, with its reason, when chosen does not score above rejected,
   or (``margin``, a share of the scale's range; 0 by default, as the paper) not by
   more than ``margin``: a judge's wide gaps are its surer pairs, so a margin trades
   pairs for their agreement with the truth (docs/construction.md measures it).

``method`` picks the arm the alignment-loop experiments compare: ``rank_sift`` (the
above), ``rank`` (ranking only: of the decided pairs, the one the judge is surest of,
by its probabilities when it gives them, else the first), ``sift`` (sifting only: every
usable candidate scored, best against worst), ``random`` (two usable candidates drawn
at random, the order too: the floor).

Drop reasons: ``too_few`` (fewer than two usable candidates), ``undecided`` (no pair
decided), ``unscored`` (no scored candidate on a side), ``no_margin`` (chosen does
not score above rejected), ``small_margin`` (it does, by no more than ``margin``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ur.data.records import JudgeQuery, is_generation
from ur.reward.judge import POINT_SCALES

METHODS: tuple[str, ...] = ("rank_sift", "rank", "sift", "random")
DROP_REASONS: tuple[str, ...] = ("too_few", "undecided", "unscored", "no_margin", "small_margin")
REJECTS: tuple[str, ...] = ("worst", "typical")
SCORED_METHODS: tuple[str, ...] = ("rank_sift", "sift")
"""The methods that pair by the answers' scores, where ``margin`` and ``reject`` apply."""


@dataclass
class Built:
    """What construction made of one prompt's candidates. ``chosen`` and ``rejected``
    are candidate indices (None when ``dropped`` names why not); ``pairs`` the fixed
    pairs judged with each one's ``verdicts`` (``first``, ``second``, ``tie`` or None),
    ``probs`` and ``texts``; ``scores`` the pointwise scores by candidate index (None
    where the judgment did not parse) and ``score_texts`` the judge's words."""

    method: str
    chosen: int | None = None
    rejected: int | None = None
    dropped: str | None = None
    pairs: list[tuple[int, int]] = field(default_factory=list)
    verdicts: list[str | None] = field(default_factory=list)
    probs: list[dict | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    scores: dict[int, float | None] = field(default_factory=dict)
    score_texts: dict[int, str] = field(default_factory=dict)

    @property
    def ties(self) -> int:
        return sum(v == "tie" for v in self.verdicts)

    @property
    def unparsed(self) -> int:
        return (sum(v is None for v in self.verdicts)
                + sum(s is None for s in self.scores.values()))

    def as_dict(self) -> dict:
        return {"method": self.method, "chosen": self.chosen, "rejected": self.rejected,
                "dropped": self.dropped, "pairs": [list(p) for p in self.pairs],
                "verdicts": self.verdicts, "probs": self.probs, "texts": self.texts,
                "scores": {str(k): v for k, v in self.scores.items()},
                "score_texts": {str(k): v for k, v in self.score_texts.items()}}


def fixed_pairs(usable: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive usable candidates, two by two, in sampling order."""
    return [(usable[i], usable[i + 1]) for i in range(0, len(usable) - 1, 2)]


def pair_query(task: str, prompt: str, media, candidates, a: int, b: int) -> JudgeQuery:
    """Which of candidates ``a`` and ``b`` is better (images/clips for generation tasks,
    answers about ``media`` for understanding)."""
    if is_generation(task):
        return JudgeQuery(task=task, form="pairwise", prompt=prompt,
                          media=(candidates[a], candidates[b]))
    return JudgeQuery(task=task, form="pairwise", prompt=prompt, media=tuple(media),
                      responses=(candidates[a], candidates[b]))


def point_query(task: str, prompt: str, media, candidates, i: int,
                scale: tuple[float, float] | None = None) -> JudgeQuery:
    """How good candidate ``i`` is, on ``scale`` (by default the scale the judge learned
    the task on, :data:`ur.reward.judge.POINT_SCALES`)."""
    scale = tuple(scale or POINT_SCALES[task])
    if is_generation(task):
        return JudgeQuery(task=task, form="pointwise", prompt=prompt, media=(candidates[i],),
                          scale=scale)
    return JudgeQuery(task=task, form="pointwise", prompt=prompt, media=tuple(media),
                      responses=(candidates[i],), scale=scale)


def winner_loser(pair: tuple[int, int], verdict: str | None) -> tuple[int, int] | None:
    """``(winner, loser)`` of a decided pair; None for a tie or an unparsed verdict."""
    if verdict == "first":
        return pair
    if verdict == "second":
        return pair[1], pair[0]
    return None


def surest(decided: list[tuple[tuple[int, int], dict | None]]) -> tuple[int, int]:
    """Of decided ``((winner, loser), probs)``, the pair whose verdict is surest: the
    largest gap between the two sides' probabilities, else the first."""
    def gap(item):
        probs = item[1]
        return abs(probs["first"] - probs["second"]) if probs else 0.0
    return max(enumerate(decided), key=lambda e: (gap(e[1]), -e[0]))[1][0]


def best_and_worst(chosen_side: Sequence[int], rejected_side: Sequence[int],
                   scores: dict[int, float | None],
                   below: float | None = None) -> tuple[int | None, int | None]:
    """The best-scoring of ``chosen_side`` and the worst-scoring of ``rejected_side``,
    candidates without a score left out (the first of equals in sampling order). With
    ``below``, the rejected one is the first of ``rejected_side`` in sampling order,
    other than the best, that scores below it, if any."""
    up = [i for i in chosen_side if scores.get(i) is not None]
    down = [i for i in rejected_side if scores.get(i) is not None]
    best = max(up, key=lambda i: (scores[i], -i)) if up else None
    wrong = [] if below is None else [i for i in down if scores[i] < below and i != best]
    if wrong:
        return best, min(wrong)
    return best, min(down, key=lambda i: (scores[i], i)) if down else None


def settle(built: Built, up: Sequence[int], down: Sequence[int], least: float = 0.0,
           below: float | None = None) -> Built:
    """Chosen and rejected by the scores, or the reason the prompt is dropped: chosen
    must score above rejected by more than ``least`` (in the scale's units). ``below``:
    reject the first candidate scoring below it (:func:`best_and_worst`)."""
    best, worst = best_and_worst(up, down, built.scores, below)
    if best is None or worst is None:
        built.dropped = "unscored"
    elif built.scores[best] <= built.scores[worst] or best == worst:
        built.dropped = "no_margin"
    elif built.scores[best] - built.scores[worst] <= least:
        built.dropped = "small_margin"
    else:
        built.chosen, built.rejected = best, worst
    return built


def random_pair(usable: Sequence[int], rng: random.Random) -> tuple[int, int]:
    a, b = rng.sample(list(usable), 2)
    return a, b


@dataclass(frozen=True)
class Pool:
    """One prompt's candidates as construction sees them: answers (understanding) or
    images/clips as :class:`~ur.data.records.Media` (generation), and which are usable."""

    id: str
    task: str
    prompt: str
    media: tuple
    candidates: tuple
    usable: tuple[int, ...]


def pool_of(candidates) -> Pool:
    """The pool of a :class:`ur.construct.candidates.Candidates` (sampled answers: empty
    answers are not usable, a pair schema holds no empty answer) or of
    :class:`ur.construct.candidates.Samples` (generated images or clips: one whose file
    or frames are missing is not usable)."""
    if hasattr(candidates, "samples"):
        samples = tuple(candidates.samples)
        return Pool(candidates.id, candidates.task, candidates.prompt, (), samples,
                    tuple(i for i, m in enumerate(samples) if _on_disk(m)))
    q = candidates.question
    answers = tuple(candidates.answers)
    return Pool(q.id, q.task, q.prompt, tuple(q.media), answers,
                tuple(i for i, a in enumerate(answers) if a.strip()))


def _on_disk(media) -> bool:
    if media.data is not None:
        return True
    if media.frames is not None:
        return bool(media.frames) and all(Path(f).is_file() for f in media.frames)
    return Path(media.path).exists()


def check_method(method: str, margin: float = 0.0, reject: str = "worst") -> None:
    """A clear error for an unknown method, or a margin or rejection rule it cannot use."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin is a share of the score scale, in [0, 1); got {margin}")
    if margin and method not in SCORED_METHODS:
        raise ValueError(f"margin applies to the scored methods ({', '.join(SCORED_METHODS)}), "
                         f"not {method!r}")
    if reject not in REJECTS:
        raise ValueError(f"unknown reject {reject!r}; choose from {list(REJECTS)}")
    if reject != "worst" and method not in SCORED_METHODS:
        raise ValueError(f"reject applies to the scored methods ({', '.join(SCORED_METHODS)}), "
                         f"not {method!r}")


def build_pairs(judge, pools: Sequence[Pool], *, method: str = "rank_sift",
                scale: tuple[float, float] | None = None, seed: int = 0,
                margin: float = 0.0, reject: str = "worst") -> list[Built]:
    """One :class:`Built` per pool, in order: every pairwise judgment of the batch in one
    batched judge call, then every pointwise one in another. ``seed`` seeds the
    ``random`` arm (per pool, by its id, so a resumed run draws the same). ``margin``
    (``rank_sift`` and ``sift``): the share of the scale's range by which chosen must
    score above rejected. ``reject``: ``worst`` (the paper's) or ``typical`` (the first
    candidate of the rejected side scoring below the middle of the scale)."""
    check_method(method, margin, reject)
    built = [Built(method) for _ in pools]
    # A candidate the ranking call scored (``pair_from: points | both``) is not scored
    # again by point sifting, and equal answers of one prompt are judged once.
    memo: dict = {}
    ranked: list[tuple[int, tuple[int, int]]] = []
    for k, pool in enumerate(pools):
        if len(pool.usable) < 2:
            built[k].dropped = "too_few"
        elif method in ("rank_sift", "rank"):
            ranked += [(k, p) for p in fixed_pairs(pool.usable)]
        elif method == "random":
            built[k].chosen, built[k].rejected = random_pair(
                pool.usable, random.Random(f"{seed}:{pool.id}"))
    if ranked:
        verdicts = judge([pair_query(pools[k].task, pools[k].prompt, pools[k].media,
                                     pools[k].candidates, *p) for k, p in ranked], memo=memo)
        for (k, p), j in zip(ranked, verdicts, strict=True):
            built[k].pairs.append(p)
            built[k].verdicts.append(j.label)
            built[k].probs.append(j.probs)
            built[k].texts.append(j.text)
    sides: dict[int, tuple[list[int], list[int]]] = {}
    for k, pool in enumerate(pools):
        b = built[k]
        if b.dropped or method == "random":
            continue
        if method == "sift":
            sides[k] = (list(pool.usable), list(pool.usable))
            continue
        decided = [(wl, probs) for p, v, probs in zip(b.pairs, b.verdicts, b.probs, strict=True)
                   if (wl := winner_loser(p, v)) is not None]
        if not decided:
            b.dropped = "undecided"
        elif method == "rank":
            b.chosen, b.rejected = surest(decided)
        else:
            sides[k] = ([w for (w, _), _ in decided], [lo for (_, lo), _ in decided])
    asked = [(k, i) for k, (up, down) in sides.items() for i in sorted(set(up) | set(down))]
    if asked:
        scored = judge([point_query(pools[k].task, pools[k].prompt, pools[k].media,
                                    pools[k].candidates, i, scale) for k, i in asked],
                       memo=memo)
        for (k, i), j in zip(asked, scored, strict=True):
            built[k].scores[i] = j.score
            built[k].score_texts[i] = j.text
    for k, (up, down) in sides.items():
        lo, hi = scale or POINT_SCALES[pools[k].task]
        settle(built[k], up, down, margin * (hi - lo),
               (lo + hi) / 2 if reject == "typical" else None)
    return built
