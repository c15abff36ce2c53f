"""Probe: what a margin on the judge's scores does to the pairs it builds.

Construction drops a prompt when chosen does not score above rejected by more than a
``margin`` share of the scale (``ur.construct.judged.build_pairs``). Chosen and rejected
do not depend on the margin, only whether the prompt is kept, so one construction run
without a margin (its ``pairs_meta.jsonl``: both scores and the oracle's score of every
candidate) gives the pairs of every margin. For each margin and task this prints the
pairs kept (mean over the folders given), their oracle agreement (chosen above rejected
by the oracle; a level pair counts against) as mean ± std over the folders and with a
Wilson 95% interval on the pooled count, the agreement among the pairs the oracle tells
apart, and the oracle's mean score of the chosen answers. Results are in
docs/construction.md.

    python docs/probes/margin_curve.py LOOP/round1/seed{0,1,2}/pairs_rank_sift \\
        [--margins 0 0.25 0.5 0.75 0.9]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy.stats import binomtest

from ur.reward.judge import POINT_SCALES


def read_pairs(folder: Path) -> list[dict]:
    path = folder / "pairs_meta.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give construction output folders")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gap(row: dict) -> float:
    """Chosen's score minus rejected's, as a share of the task's scale."""
    lo, hi = POINT_SCALES[row["task"]]
    return (row["chosen_score"] - row["rejected_score"]) / (hi - lo)


def oracle(row: dict) -> tuple[float, float]:
    scores = row["oracle_scores"]
    return scores[row["chosen_index"]], scores[row["rejected_index"]]


def curve(folders: list[list[dict]], task: str, margin: float) -> dict:
    kept, agree, untied, chosen = [], [], [], []
    right = total = 0
    for rows in folders:
        pairs = [oracle(r) for r in rows if r["task"] == task and gap(r) > margin]
        wins = sum(c > x for c, x in pairs)
        apart = sum(c != x for c, x in pairs)
        kept.append(len(pairs))
        agree.append(wins / len(pairs) if pairs else float("nan"))
        untied.append(wins / apart if apart else float("nan"))
        chosen.append(statistics.fmean(c for c, _ in pairs) if pairs else float("nan"))
        right, total = right + wins, total + len(pairs)
    ci = binomtest(right, total).proportion_ci(method="wilson") if total else None
    spread = statistics.stdev(agree) if len(agree) > 1 else 0.0
    return {"kept": statistics.fmean(kept), "agreement": statistics.fmean(agree),
            "std": spread, "ci": (ci.low, ci.high) if ci else None,
            "untied": statistics.fmean(untied), "chosen": statistics.fmean(chosen)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="construction output folders")
    ap.add_argument("--margins", nargs="+", type=float, default=[0, 0.25, 0.5, 0.75, 0.9])
    args = ap.parse_args(argv)
    folders = [read_pairs(f) for f in args.folders]
    tasks = sorted({r["task"] for rows in folders for r in rows})
    print("| task | margin | pairs kept | oracle agreement | pooled [95% interval] | untied "
          "| chosen answers' oracle score |")
    print("|---|---|---|---|---|---|---|")
    for task in tasks:
        for m in args.margins:
            c = curve(folders, task, m)
            ci = f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]" if c["ci"] else ""
            print(f"| {task} | {m:g} | {c['kept']:.0f} | {c['agreement']:.3f} ± {c['std']:.3f} "
                  f"| {ci} | {c['untied']:.3f} | {c['chosen']:.3f} |")


if __name__ == "__main__":
    main()
