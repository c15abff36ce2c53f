"""The alignment loop: its stages in order (round 1 sharing one set of answers between
arms, round 2 sampling each arm's aligned policy), a loop started again running only what
is missing, a failing stage stopping with its log, the paired figures against hand
computations; and, in the slow suite, a whole miniature loop on the tiny judge and policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from minirun import REPO, run_ur

from ur.cli import main
from ur.construct.judged import check_method
from ur.data.questions import world_questions
from ur.loop import (
    GenerationLoop,
    GenerationLoopSpec,
    Loop,
    LoopSpec,
    over_seeds,
    paired_gain,
    read_samples,
    table,
    unit_means,
)

DPO = REPO / "experiments" / "dpo" / "understanding.yaml"
CONSTRUCT = REPO / "experiments" / "construct" / "understanding.yaml"
T2I = REPO / "experiments" / "dpo" / "t2i.yaml"
GENERATION = REPO / "experiments" / "construct" / "generation.yaml"


@pytest.fixture
def folders(tmp_path):
    judge, policy = tmp_path / "judge", tmp_path / "policy"
    judge.mkdir()
    policy.mkdir()
    return {"judge": str(judge), "policy": str(policy), "out": tmp_path / "loop",
            "prompts": tmp_path / "prompts"}


def spec(folders, **kwargs) -> LoopSpec:
    kwargs = {"judge": folders["judge"], "dpo_config": (str(DPO),),
              "construct_config": (str(CONSTRUCT),), **kwargs}
    return LoopSpec(policy=folders["policy"], out=folders["out"], prompts=folders["prompts"],
                    **kwargs)


def test_the_plan_shares_round_one_answers_and_samples_each_aligned_policy_after(folders):
    stages = Loop(spec(folders, arms=("rank_sift", "oracle"), seeds=(0, 1), rounds=2)).plan()
    names = [s.name for s in stages]
    assert names[:2] == ["prompts", "base"]
    assert names[2:6] == ["candidates r1 s0", "pairs r1 s0 rank_sift", "dpo r1 s0 rank_sift",
                          "dpo r1 s0 oracle"]
    assert len(stages) == 2 + 2 * 4 + 2 * 5
    by_name = {s.name: s for s in stages}
    out = folders["out"]
    # the oracle arm trains on the oracle pairs of the very answers the judge paired
    shared = out / "round1" / "seed0" / "candidates"
    assert str(shared / "candidates.jsonl") in by_name["pairs r1 s0 rank_sift"].args
    assert str(shared / "image_pairs.jsonl") in " ".join(by_name["dpo r1 s0 oracle"].args)
    # round 2 starts from round 1's aligned policy of the same arm, with other draws
    again = by_name["candidates r2 s1 rank_sift"].args
    assert again[again.index("--policy") + 1] == str(
        out / "round1" / "seed1" / "dpo_rank_sift" / "policy")
    assert again[again.index("--seed") + 1] == "1001"
    assert again[again.index("--temperature") + 1] == "0.7"  # UnifiedReward's sampling
    dpo = by_name["dpo r2 s1 oracle"].args
    assert dpo[dpo.index("--model.init_args.checkpoint") + 1] == str(
        out / "round1" / "seed1" / "dpo_oracle" / "policy")
    assert dpo[dpo.index("--seed_everything") + 1] == "1"


def test_one_construction_config_serves_every_arm(folders, capsys):
    """``reject`` and ``margin`` are sifting options, which ``check_method`` refuses for
    the other arms: the loop builds those without them, so a config that sets them
    (experiments/construct/typical_reject.yaml) does not stop the rank and random arms."""
    typical = REPO / "experiments" / "construct" / "typical_reject.yaml"
    stages = Loop(spec(folders, arms=("sift", "rank", "random"), seeds=(0,),
                       construct_config=(str(CONSTRUCT), str(typical)))).plan()
    resolved = {}
    for st in stages:
        if st.name.startswith("pairs"):
            with pytest.raises(SystemExit):
                main([*st.args, "--print_config"])
            model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
            check_method(model["method"], model["margin"], model["reject"])
            resolved[model["method"]] = model["reject"]
    assert resolved == {"sift": "typical", "rank": "worst", "random": "worst"}


def test_several_judges_build_the_pairs_together(folders, tmp_path):
    second = tmp_path / "judge_2"
    second.mkdir()
    loop = Loop(spec(folders, judge=[folders["judge"], str(second)], arms=("rank_sift",),
                     seeds=(0,)))
    pairs = next(st for st in loop.plan() if st.name.startswith("pairs"))
    given = pairs.args[pairs.args.index("--model.init_args.judge") + 1]
    assert given == f"[{folders['judge']}, {second}]"
    assert loop.spec.settings()["judge"] == [folders["judge"], str(second)]
    assert spec(folders, judge=[folders["judge"]]).judge == folders["judge"]  # one is one
    with pytest.raises(FileNotFoundError, match="nowhere is not a folder"):
        spec(folders, judge=[folders["judge"], str(tmp_path / "nowhere")])


def test_a_loop_started_again_runs_only_what_is_missing(folders, capsys):
    loop = Loop(spec(folders, arms=("random",), seeds=(0,)))
    stages = loop.plan()
    for stage in stages[:3]:  # prompts, base and the answers are there
        stage.output.parent.mkdir(parents=True, exist_ok=True)
        stage.output.write_text("{}")
    assert loop.run(dry_run=True) == {}
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("ur loop: 5 stages, 2 to run")
    assert [p.split(":")[0] for p in printed[1:]] == ["[4/5] pairs r1 s0 random",
                                                      "[5/5] dpo r1 s0 random"]


def test_an_arm_without_pairs_keeps_its_policy_and_gains_nothing(folders, capsys):
    loop = Loop(spec(folders, arms=("oracle",), seeds=(0,)))
    prompts, base, answers, dpo = loop.plan()
    for stage in (prompts, base, answers):
        stage.output.parent.mkdir(parents=True, exist_ok=True)
    prompts.output.write_text("{}")
    rows = [{"id": "q1", "task": "image_understanding", "answer": "red", "oracle_score": 1.0},
            {"id": "q2", "task": "video_understanding", "answer": "up", "oracle_score": 0.0}]
    base.output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers.output.write_text(json.dumps({"pairs": 0, "pairs_by_task": {}}))
    report = loop.run()  # nothing to train on: no stage runs
    assert "no pairs in" in capsys.readouterr().out
    assert Path(dpo.output.parent / "policy").resolve() == Path(folders["policy"]).resolve()
    (cell,) = report["cells"]
    assert cell["policy_kept"] and cell["pairs"] == 0
    assert cell["accuracy"] == 0.5 and cell["gain"] == 0.0


def test_bad_arguments_are_refused_before_any_stage(folders):
    with pytest.raises(ValueError, match="unknown arm"):
        spec(folders, arms=("rank_sift", "best"))
    with pytest.raises(ValueError, match="temperature must be above 0"):
        spec(folders, temperature=0.0)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        LoopSpec(judge=str(folders["out"] / "nowhere"), out=folders["out"],
                 policy=folders["policy"], dpo_config=(str(DPO),),
                 construct_config=(str(CONSTRUCT),))
    with pytest.raises(SystemExit, match="ur loop: config .*missing.yaml does not exist"):
        main(["loop", "understanding", "--judge", folders["judge"], "--policy",
              folders["policy"], "--out", str(folders["out"]), "--dpo-config", "missing.yaml"])


def test_a_failing_stage_stops_the_loop_with_its_log(folders):
    blocker = folders["out"].parent / "a_file"
    blocker.write_text("not a folder")
    loop = Loop(spec(folders, arms=("random",), seeds=(0,)))
    loop.spec.prompts = blocker / "prompts"  # the prompt world cannot be written there
    with pytest.raises(RuntimeError, match=r"stage 'prompts' failed .*its log: .*prompts\.txt") as e:
        loop.run()
    log = Path(str(e.value).split("its log: ")[1].split("\n")[0])
    assert "a_file" in log.read_text()
    assert not (folders["out"] / "base").exists()  # nothing after it ran


def _finished(stage, rows, pairs=None):
    """A stage's output as its command leaves it (test answers, or a summary)."""
    stage.output.parent.mkdir(parents=True, exist_ok=True)
    if stage.name.startswith(("base", "dpo")):
        stage.output.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if stage.name.startswith("dpo"):
            (stage.output.parent / "run.json").write_text(json.dumps({"run_dir": "somewhere"}))
    else:
        stage.output.write_text(json.dumps(pairs))


def test_a_loop_with_another_judge_shares_what_no_judge_takes_part_in(folders, tmp_path,
                                                                       capsys):
    rows = [{"id": "q1", "task": "image_understanding", "answer": "red", "oracle_score": 1.0},
            {"id": "q2", "task": "video_understanding", "answer": "up", "oracle_score": 0.0}]
    built = {"pairs": 1, "tasks": {"image_understanding": {"pairs": 1, "oracle_agreement": 1.0}}}
    first = Loop(spec(folders, arms=("oracle", "random"), seeds=(0,)))
    for stage in first.plan():
        _finished(stage, rows, built if "pairs" in stage.name
                  else {"pairs": 1, "pairs_by_task": {"image_understanding": 1}})
    first.run()  # every stage is there: nothing runs, loop.json records the settings
    other_judge = tmp_path / "judge_b"
    other_judge.mkdir()
    second = dict(folders, judge=str(other_judge), out=tmp_path / "loop_b")
    loop = Loop(spec(second, arms=("rank_sift", "oracle", "random"), seeds=(0,),
                     share=folders["out"]))
    loop.run(dry_run=True)
    printed = capsys.readouterr().out.splitlines()
    shared = [line.split(":")[0] for line in printed if "shared with" in line]
    assert shared == ["[2/8] base", "[3/8] candidates r1 s0", "[6/8] dpo r1 s0 oracle",
                      "[7/8] pairs r1 s0 random", "[8/8] dpo r1 s0 random"]
    assert not (tmp_path / "loop_b" / "base").exists(), "a dry run links nothing"
    # without the judge's own arm, nothing runs: every stage is linked from the first loop
    report = Loop(spec(second, arms=("oracle", "random"), seeds=(0,),
                       share=folders["out"])).run()
    linked = tmp_path / "loop_b" / "round1" / "seed0" / "dpo_random"
    assert linked.is_symlink() and linked.resolve() == (
        folders["out"] / "round1" / "seed0" / "dpo_random").resolve()
    assert [c["accuracy"] for c in report["cells"]] == [0.5, 0.5]
    assert sum(st["shared"] is not None for st in report["stages"]) == 5
    with pytest.raises(ValueError, match="the loop's own folder"):
        spec(folders, share=folders["out"])


def test_a_loop_shares_only_what_was_made_with_its_settings(folders, tmp_path, capsys):
    rows = [{"id": "q1", "task": "image_understanding", "answer": "red", "oracle_score": 1.0}]
    first = Loop(spec(folders, arms=("rank_sift", "oracle"), seeds=(0,)))
    for stage in first.plan():
        _finished(stage, rows, {"pairs": 1, "pairs_by_task": {}, "tasks": {}})
    first.run()

    def shared(**kwargs) -> list[str]:
        loop = Loop(spec(dict(folders, out=tmp_path / "other"), arms=("rank_sift", "oracle"),
                         seeds=(0,), share=folders["out"], **kwargs))
        loop.run(dry_run=True)
        return [line.split("] ")[1].split(":")[0] for line in capsys.readouterr().out.splitlines()
                if "shared with" in line]

    # other answers: nothing downstream of them is the same
    assert shared(n=4) == ["base"]
    assert shared(temperature=1.0) == ["base"]
    # the same judge and answers, another DPO recipe: the answers and the judge's pairs
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {init_args: {sft_weight: 0.5}}\n")
    assert shared(dpo_config=(str(DPO), str(recipe))) == ["candidates r1 s0",
                                                          "pairs r1 s0 rank_sift"]
    # pairs decided another way: the answers, the base and the oracle's arm
    assert shared(pair_from="verdict") == ["base", "candidates r1 s0", "dpo r1 s0 oracle"]


def generation_spec(folders, **kwargs) -> GenerationLoopSpec:
    return GenerationLoopSpec(**{"judge": folders["judge"], "policy": folders["policy"],
                                 "out": folders["out"], "dpo_config": (str(T2I),),
                                 "construct_config": (str(GENERATION),), **kwargs})


def test_the_generation_loop_pairs_the_generators_own_samples(folders):
    stages = GenerationLoop(generation_spec(
        folders, arms=("rank_sift", "oracle"), seeds=(0,), rounds=2, captions=50)).plan()
    names = [s.name for s in stages]
    assert names[:5] == ["base", "candidates r1 s0", "pairs r1 s0 rank_sift",
                         "dpo r1 s0 rank_sift", "dpo r1 s0 oracle"]
    by_name = {s.name: s for s in stages}
    out = folders["out"]
    samples = out / "round1" / "seed0" / "candidates"
    cand = by_name["candidates r1 s0"].args
    assert cand[:2] == ["construct", "oracle-generation"]
    assert [cand[cand.index(k) + 1] for k in ("--generator", "--kind", "--prompts", "--n")] == [
        folders["policy"], "image", "50", "4"]
    pairs = by_name["pairs r1 s0 rank_sift"].args
    assert pairs[pairs.index("--data.init_args.candidates") + 1] == str(samples / "candidates.jsonl")
    assert "--data.init_args.questions" not in pairs  # the samples' folder is the media root
    # each arm's Diffusion-DPO reads its own pairs, Pick-a-Pic's schema, from the same samples
    for arm, file in (("oracle", samples / "image_pairs.parquet"),
                      ("rank_sift", out / "round1" / "seed0" / "pairs_rank_sift"
                       / "image_generation_pairs.parquet")):
        dpo = by_name[f"dpo r1 s0 {arm}"]
        train = dpo.args[dpo.args.index("--data.init_args.train") + 1]
        assert train == f"[{{name: pickapic_v2, path: {file}, media_root: {samples}}}]"
        assert dpo.output.name == "test_samples.jsonl"
    assert by_name["base"].args[:2] == ["test", "--config"]
    assert "--pretrain_generator" in by_name["base"].args
    again = by_name["candidates r2 s0 oracle"].args  # round 2 samples the aligned generator
    assert again[again.index("--generator") + 1] == str(
        out / "round1" / "seed0" / "dpo_oracle" / "policy")
    settings = generation_spec(folders).settings()
    assert {"kind", "captions", "sample_steps"} <= set(settings)
    assert not {"temperature", "prompts", "max_new_tokens"} & set(settings)
    video = generation_spec(folders, kind="video", dpo_config=(), construct_config=())
    assert video.dpo_config == ("experiments/dpo/t2v.yaml",)
    with pytest.raises(ValueError, match="kind must be image or video"):
        generation_spec(folders, kind="audio")


def test_the_generation_gain_is_paired_by_caption_and_seed(tmp_path):
    rows = [("a red circle", 0, 1.0), ("a red circle", 1, 0.5), ("a blue square", 0, 0.0)]
    path = tmp_path / "test_samples.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "seed": s, "alignment": a, "quality": 1.0,
                                        "score": a}) + "\n" for p, s, a in rows))
    base = read_samples(path)
    assert base == {"a red circle#0": 1.0, "a red circle#1": 0.5, "a blue square#0": 0.0}
    aligned = {"a red circle#0": 1.0, "a red circle#1": 1.0, "a blue square#0": 0.5}
    assert paired_gain(base, aligned)["gain"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    with pytest.raises(ValueError, match="not the same"):
        paired_gain(base, {"a red circle#0": 1.0, "a red circle#2": 1.0, "a blue square#0": 0.5})
    # a caption's samples are one unit of the interval: their gains are averaged first
    gains = {k: aligned[k] - base[k] for k in base}
    assert unit_means(gains, GenerationLoop.unit).tolist() == [0.5, 0.25]  # blue, red
    assert unit_means(gains).tolist() == [0.5, 0.0, 0.5]
    by_caption = paired_gain(base, aligned, GenerationLoop.unit)
    assert by_caption["gain"] == pytest.approx((0.5 + 0.25) / 2)
    assert 0.25 <= by_caption["gain_ci_low"] <= by_caption["gain_ci_high"] <= 0.5


def test_the_gain_is_paired_by_question():
    base = {"a": 1.0, "b": 0.0, "c": 0.5, "d": 0.0}
    aligned = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0}
    got = paired_gain(base, aligned)
    assert got["accuracy"] == pytest.approx(0.75)
    assert got["gain"] == pytest.approx((0 + 1 - 0.5 + 1) / 4)
    assert -0.5 <= got["gain_ci_low"] <= got["gain"] <= got["gain_ci_high"] <= 1.0
    with pytest.raises(ValueError, match="not the same held-out items"):
        paired_gain(base, {"a": 1.0})
    other = {"a": 0.0, "b": 1.0, "c": 0.5, "d": 0.0}
    seeds = [(paired_gain(base, aligned), aligned), (paired_gain(base, other), other)]
    arm = over_seeds(base, seeds)
    assert arm["accuracy_mean"] == pytest.approx((0.75 + 0.375) / 2)
    assert arm["gain_mean"] == pytest.approx(arm["gain_over_seeds"])
    assert arm["gain_std"] == pytest.approx((0.375 - 0.0) / 2 ** 0.5)  # gains 0.375 and 0
    assert arm["gain_over_seeds_ci_low"] <= arm["gain_over_seeds"] <= arm["gain_over_seeds_ci_high"]


MINI_DPO = """
trainer:
  max_steps: 2
  val_check_interval: null
  check_val_every_n_epoch: 1
  limit_val_batches: 1
  log_every_n_steps: 1
model:
  init_args:
    answer_tokens: 8
data:
  init_args:
    val:
      - {{name: vl_rewardbench, path: {world}/val/image_understanding_pairwise.json}}
    questions: {{out: {world}, size: 48, seed: 0, difficulty: 1, splits: [0.8, 0.1, 0.1]}}
    max_questions: 4
    max_test_questions: 6
    batch_size: 4
    eval_batch_size: 6
"""

MINI_CONSTRUCT = """
model:
  init_args:
    judge_batch_size: 16
data:
  init_args:
    batch_size: 4
"""


@pytest.mark.slow
def test_a_miniature_loop_leaves_every_stage_and_paired_figures(mini, mini_fit, tmp_path,
                                                                monkeypatch):
    dpo = tmp_path / "dpo.yaml"
    dpo.write_text(MINI_DPO.format(world=mini["world"]))
    construct = tmp_path / "construct.yaml"
    construct.write_text(MINI_CONSTRUCT)
    args = ["loop", "understanding", "--judge", str(mini_fit / "export"), "--policy",
            str(mini["base"]), "--out", "loop", "--prompts", "prompts", "--prompts-size", "48",
            "--arms", "rank_sift", "oracle", "--seeds", "0", "--rounds", "2", "--n", "4",
            "--max-new-tokens", "6", "--dpo-config", str(DPO), str(dpo), "--construct-config",
            str(CONSTRUCT), str(construct)]
    run = run_ur(*args, cwd=tmp_path, timeout=1800)
    assert run.stdout.strip().splitlines()[-1] == "loop/loop.json"
    report = json.loads((tmp_path / "loop" / "loop.json").read_text())
    assert set(report["arms"]) == {"round1/rank_sift", "round1/oracle", "round2/rank_sift",
                                   "round2/oracle"}
    assert report["base"]["questions"] == len(
        world_questions(mini["world"], "test", max_questions=6, seed=0))
    for cell in report["cells"]:
        assert 0 <= cell["accuracy"] <= 1 and cell["gain_ci_low"] <= cell["gain"] <= cell["gain_ci_high"]
    assert (tmp_path / "loop" / "round2" / "seed0" / "dpo_oracle" / "policy" / "config.json").exists()
    assert sum(line.startswith("| round1/") or line.startswith("| round2/")
               for line in table(report).splitlines()) == 4
    again = run_ur(*args, cwd=tmp_path)  # everything is done: nothing runs again
    assert "11 stages, 0 to run" in again.stdout

    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("UR_LOOP", str(tmp_path / "loop"))
    nb = nbformat.read(REPO / "notebooks" / "alignment.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "round1/rank_sift" in printed and "shape questions" in printed


MINI_T2I = """
trainer:
  max_steps: 2
  val_check_interval: 2
  log_every_n_steps: 1
model:
  init_args:
    sample_steps: 2
data:
  init_args:
    prompts: {kind: image, count: 2, samples_per_prompt: 1}
    test_prompts: {kind: image, count: 3, samples_per_prompt: 2}
    resolution: 16
    batch_size: 2
"""


@pytest.mark.slow
def test_a_miniature_generation_loop_pairs_samples_by_caption_and_seed(mini_fit, tmp_path,
                                                                     monkeypatch):
    from ur.models.generators import TinyGeneratorConfig, build_tiny_generator
    from ur.pretrain.tiny_generator import world_vocabulary

    config = TinyGeneratorConfig(kind="image", prediction="flow", size=16, patch=2, layers=1,
                                 heads=2, head_dim=8, text_hidden=16, text_layers=1)
    build_tiny_generator(world_vocabulary(), config, seed=1).save_pretrained(
        tmp_path / "generator", safe_serialization=True)
    dpo = tmp_path / "t2i.yaml"
    dpo.write_text(MINI_T2I)
    args = ["loop", "generation", "--judge", str(mini_fit / "export"), "--generator",
            str(tmp_path / "generator"), "--out", "loop", "--arms", "rank_sift", "oracle",
            "random", "--seeds", "0", "--captions", "4", "--n", "4", "--sample-steps", "2",
            "--dpo-config", str(T2I), str(dpo), "--construct-config", str(GENERATION)]
    run = run_ur(*args, cwd=tmp_path, env={"WANDB_MODE": "offline"}, timeout=1800)
    assert run.stdout.strip().splitlines()[-1] == "loop/loop.json"
    report = json.loads((tmp_path / "loop" / "loop.json").read_text())
    assert report["metric"] == "oracle caption alignment"
    assert report["base"]["questions"] == 6  # 3 held-out captions x 2 seeds
    assert set(report["arms"]) == {"round1/rank_sift", "round1/oracle", "round1/random"}
    base = read_samples(tmp_path / "loop" / "base" / "test_samples.jsonl")
    for cell in report["cells"]:
        aligned = read_samples(tmp_path / "loop" / "round1" / "seed0" / f"dpo_{cell['arm']}"
                               / "test_samples.jsonl")
        assert cell["gain"] == pytest.approx(sum(aligned[k] - base[k] for k in base) / len(base))
    assert "oracle_agreement/image_generation" in report["arms"]["round1/rank_sift"]
    again = run_ur(*args, cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert "7 stages, 0 to run" in again.stdout

    import nbformat
    from nbclient import NotebookClient

    # the notebook reads a generation loop alone: its table, bars and pictures
    monkeypatch.setenv("UR_LOOP", str(tmp_path / "no_understanding_loop"))
    monkeypatch.setenv("UR_LOOP_GENERATION", str(tmp_path / "loop"))
    nb = nbformat.read(REPO / "notebooks" / "alignment.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "round1/oracle" in printed and "No understanding loop" in printed
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


def test_the_notebook_before_any_loop_says_what_to_run(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("UR_LOOP", str(tmp_path / "no_loop"))
    monkeypatch.setenv("UR_LOOP_GENERATION", str(tmp_path / "no_loop_t2i"))
    nb = nbformat.read(REPO / "notebooks" / "alignment.ipynb", as_version=4)
    with pytest.raises(CellExecutionError) as stopped:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert "NoLoopYet" in str(stopped.value) and "FileNotFoundError" not in str(stopped.value)
    said = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "ur loop understanding" in said and "ur loop generation" in said
