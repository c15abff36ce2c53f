"""Pairs by the oracle: the synthetic world's ceiling arm of pair construction.

On the synthetic world the right answer to every question is known: the oracle
(:func:`ur.data.synthetic.oracle.oracle_score`) scores an answer against the scene the
question is about. Questions carry that scene as their evidence (the world's
description of its clean render, ``a red circle on the left``), which
:func:`ur.data.synthetic.oracle.scene_of` parses back into a scene, so nothing but the
question and the answer is needed.

An answer's oracle score lies in [0, 1]: 1 for the right value, ``1/k`` when the right
value is among ``k`` values named (a hedge), 0 otherwise; a count is right or wrong; a
description scores the share of right attributes (colour, shape, place or motion) over
the scene's objects, extra objects counting as wrong. An answer is *right* when it scores
1 and *wrong* otherwise. :func:`ur.data.synthetic.oracle.oracle_accuracy`, the figure DPO validation logs as
``val/oracle_accuracy``, is the mean score of one answer per question, so a hedge or a
partly right description earns partial credit.

:func:`oracle_pairs` turns each question's sampled answers into one DPO pair: chosen
the best-scoring answer, rejected the worst (the first of equals, in sampling order).
Empty answers are scored but never paired (a pair schema holds no empty answer). A
question is dropped, and counted by reason, when fewer than two answers are non-empty
(``too_few_answers``), when every answer scores the same (``tie``), or when the gap is
below ``min_gap`` (``small_gap``). :func:`construct_oracle_pairs` is the whole step on a
written world, behind ``ur construct oracle-pairs``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ur.construct.candidates import candidates_of, sample_answers, write_candidates
from ur.data.questions import Question, world_questions
from ur.data.records import PreferenceRecord
from ur.data.synthetic.oracle import evidence_scene, oracle_score

DROP_REASONS: tuple[str, ...] = ("too_few_answers", "tie", "small_gap")
SOURCE = "oracle_pairs"
_SAME = 1e-9  # scores closer than this are equal (descriptions score in thirds)


def is_right(score: float) -> bool:
    """Whether an oracle score marks a right answer (a full 1)."""
    return score >= 1 - _SAME


@dataclass
class OraclePairStats:
    """What :func:`oracle_pairs` made of the samples: questions seen, pairs made (in all
    and per task), questions dropped by reason, and how good the samples were (their
    count, how many were empty, their mean oracle score, and the share of questions
    with at least one right and one wrong answer)."""

    questions: int = 0
    pairs: int = 0
    pairs_by_task: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    samples: int = 0
    empty_samples: int = 0
    mean_sample_score: float = 0.0
    share_right_and_wrong: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _pair(question: Question, answers: Sequence[str], scores: list[float], chosen: int,
          rejected: int) -> PreferenceRecord:
    return PreferenceRecord(
        task=question.task, form="pairwise", source=SOURCE,
        id=f"{question.id}-c{chosen}-r{rejected}", prompt=question.prompt,
        media=question.media, responses=(answers[chosen], answers[rejected]), label="first",
        evidence=question.evidence, response_scores=(scores[chosen], scores[rejected]),
        meta={"question_id": question.id, "chosen_index": chosen, "rejected_index": rejected,
              "chosen_score": scores[chosen], "rejected_score": scores[rejected]})


def oracle_pairs(questions: Sequence, answers: Sequence[Sequence[str]], *,
                 min_gap: float = 0.0) -> tuple[list[PreferenceRecord], OraclePairStats]:
    """One pair per question whose answers the oracle tells apart: chosen the best, rejected
    the worst (pairwise records, label ``first``, the two oracle scores as
    ``response_scores``, the answers' indices in ``meta``; the id is
    ``<question id>-c<chosen index>-r<rejected index>``), and what was dropped and why.
    Every question needs evidence (ValueError otherwise, before anything is scored)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answer lists")
    for q in questions:
        evidence_scene(q)
    stats, pairs, dropped = OraclePairStats(questions=len(questions)), [], Counter()
    total, mixed = 0.0, 0
    for q, said in zip(questions, answers, strict=True):
        scores = [oracle_score(q, a) for a in said]
        stats.samples += len(said)
        stats.empty_samples += sum(not a.strip() for a in said)
        total += sum(scores)
        mixed += any(map(is_right, scores)) and not all(map(is_right, scores))
        usable = [i for i, a in enumerate(said) if a.strip()]
        if len(usable) < 2:
            dropped["too_few_answers"] += 1
            continue
        best = max(usable, key=lambda i: (scores[i], -i))
        worst = min(usable, key=lambda i: (scores[i], i))
        gap = scores[best] - scores[worst]
        if gap <= _SAME:
            dropped["tie"] += 1
        elif gap < min_gap:
            dropped["small_gap"] += 1
        else:
            pairs.append(_pair(q, said, scores, best, worst))
    stats.pairs = len(pairs)
    stats.pairs_by_task = dict(sorted(Counter(p.task for p in pairs).items()))
    stats.dropped = {r: dropped[r] for r in DROP_REASONS}
    stats.mean_sample_score = total / stats.samples if stats.samples else 0.0
    stats.share_right_and_wrong = mixed / len(questions) if questions else 0.0
    return pairs, stats


PAIR_FILES = {"image_understanding": "image_pairs.jsonl",
              "video_understanding": "video_pairs.jsonl"}


def construct_oracle_pairs(policy: str | Path, world: str | Path, out: str | Path, *,
                           split: str = "train", n: int = 8, temperature: float = 1.0,
                           top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 48,
                           max_questions: int | None = None, seed: int = 0,
                           batch_size: int = 16, num_frames: int | None = None,
                           min_gap: float = 0.0) -> Path:
    """Sample ``n`` answers from ``policy`` to each understanding question of the world's
    ``split``, pair them by the oracle, and write into ``out``: ``candidates.jsonl`` (the
    samples and their settings), ``image_pairs.jsonl`` (``image_dpo`` schema) and
    ``video_pairs.jsonl`` (``sharegptvideo_dpo``), with media paths relative to the
    world's folder (read them with ``media_root`` set to it), and ``summary.json``.
    ``num_frames`` defaults to the world's frames per clip. Returns ``out``."""
    from ur.data.sources import PAIR_SCHEMAS, write_pairs
    from ur.data.synthetic.writer import read_manifest
    from ur.io import write_json_atomic
    from ur.models.loading import load_vlm

    world, out = Path(world).resolve(), Path(out)
    questions = world_questions(world, split, max_questions=max_questions, seed=seed)
    frames = num_frames or read_manifest(world).get("num_frames", 4)
    model, processor = load_vlm(policy)
    answers = sample_answers(model, processor, questions, n=n, temperature=temperature,
                             top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                             seed=seed, batch_size=batch_size, num_frames=frames)
    out.mkdir(parents=True, exist_ok=True)
    write_candidates(out / "candidates.jsonl", candidates_of(
        questions, answers, model=str(policy), seed=seed, temperature=temperature,
        top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens))
    pairs, stats = oracle_pairs(questions, answers, min_gap=min_gap)
    for task, name in PAIR_FILES.items():
        write_pairs(PAIR_SCHEMAS[task], out / name, [p for p in pairs if p.task == task],
                    media_root=world)
    settings = {"n": n, "temperature": temperature, "top_p": top_p, "top_k": top_k,
                "max_new_tokens": max_new_tokens, "max_questions": max_questions,
                "seed": seed, "batch_size": batch_size, "num_frames": frames,
                "min_gap": min_gap}
    write_json_atomic(out / "summary.json", {
        "policy": str(policy), "world": str(world), "split": split, "media_root": str(world),
        "settings": settings, **stats.as_dict(),
        "files": {"candidates": "candidates.jsonl", **{
            PAIR_SCHEMAS[t]: name for t, name in PAIR_FILES.items()}}})
    return out


def summary_line(out: str | Path) -> str:
    """One line saying what a construction folder holds (from its ``summary.json``)."""
    s = json.loads((Path(out) / "summary.json").read_text())
    dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items())
    return (f"{s['pairs']} pairs from {s['questions']} questions ({dropped} dropped); "
            f"{s['samples']} samples, mean oracle score {s['mean_sample_score']:.3f}, "
            f"{s['share_right_and_wrong']:.0%} of questions with a right and a wrong answer")
