"""VLM DPO end to end on the miniature world: pairs keep their roles, the first loss is
ln 2 (policy = reference) with either reference, the oracle checks held-out answers,
the aligned policy exports, and two CPU processes make one run."""

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from minirun import REPO, killer_env, run_ur

from ur.data.datamodule import SourceSpec, WorldSpec
from ur.data.pairs import PairsDataModule, chosen_first
from ur.data.questions import world_questions
from ur.data.records import RecordError

DPO = REPO / "experiments" / "dpo" / "understanding.yaml"

MINI = """
trainer:
  max_steps: 2
  val_check_interval: null
  check_val_every_n_epoch: 1
  limit_val_batches: 1
  limit_test_batches: 1
  log_every_n_steps: 1
pretrain:
  pretrain_steps: 2
  answer_checks: true
  batch_size: 8
  world: {{out: {world}, size: 48, seed: 0, difficulty: 1, splits: [0.8, 0.1, 0.1]}}
model:
  init_args:
    checkpoint: {base}
    answer_tokens: 8
data:
  init_args:
    train:
      - {{name: vl_rewardbench, path: {world}/train/image_understanding_pairwise.json}}
      - {{name: sharegptvideo_dpo, path: {world}/train/video_understanding_pairwise.jsonl}}
    val:
      - {{name: vl_rewardbench, path: {world}/val/image_understanding_pairwise.json}}
    questions: {{out: {world}, size: 48, seed: 0, difficulty: 1, splits: [0.8, 0.1, 0.1]}}
    max_questions: 4
    max_test_questions: 4
    batch_size: 4
    eval_batch_size: 4
"""


@pytest.fixture(scope="module")
def overlay(mini, mini_fit, tmp_path_factory):
    """The miniature DPO overlay, on the session's world and base (built by mini_fit)."""
    path = tmp_path_factory.mktemp("dpo") / "mini_dpo.yaml"
    path.write_text(MINI.format(world=mini["world"], base=mini["base"]))
    return path


@pytest.fixture(scope="module")
def pairs(mini, mini_fit):
    world = mini["world"]
    dm = PairsDataModule(train=[SourceSpec("vl_rewardbench",
                                           str(world / "train/image_understanding_pairwise.json"))],
                         processor=str(mini["base"]), batch_size=3)
    dm.setup("fit")
    return dm


def test_pairs_keep_their_roles_and_ties_are_dropped(pairs):
    assert pairs.pairs["train"] and all(p.label == "first" for p in pairs.pairs["train"])
    sample = pairs.pairs["train"][0]
    assert chosen_first(sample.swapped()) == sample  # a "second" label is turned round
    assert chosen_first(replace(sample, label="tie")) is None


def test_a_batch_holds_each_prompt_once_and_chosen_then_rejected_answers(pairs):
    batch = next(iter(pairs.train_dataloader()))
    n = len(batch["records"])
    assert batch["input_ids"].shape[0] == n and batch["answer_ids"].shape[0] == 2 * n
    tok = pairs.processor.tokenizer
    for i, pair in enumerate(batch["records"]):
        prompt = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert pair.prompt in tok.decode(prompt)
        assert batch["attention_mask"][i, -1] == 1  # padded on the left
        for row, answer in ((i, pair.responses[0]), (n + i, pair.responses[1])):
            said = batch["answer_ids"][row][batch["answer_mask"][row].bool()]
            assert tok.decode(said, skip_special_tokens=True).strip() == answer.strip()


def test_a_prompt_whose_media_tokens_do_not_fit_is_refused_by_name(pairs):
    collate = pairs.collator()
    collate.max_length = 8  # shorter than the prompt with its image tokens
    with pytest.raises(RecordError, match="max_length"):
        collate(pairs.pairs["train"][:2])


def first_train_loss(run_dir: Path) -> float:
    rows = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    return float(next(r["train/loss"] for r in rows if r.get("train/loss")))


def answers_written(run_dir: Path, world: Path) -> list[dict]:
    """The run's ``test_answers.jsonl``: every test question once, each answer scored as
    the oracle scores it."""
    from ur.data.synthetic.oracle import oracle_score

    rows = [json.loads(line) for line in (run_dir / "test_answers.jsonl").read_text().splitlines()]
    asked = {q.id: q for q in world_questions(world, "test", max_questions=4, seed=0)}
    assert sorted(r["id"] for r in rows) == sorted(asked)
    for r in rows:
        assert r["oracle_score"] == oracle_score(asked[r["id"]], r["answer"])
    return rows


@pytest.mark.parametrize("finetune, reference", [("full", "copy"), ("lora", "adapters_off"),
                                                 ("full", "cached")])
def test_the_first_logged_loss_is_ln2_and_the_oracle_checks_answers(overlay, mini, tmp_path,
                                                                      finetune, reference):
    # One run goes on to test and export; the others stop after fit (the first loss is
    # what they check), which keeps the suite's time down.
    whole = finetune == "full" and reference == "copy"
    rest = () if whole else ("--run.test_after_fit", "false", "--model.init_args.export", "false")
    run = run_ur("fit", "--config", str(DPO), "--config", str(overlay),
                 "--model.init_args.finetune", finetune, "--model.init_args.reference", reference,
                 "--model.init_args.sft_weight", "0", "--trainer.logger",
                 "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir",
                 str(tmp_path / "csv"), *rest, cwd=tmp_path)
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    assert first_train_loss(tmp_path / "csv") == pytest.approx(math.log(2), abs=1e-4)
    if reference == "cached":  # the table lives beside the pairs
        assert list((mini["world"] / "train" / ".ur_reference").glob("ref_logps-*.pt"))
    if not whole:
        return
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/rewards/margins", "train/logps/chosen", "val/rewards/accuracies",
            "val/oracle_accuracy"} <= set(metrics["fit"])
    assert 0 <= metrics["test"]["test/oracle_accuracy"] <= 1
    answers = answers_written(run_dir, mini["world"])
    assert sum(a["oracle_score"] for a in answers) / len(answers) == pytest.approx(
        metrics["test"]["test/oracle_accuracy"], abs=1e-6)
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(run_dir / "export")  # merged, plain weights
    run_ur("export", str(run_dir), "--out", str(tmp_path / "exported"), cwd=tmp_path)
    a = load_file(run_dir / "export" / "model.safetensors")
    b = load_file(tmp_path / "exported" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_ddp_dpo_makes_one_run_folder(overlay, mini, tmp_path):
    run = run_ur("fit", "--config", str(DPO), "--config", str(overlay), "--run.name", "ddp_dpo",
                 "--trainer.strategy", "ddp", "--trainer.devices", "2", cwd=tmp_path, timeout=600)
    run_dirs = list((tmp_path / "checkpoints" / "ddp_dpo").iterdir())
    assert run_dirs == [Path(run.stdout.strip().splitlines()[-1])]
    metrics = json.loads((run_dirs[0] / "metrics.json").read_text())
    assert "train/loss" in metrics["fit"] and "test/oracle_accuracy" in metrics["test"]
    answers_written(run_dirs[0], mini["world"])  # both ranks' answers, each question once


def test_questions_are_questions_of_images_and_videos(mini, mini_fit):
    """Validation asks the questions themselves, never a judge's instruction that embeds
    one (the world's pointwise records)."""
    dm = PairsDataModule(questions=WorldSpec(out=str(mini["world"]), size=48, seed=0,
                                             splits=(0.8, 0.1, 0.1)),
                         question_split="train", max_questions=None)
    questions = dm.questions("val")
    assert {q.task for q in questions} == {"image_understanding", "video_understanding"}
    assert all(q.evidence and "Answer:" not in q.prompt and "Final Score" not in q.prompt
               for q in questions)


def test_cached_reference_logps_equal_the_reference_models_and_are_reused(pairs, mini,
                                                                          tmp_path):
    from ur.align.reference_cache import cached_reference_logps, compute_reference_logps
    from ur.align.vlm_dpo import VLMDPOModule
    from ur.data.records import record_key

    module = VLMDPOModule(checkpoint=str(mini["base"]), finetune="full", reference="copy")
    batch = next(iter(pairs.train_dataloader()))
    live = module.reference_logps(batch)
    path = tmp_path / "ref.pt"

    from ur.models.loading import load_vlm

    base, _ = load_vlm(str(mini["base"]))

    def compute(missing):
        return compute_reference_logps(base, pairs.collator(), missing, batch_size=2)

    table = cached_reference_logps(path, pairs.pairs["train"], compute)
    n = len(batch["records"])
    for i, p in enumerate(batch["records"]):
        assert table[record_key(p)][0] == pytest.approx(float(live[i]), abs=1e-4)
        assert table[record_key(p)][1] == pytest.approx(float(live[n + i]), abs=1e-4)

    def refuse(missing):
        raise AssertionError(f"{len(missing)} pairs computed again")

    assert cached_reference_logps(path, pairs.pairs["train"], refuse) == table


def test_a_resumed_dpo_run_ends_with_the_uninterrupted_runs_weights(overlay, mini, tmp_path):
    """Two epochs of 2 batches with the cached reference, checkpointed at the end of
    epoch 0; one run is SIGKILLed as step 3 starts and resumed with --ckpt_path last."""
    from safetensors.torch import load_file

    env = killer_env(tmp_path)
    base = ["fit", "--config", str(DPO), "--config", str(overlay), "--trainer.max_steps", "-1",
            "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
            "--trainer.deterministic", "true", "--run.test_after_fit", "false",
            "--model.init_args.reference", "cached", "--model.init_args.reference_cache",
            str(tmp_path / "ref")]
    whole = Path(run_ur(*base, "--run.name", "whole", cwd=tmp_path).stdout.strip().splitlines()[-1])
    killed = run_ur(*base, "--run.name", "cut", "--trainer.callbacks+=killer.KillAt",
                    "--trainer.callbacks.step=3", cwd=tmp_path, check=False, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_ur(*base, "--run.name", "cut", "--ckpt_path", "last", cwd=tmp_path)
    cut = Path(resumed.stdout.strip().splitlines()[-1])
    assert cut.parent == tmp_path / "checkpoints" / "cut" and len(list(cut.parent.iterdir())) == 1
    a, b = (load_file(d / "export" / "model.safetensors") for d in (whole, cut))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != w).any() for k, w in load_file(mini["base"] / "model.safetensors").items()
               if k in a)  # and the policy moved


def test_a_run_that_ends_again_replaces_its_own_export(mini, mini_fit, tmp_path):
    """A fit resumed after it had exported (killed after on_fit_end, resumed) ends by
    exporting into the same run folder again."""
    import lightning as L

    from ur.align.vlm_dpo import VLMDPOModule

    module = VLMDPOModule(checkpoint=str(mini["base"]), finetune="full", reference="copy")
    module.trainer = L.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu")
    module.on_fit_end()
    first = (tmp_path / "export" / "model.safetensors").stat().st_mtime_ns
    module.on_fit_end()
    assert (tmp_path / "export" / "model.safetensors").stat().st_mtime_ns != first
