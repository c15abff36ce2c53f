"""Training step overhead: Lightning against a plain PyTorch loop, same model and batches.

Both arms train ``RewardSFTModule``'s model (full fine-tune, loaded from the same
checkpoint, so the weights at the start are identical) with the same AdamW on the same
fixed list of batches, pre-collated once with ``JudgeCollator`` from the synthetic
world's training records (so data loading is in neither measurement):

* Lightning: ``Trainer(max_steps=..., accelerator="cpu", logger=False,
  enable_checkpointing=False, enable_progress_bar=False)`` fitting the module on a
  DataLoader over the batch list (the module's ``training_step``, its ``self.log``, its
  AdamW and LR scheduler; the schedule is set flat so both arms use the same rate).
* plain (the peer): ``loss = model(**batch).loss; loss.backward(); opt.step();
  opt.zero_grad()``.

A step is the wall time from one batch's start to the next's (everything the loop does
per step). After ``--warmup`` steps, ``--steps`` are timed; the arms alternate over
``--repeats`` rounds, each from freshly loaded weights, and each step index (the same
batch every round) counts its best time over the rounds, so bursts of load from other
processes drop out. Reported: median and mean ms/step per arm over those best times,
their ratios (and the medians over every timed step of every round, ``pooled_*``),
and the largest difference between the arms' per-step losses (0 up to float noise
when both did the same optimisation).

Under load the model's own compute varies by more than the framework costs, so each arm
also times its compute (forward, backward, AdamW update) inside every step; the rest,
``*_own_ms_per_step`` (median), is what the loop itself costs (Lightning: hooks, the
closure, ``self.log``, the scheduler, zero_grad, fetching the batch).
``lightning_over_plain_from_own_time`` = 1 + (Lightning own - plain own) / plain step:
the ratio with the compute noise taken out.

    python benchmarks/step_overhead.py [--steps 30] [--warmup 5] [--batch-size 8]
        [--repeats 3] [--checkpoint PATH] [--threads 2]

Prints a JSON object with every figure and the ratios as its last line
(goal: ``lightning_over_plain`` <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

LR = 1e-3


def make_batches(world: Path, size: int, processor, batch_size: int, count: int) -> list[dict]:
    """``count`` batches cycling over the distinct ones the world's train split gives,
    tasks and forms mixed; each is collated once."""
    import random

    from ur.data.collate import JudgeCollator
    from ur.data.datamodule import WorldSpec, load_records

    spec = WorldSpec(out=str(world), size=size)
    records = [r for recs in load_records(spec.sources("train"))[0] for r in recs]
    random.Random(0).shuffle(records)
    collate = JudgeCollator(processor, num_frames=4, with_targets=True)
    distinct = [collate(records[i:i + batch_size])
                for i in range(0, len(records) - batch_size + 1, batch_size)][:count]
    return [distinct[i % len(distinct)] for i in range(count)]


def new_module(checkpoint: Path):
    from ur.reward.sft import RewardSFTModule
    from ur.training import OptimizerSpec

    # warmup_ratio 0 and min_lr_ratio 1: the schedule is flat at LR, as in the plain arm.
    return RewardSFTModule(checkpoint=str(checkpoint), finetune="full", export=False,
                           optimizer=OptimizerSpec(lr=LR, warmup_ratio=0.0, min_lr_ratio=1.0))


def run_plain(checkpoint: Path, batches: list[dict]) -> tuple[list[float], list[float],
                                                                list[float]]:
    """Batch start times, model compute seconds (forward, backward, AdamW update) per step,
    and losses of a plain PyTorch loop."""
    module = new_module(checkpoint)
    model = module.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR,
                            betas=tuple(module.optim.betas),
                            weight_decay=module.optim.weight_decay)
    starts, compute, losses = [], [], []
    for batch in batches:
        t0 = time.perf_counter()
        starts.append(t0)
        loss = model(**{k: v for k, v in batch.items() if k != "records"}).loss
        loss.backward()
        opt.step()
        compute.append(time.perf_counter() - t0)
        opt.zero_grad()
        losses.append(loss.item())
    starts.append(time.perf_counter())
    return starts, compute, losses


def run_lightning(checkpoint: Path, batches: list[dict]) -> tuple[list[float], list[float],
                                                                    list[float]]:
    """The same three lists for ``Trainer.fit`` on the same batches; compute is timed by
    wrapping the model's forward, between the backward hooks, and from
    ``on_before_optimizer_step`` to the optimizer's step post-hook."""
    import lightning as L

    now = time.perf_counter

    class Clock(L.Callback):
        def __init__(self):
            self.starts, self.compute, self.losses = [], [], []
            self.cur, self.mark = 0.0, 0.0

        def on_train_start(self, trainer, pl_module):
            for opt in trainer.optimizers:
                opt.register_step_post_hook(self._after_update)

        def _after_update(self, optimizer, args, kwargs):
            self.cur += now() - self.mark

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(now())
            self.cur = 0.0

        def on_before_backward(self, trainer, pl_module, loss):
            self.mark = now()

        def on_after_backward(self, trainer, pl_module):
            self.cur += now() - self.mark

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.mark = now()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.compute.append(self.cur)
            self.losses.append(float(outputs["loss"]))

        def on_train_end(self, trainer, pl_module):
            self.starts.append(now())

    module = new_module(checkpoint)
    clock = Clock()
    forward = module.model.forward

    def timed_forward(*args, **kwargs):
        t0 = now()
        out = forward(*args, **kwargs)
        clock.cur += now() - t0
        return out

    module.model.forward = timed_forward
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False,
                                         collate_fn=_identity)
    trainer = L.Trainer(max_steps=len(batches), accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[clock])
    trainer.fit(module, train_dataloaders=loader)
    return clock.starts, clock.compute, clock.losses


def _identity(batch):
    return batch


def step_ms(starts: list[float], warmup: int) -> list[float]:
    return [(b - a) * 1000 for a, b in zip(starts[warmup:], starts[warmup + 1:], strict=False)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per arm and round")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=8, help="records per batch")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds; the arms alternate (plain, lightning, lightning, plain, ...)")
    ap.add_argument("--size", type=int, default=160, help="synthetic world records in all")
    ap.add_argument("--checkpoint", default=None,
                    help="model to train; default: a tiny one built in a temp dir")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*val_dataloader.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from ur.data.synthetic.writer import write_world
    from ur.data.templates import PromptTemplates
    from ur.models.loading import load_vlm, parameter_counts
    from ur.models.tiny import build_tiny_vlm
    from ur.pretrain.tiny_vlm import tokenizer_texts

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        world = tmp / "world"
        write_world(world, size=args.size, seed=0, difficulty=1)
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
        else:
            from ur.data.datamodule import WorldSpec, load_records

            spec = WorldSpec(out=str(world), size=args.size)
            records = [r for recs in load_records(spec.sources("train"))[0] for r in recs]
            checkpoint = build_tiny_vlm(tmp / "tiny",
                                        texts=tokenizer_texts(records, PromptTemplates()))
        model, processor = load_vlm(str(checkpoint))
        params = parameter_counts(model)
        del model
        total = args.warmup + args.steps
        batches = make_batches(world, args.size, processor, args.batch_size, total)
        tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)

        times = {"plain": [], "lightning": []}
        own = {"plain": [], "lightning": []}
        losses = {"plain": [], "lightning": []}
        load = round(os.getloadavg()[0], 2)
        for k in range(args.repeats):
            order = ("plain", "lightning") if k % 2 == 0 else ("lightning", "plain")
            for arm in order:
                run = run_plain if arm == "plain" else run_lightning
                starts, compute, arm_losses = run(checkpoint, batches)
                steps = step_ms(starts, args.warmup)
                times[arm].append(steps)
                own[arm] += [t - c * 1000 for t, c in zip(steps, compute[args.warmup:],
                                                          strict=True)]
                losses[arm].append(arm_losses)
    gap = max(abs(a - b) for lp, ll in zip(losses["plain"], losses["lightning"], strict=True)
              for a, b in zip(lp, ll, strict=True))
    # Each step index sees the same batch in every round: its best time over the rounds
    # drops the steps a burst of load from other processes hit.
    best = {arm: [min(col) for col in zip(*rounds, strict=True)] for arm, rounds in times.items()}
    pooled = {arm: [t for r in rounds for t in r] for arm, rounds in times.items()}
    med = {arm: statistics.median(v) for arm, v in best.items()}
    mean = {arm: statistics.mean(v) for arm, v in best.items()}
    pooled_med = {arm: statistics.median(v) for arm, v in pooled.items()}
    own_med = {arm: statistics.median(v) for arm, v in own.items()}
    return {
        "checkpoint": str(args.checkpoint or "tiny untrained (temp)"),
        "parameters": params, "batch_size": args.batch_size,
        "mean_tokens_per_batch": round(tokens, 1), "distinct_batches": len({id(b) for b in batches}),
        "steps_timed_per_arm_and_round": args.steps, "warmup": args.warmup,
        "repeats": args.repeats, "threads": args.threads,
        "plain_ms_per_step_median": round(med["plain"], 2),
        "lightning_ms_per_step_median": round(med["lightning"], 2),
        "plain_ms_per_step_mean": round(mean["plain"], 2),
        "lightning_ms_per_step_mean": round(mean["lightning"], 2),
        "lightning_minus_plain_ms_median": round(med["lightning"] - med["plain"], 2),
        "lightning_over_plain": round(med["lightning"] / med["plain"], 3),
        "lightning_over_plain_mean": round(mean["lightning"] / mean["plain"], 3),
        "pooled_plain_ms_per_step_median": round(pooled_med["plain"], 2),
        "pooled_lightning_ms_per_step_median": round(pooled_med["lightning"], 2),
        "pooled_lightning_over_plain": round(pooled_med["lightning"] / pooled_med["plain"], 3),
        "plain_own_ms_per_step": round(own_med["plain"], 2),
        "lightning_own_ms_per_step": round(own_med["lightning"], 2),
        "lightning_over_plain_from_own_time": round(
            1 + (own_med["lightning"] - own_med["plain"]) / med["plain"], 3),
        "first_loss_plain_lightning": [round(losses["plain"][0][0], 5),
                                       round(losses["lightning"][0][0], 5)],
        "max_loss_gap": float(f"{gap:.3g}"),
        "loadavg_1m_start_end": [load, round(os.getloadavg()[0], 2)],
    }


if __name__ == "__main__":
    result = main()
    print(json.dumps(result), flush=True)
    sys.exit(0)
