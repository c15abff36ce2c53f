"""A miniature of the quickstart for end-to-end tests: a few steps on a 48-record world
with a tiny base pretrained for 2 steps (answer checks on, in the base and the targets,
so the optional path runs end to end). Pairs are decided by the verdict alone, which
keeps the many runs short; the quickstart's decision from verdict and points runs end
to end in the DDP test of tests/test_fit_cli.py. Overlay it on
experiments/quickstart.yaml.
Also :func:`run_ur`, the ``ur`` command in a subprocess, as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"

MINI = """
trainer:
  max_steps: {steps}
  val_check_interval: null
  check_val_every_n_epoch: 1
  limit_val_batches: 1
  limit_test_batches: 1
  deterministic: true
pretrain:
  pretrain_steps: 2
  answer_checks: true
  batch_size: 8
  world: {{out: {world}, size: 48, seed: 0, difficulty: 1, splits: [0.8, 0.1, 0.1]}}
model:
  init_args:
    checkpoint: {base}
    judge: {{batch_size: 8, max_new_tokens: 24, pair_from: verdict}}
data:
  init_args:
    world: {{out: {world}, size: 48, seed: 0, difficulty: 1, splits: [0.8, 0.1, 0.1]}}
    batch_size: 8
    max_val_records: 2
    max_test_records: 2
    templates: {{answer_checks: true}}
"""


def mini_overlay(path, *, world, base, steps=4, extra=""):
    """Write the miniature overlay to ``path`` and return it."""
    path.write_text(MINI.format(steps=steps, world=world, base=base) + extra)
    return path


def run_ur(*args, cwd, check=True, env=None, timeout=900) -> subprocess.CompletedProcess:
    """``ur ARGS...`` in ``cwd``; with ``check``, a failure shows its output's tail. A run
    that hangs (a distributed deadlock) fails after ``timeout`` seconds."""
    # A W&B service some test started in this process is never shared with a run: a
    # resumed run would find its killed run's id still held there.
    base = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    run = subprocess.run([sys.executable, "-m", "ur.cli", *args], cwd=cwd, capture_output=True,
                         text=True, env={**base, **(env or {})}, timeout=timeout)
    if check and run.returncode != 0:
        raise AssertionError(f"ur {' '.join(args)} failed:\n{run.stdout[-3000:]}\n"
                             f"{run.stderr[-5000:]}")
    return run


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


class KillAtPredict(Callback):
    \"\"\"SIGKILL the run as the given predict batch starts.\"\"\"

    def __init__(self, batch: int):
        self.batch = batch

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def killer_env(folder) -> dict:
    """Write ``killer.py`` (callbacks ``killer.KillAt(step)`` and
    ``killer.KillAtPredict(batch)`` that SIGKILL their run as that training step or
    predict batch starts) into ``folder``; the environment that lets ``ur`` import it."""
    (Path(folder) / "killer.py").write_text(KILLER)
    return {"PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
