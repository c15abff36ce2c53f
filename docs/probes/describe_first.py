"""Probe: what a model says a picture shows, with and without the text it judges in view.

On the world's test split:

1. For each model given (a judge's export or the base), the first object its
   description names on single pictures (the pointwise records of each task), against
   the picture's truth, attribute by attribute: once in the record's own judging prompt
   (the caption, or the question and answer, in view) and once asked to describe the
   picture alone (``templates.describe_image`` / ``describe_video``).
2. With ``--describer``: the pairwise accuracy (ties in the decision count half) that
   describing first would reach with a perfect text step: each picture described alone
   by the describer, then the world's own rules decide (the picture with fewer faults
   against its caption; the answer with more claims held against the description),
   per task and kind of difference, beside the same rules on the true evidence.

Prints one JSON object per line. Results are in docs/judge_quality.md, "Describe first".

    python docs/probes/describe_first.py MODEL... [--describer BASE] [--world data/world]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import replace

import torch

from ur.data.datamodule import WorldSpec, load_records
from ur.data.records import TASKS, is_generation
from ur.data.synthetic.language import answer_claims, caption_claims, shown_and_defects
from ur.data.synthetic.scene import parse_text
from ur.data.synthetic.world import difference_kind
from ur.data.templates import PromptTemplates, description
from ur.reward.judge import Judge

TEMPLATES = PromptTemplates()


def kind_of(task: str) -> str:
    return "image" if task.startswith("image") else "video"


def alone(record):
    """The record's single picture, asked to be described with nothing else in view."""
    return [replace(record, form="pointwise", label=None, score=0.0, scale=(0.0, 1.0),
                    media=(m,), responses=(), response_scores=None, evidence=None,
                    instruction=TEMPLATES.describe(kind_of(record.task)), target="-")
            for m in record.media]


def attributes(task: str) -> tuple[str, ...]:
    return ("colour", "shape", "motion" if task.startswith("video") else "place")


def named_right(records, texts) -> dict[str, float]:
    """Per attribute, how often the first object of each text has the picture's value."""
    hits = defaultdict(int)
    for r, text in zip(records, texts, strict=True):
        truth = parse_text(r.evidence[0])[0]
        said = parse_text(description(text))
        for a in attributes(r.task):
            hits[a] += bool(said) and getattr(said[0], a) == getattr(truth, a)
    return {a: round(v / len(records), 3) for a, v in hits.items()}


def perception(judge: Judge, records) -> dict:
    out = {}
    for task in TASKS:
        singles = [r for r in records if r.task == task and r.form == "pointwise"
                   and r.evidence and len(parse_text(r.evidence[0])) == 1]
        own = [j.text for j in judge(singles)]
        described = [j.text for j in judge([a for r in singles for a in alone(r)])]
        out[task] = {"pictures": len(singles), "in_its_prompt": named_right(singles, own),
                     "alone": named_right(singles, described)}
    return out


def rule_scores(record, shown: list[str]) -> list[float] | None:
    """The world's rules on what each candidate's picture shows: minus its faults against
    the caption (generation), or the share of its claims the description holds."""
    if is_generation(record.task):
        faults = []
        for text in shown:
            seen, defects = shown_and_defects(text)
            claims = caption_claims(record.prompt, seen)
            if claims is None:
                return None
            faults.append(-(sum(a != b for a, b in claims) + len(defects)))
        return faults
    held = []
    for answer in record.responses:
        claims = answer_claims(record.prompt, answer, shown[0])
        if not claims:
            return None
        held.append(sum(a == b for a, b in claims) / len(claims))
    return held


def rule_bound(describer: Judge, records) -> dict:
    out = {}
    for task in TASKS:
        pairs = [r for r in records if r.task == task and r.form == "pairwise"
                 and r.label in ("first", "second")]
        asks = [a for r in pairs for a in alone(r)]
        texts = iter(description(j.text) for j in describer(asks))
        right = defaultdict(list)
        for r in pairs:
            shown = [next(texts) for _ in r.media]
            for name, seen in (("described", shown), ("truth", list(r.evidence))):
                s = rule_scores(r, seen)
                ok = 0.5 if s is None or s[0] == s[1] else float(
                    ("first" if s[0] > s[1] else "second") == r.label)
                right[name].append(ok)
                if name == "described":
                    right[f"described@{difference_kind(r.id) or 'other'}"].append(ok)
        out[task] = {"pairs": len(pairs)} | {
            k: [round(sum(v) / len(v), 3), len(v)] if "@" in k else round(sum(v) / len(v), 3)
            for k, v in sorted(right.items())}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="judge export folders or the base")
    ap.add_argument("--describer", help="the model that describes for the rule bound")
    ap.add_argument("--world", default="data/world", help="the quickstart's world")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = WorldSpec(out=args.world, size=10400, seed=0, difficulty=1, splits=(8, 1, 4))
    records = [r for recs in load_records(spec.sources("test"))[0] for r in recs]
    for path in args.models:
        judge = Judge.from_pretrained(path, mode="generate", max_new_tokens=48, batch_size=32)
        print(json.dumps({"model": path, **perception(judge, records)}), flush=True)
    if args.describer:
        describer = Judge.from_pretrained(args.describer, mode="generate", max_new_tokens=48,
                                          batch_size=32)
        print(json.dumps({"describer": args.describer, **rule_bound(describer, records)}),
              flush=True)


if __name__ == "__main__":
    main()
