"""`ur fit|validate|test`, `ur export` and `ur judge` end to end on a miniature of the
quickstart, and resume after SIGKILL."""

import json
from pathlib import Path

import pytest
import torch
from minirun import QUICKSTART, killer_env, mini_overlay
from minirun import run_ur as ur
from safetensors.torch import load_file


def overlay(tmp_path, mini, steps=4, extra=""):
    return mini_overlay(tmp_path / "mini.yaml", world=mini["world"], base=mini["base"],
                        steps=steps, extra=extra)


def test_fit_writes_a_complete_run_folder(mini, mini_fit):
    assert mini_fit.is_dir() and mini_fit.parent == mini["root"] / "checkpoints" / "mini"
    assert (mini_fit / "config.yaml").exists()
    assert (mini_fit / "checkpoints" / "last.ckpt").exists()
    metrics = json.loads((mini_fit / "metrics.json").read_text())
    assert "train/loss" in metrics["fit"] and "test" in metrics  # quickstart tests after fit
    assert any(k.startswith("test/") and k.endswith("pair_acc_diff") for k in metrics["test"])
    offline = list((mini_fit / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "one W&B offline run, inside the run folder"
    assert list(offline[0].glob("run-*.wandb"))
    assert not (mini["root"] / "wandb").exists() and not (mini["root"] / "config.yaml").exists()


def test_fit_exports_a_folder_transformers_loads(mini_fit):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    AutoProcessor.from_pretrained(mini_fit / "export")
    AutoModelForImageTextToText.from_pretrained(mini_fit / "export")


def test_the_tiny_base_is_recorded_as_a_run_of_its_own(mini, mini_fit):
    pretrain = json.loads((mini["base"] / "pretrain_run" / "metrics.json").read_text())["pretrain"]
    assert {"image/colour", "image/shape", "image/place", "image/check",
            "video/check"} <= set(pretrain["perception"])
    assert all(0 <= v <= 1 for v in pretrain["perception"].values())


def test_export_from_the_lightning_checkpoint_gives_the_fits_weights(mini_fit, tmp_path):
    ur("export", str(mini_fit), "--out", str(tmp_path / "exported"), cwd=tmp_path)
    a = load_file(mini_fit / "export" / "model.safetensors")
    b = load_file(tmp_path / "exported" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_judge_rank_prints_a_judgment_with_both_orders(mini, mini_fit, tmp_path):
    images = sorted((mini["world"] / "test").rglob("*.png"))[:2]
    ranked = json.loads(ur("judge", "rank", "--checkpoint", str(mini_fit / "export"),
                           "--task", "image_generation", "--prompt", "a red circle on the left",
                           str(images[0]), str(images[1]), "--mode", "fast", "--both-orders",
                           cwd=tmp_path).stdout)
    assert ranked["label"] in ("first", "second", "tie") and ranked["label_swapped"] is not None
    assert abs(sum(ranked["probs"].values()) - 1) < 1e-5


def test_judge_score_exits_3_exactly_when_the_answer_does_not_parse(mini, mini_fit, tmp_path):
    image = sorted((mini["world"] / "test").rglob("*.png"))[0]
    scored = ur("judge", "score", "--checkpoint", str(mini_fit / "export"),
                "--task", "image_understanding", "--prompt", "What colour is the shape?",
                "It is red.", "--media", str(image), "--scale", "0", "100", "--mode", "generate",
                cwd=tmp_path, check=False)
    assert scored.returncode in (0, 3), scored.stderr[-2000:]
    out = json.loads(scored.stdout)
    assert out["form"] == "pointwise" and (out["score"] is None) == (scored.returncode == 3)


def test_replaying_a_runs_config_starts_a_new_run(mini_fit, tmp_path):
    again = ur("validate", "--config", str(mini_fit / "config.yaml"), cwd=tmp_path)
    again_dir = Path(again.stdout.strip().splitlines()[-1])
    assert again_dir != mini_fit and "validate" in json.loads((again_dir / "metrics.json").read_text())



# Three ways a run is cut (epochs of 4 training batches of the mini world):
# - "epoch": 3 epochs of 2 batches, killed as step 5 starts; the last checkpoint was
#   written at the end of epoch 1 (step 4).
# - "mid_epoch": 2 epochs of 4 batches, validated (and checkpointed) every 2 batches,
#   killed as step 7 starts; the last checkpoint was written in the middle of epoch 1
#   (step 6), so the resumed run must skip the batches epoch 1 had already used.
# - "timed": 2 epochs of 4 batches, validated at epoch ends but checkpointed after every
#   batch by time (run.checkpoint_minutes: 0), killed as step 3 starts; the last
#   checkpoint was written as the batch before ended (step 3, in the middle of epoch 0).
# The judge trains LoRA adapters with dropout, so the resumed run must also draw the
# uninterrupted run's dropout masks.
# Each cut: the schedule, the step the run is killed at, the step of its last checkpoint.
CUTS = {"epoch": ("max_epochs: 3\n  limit_train_batches: 2\n  val_check_interval: null", 5, 4),
        "mid_epoch": ("max_epochs: 2\n  limit_train_batches: 4\n  val_check_interval: 2", 7, 6),
        "timed": ("max_epochs: 2\n  limit_train_batches: 4\n  val_check_interval: null", 3, 3)}
LORA = "  init_args:\n    finetune: lora\n    lora: {dropout: 0.5}\n"


# With a loader worker (the quickstart's one), the resumed run used to replay epoch 0's
# batches: Lightning creates the iterator before it sets the sampler's epoch, and workers
# are handed indices at once (ur.data.sampling.EpochLoader defers that, and skips what
# the epoch had used when resumed mid-epoch).
# The default suite resumes mid-epoch with a loader worker (the quickstart's setting,
# where the bug was; the resumed epoch follows a finished one, so a replay of epoch 0
# fails it too); at an epoch's end, without a worker, and from a checkpoint written by
# time, with -m slow.
@pytest.mark.parametrize("workers, cut", [
    pytest.param(1, "epoch", marks=pytest.mark.slow), (1, "mid_epoch"),
    pytest.param(0, "epoch", marks=pytest.mark.slow),
    pytest.param(0, "timed", marks=pytest.mark.slow)])
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, mini, workers, cut):
    env = killer_env(tmp_path)
    schedule, kill_step, ckpt_step = CUTS[cut]
    cfg = overlay(tmp_path, mini, steps=-1).read_text()
    cfg = cfg.replace("  val_check_interval: null\n", "").replace("  init_args:\n", LORA, 1)
    path = tmp_path / "resume.yaml"
    path.write_text(cfg.replace("max_steps: -1", "max_steps: -1\n  " + schedule))
    base = ["fit", "--config", str(QUICKSTART), "--config", str(path), "--run.test_after_fit",
            "false", "--model.init_args.judge.batch_size", "8", "--data.init_args.num_workers",
            str(workers), *(["--run.checkpoint_minutes", "0"] if cut == "timed" else [])]
    whole = ur(*base, "--run.name", "whole", cwd=tmp_path)
    whole_dir = Path(whole.stdout.strip().splitlines()[-1])
    killed = ur(*base, "--run.name", "cut", "--trainer.callbacks+=killer.KillAt",
                f"--trainer.callbacks.step={kill_step}", cwd=tmp_path, check=False, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cut_dirs = list((tmp_path / "checkpoints" / "cut").iterdir())
    assert len(cut_dirs) == 1 and (cut_dirs[0] / "checkpoints" / "last.ckpt").exists()
    assert not (cut_dirs[0] / "export").exists()
    ckpt = torch.load(cut_dirs[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == ckpt_step
    config = (cut_dirs[0] / "config.yaml").read_text()
    resumed = ur(*base, "--run.name", "cut", "--ckpt_path", "last", cwd=tmp_path)
    assert Path(resumed.stdout.strip().splitlines()[-1]) == cut_dirs[0]
    assert "dataloader is not resumable" not in resumed.stderr
    assert (cut_dirs[0] / "config.yaml").read_text() == config, "config.yaml is kept"
    assert len(list(cut_dirs[0].glob("config-*.yaml"))) == 1, "the resumed run's config beside it"
    offline = sorted((cut_dirs[0] / "wandb").glob("offline-run-*"))
    run_id = (cut_dirs[0] / "wandb_id").read_text().strip()
    assert len(offline) == 2 and all(p.name.endswith("-" + run_id) for p in offline), \
        "the resumed run continues the same W&B run"
    a = load_file(whole_dir / "export" / "model.safetensors")
    b = load_file(cut_dirs[0] / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    # and training really moved the weights away from the base
    base_w = load_file(mini["base"] / "model.safetensors")
    assert any((a[k] != base_w[k]).any() for k in a if k in base_w)


DDP = ("--trainer.strategy", "ddp", "--trainer.devices", "2")


def test_ddp_fit_makes_one_run_folder(mini, tmp_path):
    """Two CPU processes (gloo): one run folder, one W&B run, one metrics.json with the
    test metrics, and no hang in the metrics' sync where a rank saw no record of a task.
    Training batches carry describe views and malformed records, and the test judges
    image generation by describing first, so these run under DDP too."""
    run = ur("fit", "--config", str(QUICKSTART), "--config", str(overlay(tmp_path, mini)),
             "--run.name", "ddp",
             "--data.init_args.num_workers", "0", "--data.init_args.describe_views", "2",
             "--data.init_args.malformed_views", "1",
             "--model.init_args.judge.describe_first", "[image_generation]",
             *DDP, cwd=tmp_path, timeout=600)
    run_dirs = list((tmp_path / "checkpoints" / "ddp").iterdir())
    assert run_dirs == [Path(run.stdout.strip().splitlines()[-1])]
    assert len(list((run_dirs[0] / "wandb").glob("offline-run-*"))) == 1
    metrics = json.loads((run_dirs[0] / "metrics.json").read_text())
    assert metrics["fit"] and any(k.endswith("pair_acc_diff") for k in metrics["test"])


def test_ddp_test_gives_the_single_process_metrics(mini_fit, tmp_path):
    """Every test record is judged once whether one process or two share the split (the
    distributed sampler pads a rank's share by repeating records)."""
    common = ("test", "--config", str(mini_fit / "config.yaml"), "--ckpt_path",
              str(mini_fit / "checkpoints" / "last.ckpt"), "--trainer.limit_test_batches", "1.0",
              "--data.init_args.max_test_records", "3", "--data.init_args.num_workers", "0",
              "--model.init_args.judge.pair_from", "both")  # the quickstart's decision
    one = ur(*common, "--run.name", "one", cwd=tmp_path)
    two = ur(*common, "--run.name", "two", *DDP, cwd=tmp_path, timeout=600)
    single, ddp = (json.loads((Path(r.stdout.strip().splitlines()[-1]) / "metrics.json")
                              .read_text())["test"] for r in (one, two))
    counts = {k: v for k, v in single.items() if k.endswith("_count")}
    assert counts and sum(counts.values()) >= 8  # one record of each source or more
    assert ddp.keys() == single.keys()
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, abs=1e-6), key
