"""`ur fit|validate|test` end to end on a miniature of the quickstart, and resume after SIGKILL."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from minirun import mini_overlay
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"



def ur(*args, cwd, check=True, env=None):
    run = subprocess.run([sys.executable, "-m", "ur.cli", *args], cwd=cwd, capture_output=True,
                         text=True, env={**os.environ, **(env or {})})
    if check and run.returncode != 0:
        raise AssertionError(f"ur {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    return run


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One world and one tiny base for every test here (built by the first run)."""
    root = tmp_path_factory.mktemp("shared")
    return {"world": root / "world", "base": root / "base"}


def overlay(tmp_path, shared, steps=4, extra=""):
    return mini_overlay(tmp_path / "mini.yaml", world=shared["world"], base=shared["base"],
                        steps=steps, extra=extra)


def test_fit_writes_a_complete_run_folder(tmp_path, shared):
    run = ur("fit", "--config", str(QUICKSTART), "--config", str(overlay(tmp_path, shared)),
             "--run.name", "mini", cwd=tmp_path)
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    assert run_dir.is_dir() and run_dir.parent == tmp_path / "checkpoints" / "mini"
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "train/loss" in metrics["fit"] and "test" in metrics  # quickstart tests after fit
    assert any(k.startswith("test/") and k.endswith("pair_acc_diff") for k in metrics["test"])
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline, "the W&B offline run must live inside the run folder"
    assert list(offline[0].glob("run-*.wandb"))
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "config.yaml").exists()
    export = run_dir / "export"
    from transformers import AutoModelForImageTextToText, AutoProcessor

    AutoProcessor.from_pretrained(export)
    AutoModelForImageTextToText.from_pretrained(export)
    # the tiny base was recorded as a run of its own
    pretrain = json.loads((shared["base"] / "pretrain_run" / "metrics.json").read_text())["pretrain"]
    assert {"image/colour", "image/shape", "image/place", "image/check",
            "video/check"} <= set(pretrain["perception"])
    assert all(0 <= v <= 1 for v in pretrain["perception"].values())
    # `ur export` from the Lightning checkpoint gives the same weights as the fit's export
    ur("export", str(run_dir), "--out", str(tmp_path / "exported"), cwd=tmp_path)
    a, b = load_file(export / "model.safetensors"), load_file(tmp_path / "exported" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # one-off judgments from the exported judge, as JSON
    world_test = shared["world"] / "test"
    images = sorted(world_test.rglob("*.png"))[:2]
    ranked = json.loads(ur("judge", "rank", "--checkpoint", str(export), "--task", "image_generation",
                           "--prompt", "a red circle on the left", str(images[0]), str(images[1]),
                           "--mode", "fast", "--both-orders", cwd=tmp_path).stdout)
    assert ranked["label"] in ("first", "second", "tie") and ranked["label_swapped"] is not None
    assert abs(sum(ranked["probs"].values()) - 1) < 1e-5
    scored = ur("judge", "score", "--checkpoint", str(export), "--task", "image_understanding",
                "--prompt", "What colour is the shape?", "It is red.", "--media", str(images[0]),
                "--scale", "0", "100", "--mode", "generate", cwd=tmp_path, check=False)
    assert scored.returncode in (0, 3)  # 3: the (barely trained) judge's answer did not parse
    out = json.loads(scored.stdout)
    assert out["form"] == "pointwise" and (out["score"] is None) == (scored.returncode == 3)
    # a second run of the same experiment gets its own folder
    again = ur("validate", "--config", str(run_dir / "config.yaml"), cwd=tmp_path)
    again_dir = Path(again.stdout.strip().splitlines()[-1])
    assert again_dir != run_dir and "validate" in json.loads((again_dir / "metrics.json").read_text())


KILLER = """
import os, signal
from lightning.pytorch.callbacks import Callback

class KillAt(Callback):
    \"\"\"SIGKILL the run as the given optimizer step starts.\"\"\"

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
"""

# Two ways a run is cut (epochs of 4 training batches of the mini world):
# - "epoch": 3 epochs of 2 batches, killed as step 5 starts; the last checkpoint was
#   written at the end of epoch 1 (step 4).
# - "mid_epoch": 2 epochs of 4 batches, validated (and checkpointed) every 2 batches,
#   killed as step 7 starts; the last checkpoint was written in the middle of epoch 1
#   (step 6), so the resumed run must skip the batches epoch 1 had already used.
CUTS = {"epoch": ("max_epochs: 3\n  limit_train_batches: 2\n  val_check_interval: null", 5),
        "mid_epoch": ("max_epochs: 2\n  limit_train_batches: 4\n  val_check_interval: 2", 7)}


# With a loader worker (the quickstart's one), the resumed run used to replay epoch 0's
# batches: Lightning creates the iterator before it sets the sampler's epoch, and workers
# are handed indices at once (ur.data.datamodule.EpochLoader defers that, and skips what
# the epoch had used when resumed mid-epoch).
@pytest.mark.parametrize("workers, cut", [(0, "epoch"), (1, "epoch"), (1, "mid_epoch")])
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, shared, workers, cut):
    (tmp_path / "killer.py").write_text(textwrap.dedent(KILLER))
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    schedule, kill_step = CUTS[cut]
    cfg = overlay(tmp_path, shared, steps=-1).read_text()
    cfg = cfg.replace("  val_check_interval: null\n", "")
    path = tmp_path / "resume.yaml"
    path.write_text(cfg.replace("max_steps: -1", "max_steps: -1\n  " + schedule))
    base = ["fit", "--config", str(QUICKSTART), "--config", str(path), "--run.test_after_fit",
            "false", "--model.init_args.judge.batch_size", "8", "--data.init_args.num_workers",
            str(workers)]
    whole = ur(*base, "--run.name", "whole", cwd=tmp_path)
    whole_dir = Path(whole.stdout.strip().splitlines()[-1])
    killed = ur(*base, "--run.name", "cut", "--trainer.callbacks+=killer.KillAt",
                f"--trainer.callbacks.step={kill_step}", cwd=tmp_path, check=False, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cut_dirs = list((tmp_path / "checkpoints" / "cut").iterdir())
    assert len(cut_dirs) == 1 and (cut_dirs[0] / "checkpoints" / "last.ckpt").exists()
    assert not (cut_dirs[0] / "export").exists()
    ckpt = torch.load(cut_dirs[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == kill_step - 1
    resumed = ur(*base, "--run.name", "cut", "--ckpt_path", "last", cwd=tmp_path)
    assert Path(resumed.stdout.strip().splitlines()[-1]) == cut_dirs[0]
    assert "dataloader is not resumable" not in resumed.stderr
    a = load_file(whole_dir / "export" / "model.safetensors")
    b = load_file(cut_dirs[0] / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    # and training really moved the weights away from the base
    base_w = load_file(shared["base"] / "model.safetensors")
    assert any((a[k] != base_w[k]).any() for k in a if k in base_w)
