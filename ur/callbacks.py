"""Callbacks ``ur`` adds to every run: progress lines, checkpoints by time as well as
at validation, and per-step seeds that make a resumed run draw what an uninterrupted
one draws."""

from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


class ProgressLines(Callback):
    """Plain progress lines for logs without a terminal (cluster jobs, ``ur sweep``, CI),
    where Lightning's progress bar stays silent: one line every ``every`` optimizer steps
    with the logged loss, the speed and the time left, plus one per validation."""

    def __init__(self, every: int = 50, stream=None):
        self.every = every
        self.stream = stream or sys.stderr
        self._start = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._start_step = time.time(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every or step == self._start_step:
            return
        elapsed = time.time() - self._start
        rate = (step - self._start_step) / elapsed
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        left = f", {(total - step) / rate / 60:.1f} min left" if total else ""
        loss = trainer.callback_metrics.get("train/loss")
        loss = f" loss {float(loss):.4f}" if loss is not None else ""
        self._print(f"step {step}{'/' + str(total) if total else ''}{loss} "
                    f"({rate:.2f} steps/s{left})")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.endswith("_mean") and k.startswith(("val/", "test/"))}
        shown = " ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items()))
        self._print(f"validation at step {trainer.global_step}: {shown or 'done'}")


class PeriodicModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (at validation and epoch ends, as configured) that
    also saves every ``every_minutes`` of training, so a killed run loses minutes, not
    the run.

    Lightning's own ``train_time_interval`` cannot be combined with saving at
    validation, and two checkpoint callbacks writing ``last.ckpt`` into one folder
    number it ``last-v1.ckpt``; this one saves both ways into one ``last.ckpt``. A save
    between two batches resumes mid-epoch like one written at validation."""

    def __init__(self, *args, every_minutes: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if every_minutes is not None and every_minutes < 0:
            raise ValueError(f"every_minutes must be >= 0, got {every_minutes}")
        self.every_minutes = every_minutes
        self._saved_at = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._saved_at = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.every_minutes is None:
            return
        due = time.monotonic() - self._saved_at >= self.every_minutes * 60
        # Rank 0's clock decides, so every rank joins the same save.
        if trainer.strategy.broadcast(due) and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
            self._saved_at = time.monotonic()


class StepSeeds(Callback):
    """Seeds torch, numpy and Python's ``random`` before every training batch from the
    run's seed, the optimizer step, the batch index and the rank.

    A run resumed from a checkpoint then draws what the uninterrupted run drew (dropout
    masks, LoRA dropout, sampling in a training step) whatever happened in between:
    restoring the generators' saved states alone is not enough, because a resumed run
    starts a fresh loader iterator where the uninterrupted one kept its own, and each
    new iterator draws from the global generator. The seed is kept in the checkpoint,
    so a resumed run continues the stream it started with. ``seed``: None takes the
    run's ``seed_everything``."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        entropy = [self.seed, trainer.global_step, batch_idx, trainer.global_rank]
        words = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
        seed = int(words[0]) << 32 | int(words[1])
        torch.manual_seed(seed)
        np.random.seed(int(words[0]))
        random.seed(seed)

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seed = state_dict.get("seed", self.seed)
