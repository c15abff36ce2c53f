"""Pairs by the judge: the selection rules on their own, then `ur predict` with the
miniature judge and policy: every prompt done exactly once (also killed and started
again, also on two processes), ties and unparsed judgments never deciding a pair, pairs
that the DPO data module reads, and the oracle's check in the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from minirun import REPO, killer_env, run_ur

from ur.construct.judged import (
    Built,
    best_and_worst,
    build_pairs,
    check_method,
    fixed_pairs,
    pool_of,
    settle,
    surest,
    winner_loser,
)
from ur.construct.predict import read_parts
from ur.data.datamodule import SourceSpec
from ur.data.pairs import PairsDataModule

CONSTRUCT = REPO / "experiments" / "construct" / "understanding.yaml"
QUESTIONS = 8

MINI = """
model:
  init_args:
    judge: {judge}
    policy: {base}
    n: 4
    max_new_tokens: 8
    judge_batch_size: 16
data:
  init_args:
    out: {out}
    questions: {{out: {world}, size: 48, seed: 0, difficulty: 1, splits: [0.8, 0.1, 0.1]}}
    split: train
    max_questions: {questions}
    batch_size: 2
"""


def test_a_tie_or_an_unparsed_verdict_decides_nothing():
    assert winner_loser((2, 3), "first") == (2, 3)
    assert winner_loser((2, 3), "second") == (3, 2)
    assert winner_loser((2, 3), "tie") is None and winner_loser((2, 3), None) is None
    assert fixed_pairs([0, 2, 3, 5, 7]) == [(0, 2), (3, 5)]  # 7 sits out


def test_sifting_compares_numbers_and_drops_a_prompt_without_margin():
    # as strings "10" < "9"; as numbers 10 > 9
    scores = {0: 10.0, 1: 9.0, 2: None, 3: 2.0}
    assert best_and_worst([0, 1, 2], [1, 2, 3], scores) == (0, 3)
    assert settle(Built("rank_sift", scores=dict(scores)), [0, 1], [3]).chosen == 0
    level = settle(Built("rank_sift", scores={0: 4.0, 1: 4.0}), [0], [1])
    assert (level.chosen, level.dropped) == (None, "no_margin")
    unscored = settle(Built("rank_sift", scores={0: None, 1: 3.0}), [0], [1])
    assert unscored.dropped == "unscored"


def test_a_margin_keeps_only_pairs_scored_further_apart():
    scores = {0: 80.0, 1: 30.0, 2: 25.0}
    assert settle(Built("rank_sift", scores=dict(scores)), [0], [1], least=50.0).dropped == \
        "small_margin"
    assert settle(Built("rank_sift", scores=dict(scores)), [0], [2], least=50.0).chosen == 0
    for method, margin in (("rank", 0.5), ("random", 0.1), ("rank_sift", 1.0), ("sift", -0.1)):
        with pytest.raises(ValueError, match="margin"):
            check_method(method, margin)


def test_a_typical_rejection_takes_the_first_answer_scored_below_the_middle():
    """``reject="typical"``: of the rejected side, the first in sampling order scoring
    below the middle of the scale, not the worst; the worst when none is below it."""
    scores = {0: 95.0, 1: 30.0, 2: 2.0, 3: 40.0, 4: 70.0}
    assert best_and_worst([0, 4], [1, 2, 3], scores) == (0, 2)
    assert best_and_worst([0, 4], [3, 2, 1], scores, below=50.0) == (0, 1)
    assert best_and_worst([0], [4, 3], scores, below=50.0) == (0, 3)
    assert best_and_worst([0], [4], scores, below=50.0) == (0, 4)  # none below: the worst
    # every answer judged wrong: the best is not rejected against itself
    low = {0: 20.0, 1: 20.0, 2: 5.0, 3: 20.0}
    assert best_and_worst(list(low), list(low), low, below=50.0) == (0, 1)
    built = settle(Built("sift", scores=dict(scores)), list(scores), list(scores), below=50.0)
    assert (built.chosen, built.rejected) == (0, 1)
    # the margin still applies to the answer rejected
    assert settle(Built("sift", scores=dict(scores)), [0], [1, 2], least=70.0,
                  below=50.0).dropped == "small_margin"
    for method in ("rank", "random"):
        with pytest.raises(ValueError, match="reject applies"):
            check_method(method, reject="typical")
    with pytest.raises(ValueError, match="unknown reject"):
        check_method("sift", reject="random")


def test_ranking_only_takes_the_pair_the_judge_is_surest_of():
    decided = [((0, 1), {"first": 0.6, "second": 0.3, "tie": 0.1}),
               ((3, 2), {"first": 0.05, "second": 0.9, "tie": 0.05})]
    assert surest(decided) == (3, 2)
    assert surest([((0, 1), None), ((3, 2), None)]) == (0, 1)


@pytest.fixture(scope="module")
def setup(mini, mini_fit, tmp_path_factory):
    root = tmp_path_factory.mktemp("construct")
    return {"root": root, "judge": mini_fit / "export", "base": mini["base"],
            "world": mini["world"]}


def overlay(setup, name: str, **kwargs) -> tuple[Path, Path]:
    out = setup["root"] / name
    path = setup["root"] / f"{name}.yaml"
    path.write_text(MINI.format(judge=setup["judge"], base=setup["base"], out=out,
                                world=setup["world"], questions=QUESTIONS) + kwargs.get("extra", ""))
    return path, out


def check_outputs(out: Path) -> dict:
    rows = read_parts(out)  # raises on a prompt done twice
    assert len(rows) == QUESTIONS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == summary["expected_prompts"] == QUESTIONS
    pairs = 0
    for row in rows:
        b = row["built"]
        decided = [winner_loser(tuple(p), v) for p, v in zip(b["pairs"], b["verdicts"], strict=True)]
        decided = [d for d in decided if d is not None]
        if b["chosen"] is None:
            assert b["dropped"] in ("too_few", "undecided", "unscored", "no_margin")
            continue
        pairs += 1
        assert b["chosen"] in [w for w, _ in decided]
        assert b["rejected"] in [lo for _, lo in decided]
        assert b["scores"][str(b["chosen"])] > b["scores"][str(b["rejected"])]
    assert summary["pairs"] == pairs
    meta = (out / "pairs_meta.jsonl").read_text().splitlines()
    assert len(meta) == pairs
    return summary


def test_a_killed_construction_started_again_does_every_prompt_once_for_dpo(setup):
    config, out = overlay(setup, "killed", extra="trainer:\n  callbacks:\n"
                          "    - {class_path: killer.KillAtPredict, init_args: {batch: 2}}\n")
    env = killer_env(setup["root"])
    first = run_ur("predict", "--config", str(CONSTRUCT), "--config", str(config),
                   cwd=setup["root"], env=env, check=False)
    assert first.returncode != 0
    assert len(read_parts(out)) == 4  # two batches of two, written before the kill
    plain, _ = overlay(setup, "killed")
    run_ur("predict", "--config", str(CONSTRUCT), "--config", str(plain), cwd=setup["root"])
    summary = check_outputs(out)
    # Killed after its last part but before the merge: started again, nothing is left
    # to predict (Lightning skips the loop) and the outputs are still written.
    written = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for name in written:
        (out / name).unlink()
    run_ur("predict", "--config", str(CONSTRUCT), "--config", str(plain), cwd=setup["root"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == written
    root = summary["media_root"]
    assert root == str(setup["world"].resolve())
    dm = PairsDataModule(train=[SourceSpec("image_dpo", str(out / "image_pairs.jsonl"),
                                           media_root=root),
                                SourceSpec("sharegptvideo_dpo", str(out / "video_pairs.jsonl"),
                                           media_root=root)],
                         processor=str(setup["base"]))
    dm.setup("fit")
    assert len(dm.pairs["train"]) == summary["pairs"]
    for figures in summary["tasks"].values():
        if figures["pairs"]:
            assert figures["oracle_agreement_ci_low"] <= figures["oracle_agreement"] \
                <= figures["oracle_agreement_ci_high"]
            untied = figures["pairs"] - figures["oracle_ties"]
            assert ("oracle_agreement_untied" in figures) == (untied > 0)
            if untied:  # the same pairs above, counted among the untied ones
                assert figures["oracle_agreement_untied"] * untied == pytest.approx(
                    figures["oracle_agreement"] * figures["pairs"])
    # the chosen answers' oracle scores, by hand from the rows
    for task, figures in summary["tasks"].items():
        kept = [r for r in read_parts(out) if r["task"] == task and r["built"]["chosen"] is not None]
        if kept:
            chosen = [r["oracle_scores"][r["built"]["chosen"]] for r in kept]
            assert figures["oracle_chosen_mean"] == pytest.approx(sum(chosen) / len(chosen))
            every = [sum(r["oracle_scores"]) / len(r["oracle_scores"]) for r in kept]
            assert figures["oracle_candidates_mean"] == pytest.approx(sum(every) / len(every))


def test_two_processes_do_every_prompt_once(setup):
    config, out = overlay(setup, "ddp")
    run = run_ur("predict", "--config", str(CONSTRUCT), "--config", str(config),
                 "--trainer.strategy", "ddp", "--trainer.devices", "2", cwd=setup["root"],
                 timeout=600)
    summary = check_outputs(out)
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    recorded = json.loads((run_dir / "metrics.json").read_text())["predict"]
    assert recorded["construct/prompts"] == QUESTIONS
    assert recorded["construct/pairs"] == summary["pairs"]


def test_a_list_of_judges_builds_pairs_as_an_ensemble(setup):
    """Construction with several judges pools them: two copies of one judge build the
    pairs that judge builds alone."""
    from ur.construct.predict import ConstructModule
    from ur.data.questions import world_questions
    from ur.reward.judge import JudgeEnsemble

    questions = world_questions(setup["world"], "train", max_questions=4, seed=0)
    kwargs = dict(policy=str(setup["base"]), n=4, max_new_tokens=8, pair_from="both")
    alone = ConstructModule(judge=str(setup["judge"]), **kwargs)
    pair = ConstructModule(judge=[str(setup["judge"])] * 2, **kwargs)
    assert isinstance(pair.judge, JudgeEnsemble) and len(pair.judge_models) == 2
    rows_alone, rows_pair = alone.predict_step(questions, 0), pair.predict_step(questions, 0)
    for a, b in zip(rows_alone, rows_pair, strict=True):
        assert a["answers"] == b["answers"]
        assert (a["built"]["chosen"], a["built"]["rejected"], a["built"]["dropped"]) == (
            b["built"]["chosen"], b["built"]["rejected"], b["built"]["dropped"])


def test_a_margin_drops_the_pairs_whose_scores_are_close(setup):
    """On the judge's own scores: a margin keeps exactly the pairs of the rule without
    one whose scores lie more than the margin's share of the scale apart."""
    from ur.construct.predict import ConstructModule
    from ur.data.questions import world_questions
    from ur.reward.judge import POINT_SCALES

    questions = world_questions(setup["world"], "train", max_questions=6, seed=0)
    module = ConstructModule(judge=str(setup["judge"]), policy=str(setup["base"]), n=6,
                             max_new_tokens=8)
    pools = [pool_of(c) for c in module.candidates(questions)]
    plain = build_pairs(module.judge, pools)
    gaps = [None if a.chosen is None else
            (a.scores[a.chosen] - a.scores[a.rejected]) / (POINT_SCALES[p.task][1] - POINT_SCALES[p.task][0])
            for p, a in zip(pools, plain, strict=True)]
    seen = sorted({g for g in gaps if g is not None})
    assert len(seen) >= 2, "the judge should keep pairs scored unequally far apart"
    margin = (seen[0] + seen[1]) / 2  # between the two closest-scored pairs
    kept = build_pairs(module.judge, pools, margin=margin)
    for a, b, gap in zip(plain, kept, gaps, strict=True):
        wide = gap is not None and gap > margin
        assert (b.chosen, b.rejected) == ((a.chosen, a.rejected) if wide else (None, None))
        assert b.dropped == ("small_margin" if gap is not None and not wide else a.dropped)


def test_sharing_the_prompt_builds_the_same_pairs(setup):
    """``share_prefix`` runs each question's prompt once for its judgments; the pairs,
    verdicts and scores are those of judging every row whole."""
    from ur.construct.predict import ConstructModule
    from ur.data.questions import world_questions

    questions = world_questions(setup["world"], "train", max_questions=4, seed=0)
    kwargs = dict(judge=str(setup["judge"]), policy=str(setup["base"]), n=6, max_new_tokens=8,
                  pair_from="both")
    plain = ConstructModule(**kwargs).predict_step(questions, 0)
    shared_module = ConstructModule(share_prefix=True, **kwargs)
    assert shared_module.judge.share_prefix
    shared = shared_module.predict_step(questions, 0)
    for a, b in zip(plain, shared, strict=True):
        assert a["answers"] == b["answers"]
        x, y = a["built"], b["built"]
        assert (x["chosen"], x["rejected"], x["dropped"], x["verdicts"], x["texts"]) == (
            y["chosen"], y["rejected"], y["dropped"], y["verdicts"], y["texts"])
        assert x["scores"].keys() == y["scores"].keys()
        for k, v in x["scores"].items():
            assert (v is None) == (y["scores"][k] is None)
            assert v is None or abs(v - y["scores"][k]) < 1e-3
