"""Probe: does the judge see shape, and where does a wrong shape get lost?

On the world's test split, for each judge given:

1. The image-generation pairs whose worse image has the wrong shape: the shape word the
   judge's own description (fast mode, greedy) gives each image, against the image's
   true shape and the caption's: ``right`` (the image's), ``caption`` (the caption's,
   where the image's differs) or ``other``, counted separately for images whose shape
   is the caption's and images whose shape is not.
2. The same for single images (the pointwise image-generation records), where nothing
   but the caption can be copied.
3. The wrong-shape pairs' accuracy (ties left out) with each decision,
   ``pair_from: verdict | points | both``, image and video generation.

Prints one JSON object per judge. Results are in docs/judge_quality.md.

    python docs/probes/shape_descriptions.py JUDGE_EXPORT... [--world data/world]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import replace

import torch

from ur.data.datamodule import WorldSpec, load_records
from ur.data.synthetic.scene import SHAPES
from ur.data.synthetic.world import difference_kind
from ur.reward.judge import Judge


def shape_in(text: str) -> str | None:
    """The first shape word of a text."""
    found = [(text.find(s), s) for s in SHAPES if s in text]
    return min(found)[1] if found else None


def named(said, truth, caption) -> str:
    if said == truth:
        return "right"
    return "caption" if said == caption else "other"


def probe(judge: Judge, records) -> dict:
    out: dict = {}
    pairs = {task: [r for r in records if r.task == task and r.form == "pairwise"
                    and r.label in ("first", "second") and difference_kind(r.id) == "wrong_shape"]
             for task in ("image_generation", "video_generation")}
    seen = Counter()
    for r, j in zip(pairs["image_generation"], judge(pairs["image_generation"]), strict=True):
        caption = shape_in(r.prompt)
        parts = re.split(r"Image 2", j.text, maxsplit=1) + [""]
        for truth, text in zip((shape_in(e) for e in r.evidence), parts[:2], strict=True):
            side = "caption_shape" if truth == caption else "other_shape"
            seen[f"pair/{side}/{named(shape_in(text), truth, caption)}"] += 1
    singles = [r for r in records if r.task == "image_generation" and r.form == "pointwise"]
    for r, j in zip(singles, judge(singles), strict=True):
        caption, truth = shape_in(r.prompt), shape_in(r.evidence[0])
        side = "caption_shape" if truth == caption else "other_shape"
        seen[f"single/{side}/{named(shape_in(j.text), truth, caption)}"] += 1
    out["descriptions"] = dict(sorted(seen.items()))
    for task, chosen in pairs.items():
        out[f"{task}/wrong_shape_pairs"] = len(chosen)
        for mode in ("verdict", "points", "both"):
            judged = replace(judge, pair_from=mode)(chosen)
            right = sum(j.label == r.label for j, r in zip(judged, chosen, strict=True))
            out[f"{task}/accuracy/{mode}"] = round(right / len(chosen), 3)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("judges", nargs="+", help="judge export folders")
    ap.add_argument("--world", default="data/world", help="the quickstart's world")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = WorldSpec(out=args.world, size=10400, seed=0, difficulty=1, splits=(8, 1, 4))
    records = [r for recs in load_records(spec.sources("test"))[0] for r in recs]
    for path in args.judges:
        judge = Judge.from_pretrained(path, batch_size=16)
        print(json.dumps({"judge": path, **probe(judge, records)}), flush=True)


if __name__ == "__main__":
    main()
