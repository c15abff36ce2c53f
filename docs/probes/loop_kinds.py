"""Probe: an alignment loop's pairs and gains per kind of question.

For each loop folder given (``ur loop understanding --out LOOP``) and each of its arms
with pairs from the judge: the pairs per seed and their oracle agreement per kind of
question (colour, shape, place, motion, describe: :func:`ur.data.synthetic.scene.parse_question`),
and the share of pairs whose chosen (and rejected) answer makes no claim the world's
grammar can read ("It is equally.": :func:`ur.data.synthetic.language.answer_claims`);
how right the judge's own evidence is where it scores a description ("The image shows
..." before its checks, read by the oracle as a description of the picture), apart for
answers that open the same way and for the others; how many of the claim checks it
wrote ("purple vs green yes") contradict the two words' equality; then, for every arm, the aligned
policy's gain over the base on the test questions of each kind (the kind from :func:`ur.data.synthetic.world.difference_kind`; the test
questions of the pointwise records are one group of their own), mean ± std over the
loop's seeds. Results are in docs/alignment.md.

    python docs/probes/loop_kinds.py LOOP... [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path

from ur.data.synthetic.language import answer_claims
from ur.data.synthetic.oracle import scene_of, score_answer
from ur.data.synthetic.scene import parse_question
from ur.data.synthetic.world import difference_kind


@cache
def test_kind(item_id: str) -> str:
    return difference_kind(item_id) or item_id.split("-")[1]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pair_kinds(folder: Path) -> tuple[dict[str, list[bool]], list[tuple[bool, bool]]]:
    """Per kind of question, whether the oracle scores each pair's chosen answer above
    its rejected one; and per pair, whether its chosen and its rejected answer are
    unreadable."""
    pairs = {r["id"]: r for name in ("image_pairs.jsonl", "video_pairs.jsonl")
             for r in rows(folder / name)}
    out, unreadable = defaultdict(list), []
    for r in rows(folder / "pairs_meta.jsonl"):
        scores = r["oracle_scores"]
        pair = pairs[r["id"]]
        kind = parse_question(pair["prompt"]).asks
        out[kind].append(scores[r["chosen_index"]] > scores[r["rejected_index"]])
        unreadable.append(tuple(
            answer_claims(pair["prompt"], pair[side], pair["ur_evidence"][0]) is None
            for side in ("chosen", "rejected")))
    return out, unreadable


CHECK = re.compile(r"(\w+) vs (\w+) (yes|no)")


def contradicted_checks(folder: Path) -> tuple[int, Counter]:
    """The claim checks the judge wrote where it scored answers (``claims_check`` of
    :mod:`ur.data.templates`: "purple vs green yes"): how many there are, and those whose
    yes or no contradicts the two words' equality, by check."""
    total, wrong = 0, Counter()
    for r in rows(folder / "pairs_meta.jsonl"):
        for text in r["judge"]["score_texts"].values():
            for said, truth, mark in CHECK.findall(text.partition(" Answer:")[2]):
                total += 1
                if (said == truth) != (mark == "yes"):
                    wrong[f"{said} vs {truth} {mark}"] += 1
    return total, wrong


EVIDENCE_LABELS = {"opens alike": "answers that open alike", "other": "others"}


def evidence_scores(folder: Path) -> dict[str, list[float]]:
    """The oracle's score of the judge's evidence (what it wrote the picture shows) where
    it scored an answer to a description question, keyed by whether the answer opens as
    the evidence does ("The image shows", "The video shows") or not. The answers are the
    round's own: shared in round 1, each arm's in later rounds."""
    own = folder.parent / f"candidates_{folder.name.removeprefix('pairs_')}"
    answers = own if own.is_dir() else folder.parent / "candidates"
    questions = {q["id"]: q for q in rows(answers / "candidates.jsonl")}
    out = defaultdict(list)
    for r in rows(folder / "pairs_meta.jsonl"):
        q = questions[r["question_id"]]
        if parse_question(q["prompt"]).asks != "describe":
            continue
        kind = "image" if q["task"] == "image_understanding" else "clip"
        scene = scene_of(q["evidence"][0], kind)
        for k, text in r["judge"]["score_texts"].items():
            opens = q["answers"][int(k)].startswith(("The image shows", "The video shows"))
            said = text.split(" Answer:")[0]
            out["opens alike" if opens else "other"].append(score_answer(scene, q["prompt"], said))
    return out


def accuracy(path: Path) -> dict[str, float]:
    per = defaultdict(list)
    for r in rows(path):
        per[test_kind(r["id"])].append(r["oracle_score"])
    return {k: statistics.fmean(v) for k, v in per.items()}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):+.3f} ± {sd:.3f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("loops", nargs="+", type=Path)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--round", type=int, default=1,
                    help="the loop's round to read (gains are over the base either way)")
    args = ap.parse_args(argv)
    for loop in args.loops:
        base = accuracy(loop / "base" / "test_answers.jsonl")
        print(f"## {loop}\n")
        rnd = loop / f"round{args.round}"
        seed0 = rnd / f"seed{args.seeds[0]}"
        arms = sorted(p.name[len("dpo_"):] for p in seed0.glob("dpo_*"))
        for arm in arms:
            folders = [rnd / f"seed{s}" / f"pairs_{arm}" for s in args.seeds]
            if all((f / "pairs_meta.jsonl").is_file() for f in folders):
                kinds, unreadable = defaultdict(list), []
                for f in folders:
                    per_kind, marks = pair_kinds(f)
                    unreadable += marks
                    for k, v in per_kind.items():
                        kinds[k].extend(v)
                print(f"{arm} pairs per seed, oracle agreement: " + ", ".join(
                    f"{k} {len(v) / len(folders):.0f} {statistics.fmean(v):.2f}"
                    for k, v in sorted(kinds.items())))
                evidence = defaultdict(list)
                for f in folders:
                    for k, v in evidence_scores(f).items():
                        evidence[k].extend(v)
                if evidence:
                    print(f"{arm} judge's evidence on descriptions, oracle score: " + ", ".join(
                        f"{EVIDENCE_LABELS[k]} {statistics.fmean(v):.3f} ({len(v)})"
                        for k, v in sorted(evidence.items())))
                checks = [contradicted_checks(f) for f in folders]
                wrong = sum((w for _, w in checks), Counter())
                print(f"{arm} claim checks contradicting word equality, per seed: "
                      f"{sum(wrong.values()) / len(folders):.0f} of "
                      f"{sum(t for t, _ in checks) / len(folders):.0f}; most common: " + ", ".join(
                          f'"{k}" {v / len(folders):.0f}' for k, v in wrong.most_common(3)))
                print(f"{arm} unreadable answers: chosen "
                      f"{statistics.fmean(c for c, _ in unreadable):.3f}, rejected "
                      f"{statistics.fmean(r for _, r in unreadable):.3f}")
            gains = defaultdict(list)
            for s in args.seeds:
                for k, v in accuracy(rnd / f"seed{s}" / f"dpo_{arm}" /
                                     "test_answers.jsonl").items():
                    gains[k].append(v - base[k])
            print(f"{arm} test gain: " + ", ".join(f"{k} {mean_sd(v)}" for k, v in sorted(gains.items())))
        print()


if __name__ == "__main__":
    main()
