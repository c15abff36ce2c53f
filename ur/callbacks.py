"""Callbacks ``ur`` adds to every run."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import Callback


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
