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


class UnusableData(RuntimeError):
    """Training met more unusable records than the data module's ``max_bad``, or an
    epoch none of whose batches held a usable record."""


class SkippedRecords(Callback):
    """Counts the records the collators dropped as unusable under ``skip_bad`` (a 0-byte
    image, an unreadable frame, a prompt with no room), from each batch's
    ``records.skipped``: the batch carries them because a DataLoader worker's collator
    is a copy whose counter the trainer never sees.

    Logs ``train/skipped_records`` (the fit's running total, restored on resume) and
    ``val/skipped_records`` (the last validation's), summed over ranks, so both reach
    W&B and ``metrics.json``. Stops the fit when these, with the records the data module
    skipped at setup (its ``skipped`` per split), pass its ``max_bad``; and stops an
    epoch none of whose batches held a usable record, which would otherwise end as if it
    had trained (or, bounded by ``max_steps`` alone, never end). The modules that train
    on skippable data add it through ``configure_callbacks``."""

    def __init__(self):
        self.train_total = 0
        self._val, self._epoch = 0, [0, 0]  # local: skipped; (batches, usable batches)
        self._examples: list[str] = []

    def _note(self, batch) -> tuple[int, int]:
        records = batch.get("records") if isinstance(batch, dict) else None
        skipped = list(getattr(records, "skipped", ()))
        self._examples = (self._examples + skipped)[:5]
        return len(skipped), int(bool(records))

    def _summed(self, trainer, pl_module, *values) -> list[int]:
        local = torch.tensor(values, dtype=torch.long, device=pl_module.device)
        return [int(v) for v in trainer.strategy.reduce(local, reduce_op="sum")]

    def _check_cap(self, trainer, val: int) -> None:
        dm = trainer.datamodule
        if dm is None or not getattr(dm, "skip_bad", False):
            return
        at_setup = sum(getattr(dm, "skipped", {}).get(s, 0) for s in ("train", "val"))
        total = at_setup + self.train_total + val
        if total > dm.max_bad:
            raise UnusableData(
                f"{total} unusable record(s), over max_bad {dm.max_bad} ({at_setup} at "
                f"setup, {self.train_total} in training batches, {val} in the last "
                f"validation); for example:\n{self._described()}")

    def _described(self) -> str:
        return "\n".join(f"  {p}" for p in self._examples) or "  (seen on another rank)"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = [0, 0]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        skipped, usable = self._note(batch)
        self._epoch[0] += 1
        self._epoch[1] += usable
        self.train_total += self._summed(trainer, pl_module, skipped)[0]
        pl_module.log("train/skipped_records", float(self.train_total), on_step=True,
                      on_epoch=False, batch_size=1)
        self._check_cap(trainer, 0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        batches, usable = self._summed(trainer, pl_module, *self._epoch)
        if batches and not usable:
            raise UnusableData(
                f"no training batch of epoch {trainer.current_epoch} held a usable record: "
                f"all {batches} batch(es) were dropped as unusable (skip_bad); "
                f"for example:\n{self._described()}")

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val = 0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx,
                                  dataloader_idx=0) -> None:
        self._val += self._note(batch)[0]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        val = self._summed(trainer, pl_module, self._val)[0]
        pl_module.log("val/skipped_records", float(val), batch_size=1)
        self._check_cap(trainer, val)

    def state_dict(self) -> dict:
        return {"train_total": self.train_total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_total = state_dict.get("train_total", 0)
