"""What every LightningModule of ur shares: typed options, the optimizer and its
schedule, LoRA settings, per-part learning rates, and hyperparameters that load safely.

Options are typed (``Literal`` choices, dataclass specs) so that LightningCLI's
``--help`` lists the choices and ``--print_config`` refuses a typo such as
``finetune: lroa`` before anything is built. Specs are stored in checkpoints as plain
dicts (:func:`plain`), so a checkpoint loads with ``torch.load(weights_only=True)``,
and turned back into specs with :func:`as_spec`.

This module imports no other part of ur: what decides which part of a model a
parameter belongs to is handed in (``part_of``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Literal, TypeVar

import torch

Finetune = Literal["full", "lora"]
"""``full``: the chosen parts train every weight; ``lora``: adapters on the chosen parts."""

Part = Literal["vision", "projector", "language"]


@dataclass
class OptimizerSpec:
    """AdamW with linear warmup, then cosine decay over the run's optimizer steps."""

    lr: float = 2.5e-6
    """Peak learning rate (UnifiedReward: 2.5e-6 for a 7B full fine-tune)."""
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    """Fraction of the optimizer steps spent warming up linearly from 0."""
    min_lr_ratio: float = 0.0
    """The cosine ends at lr * min_lr_ratio."""
    vision_lr: float | None = None
    """Peak learning rate of the vision tower and projector when it should differ from
    ``lr`` (a pretrained tower is often trained more gently than the language model;
    None: the same rate everywhere)."""

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"optimizer.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optimizer.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


@dataclass
class LoraSpec:
    """LoRA adapters (peft), used when ``finetune: lora``."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    """Module names (or suffixes) that get adapters, or ``all-linear``."""


def warmup_cosine(total_steps: int, warmup_ratio: float, min_lr_ratio: float = 0.0
                  ) -> Callable[[int], float]:
    """The learning-rate factor at each optimizer step: linear from 1/(warmup+1) to 1
    over ``warmup_ratio * total_steps`` steps, then a cosine down to ``min_lr_ratio``."""
    total = max(1, int(total_steps))
    warmup = int(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def parameter_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                     spec: OptimizerSpec, part_of: Callable[[str], str]) -> list[dict]:
    """Trainable parameters grouped by learning rate: the vision tower and projector
    at ``spec.vision_lr`` when it is set, everything else at ``spec.lr``."""
    vision, rest = [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        own_rate = spec.vision_lr is not None and part_of(name) in ("vision", "projector")
        (vision if own_rate else rest).append(p)
    groups = [{"params": rest, "lr": spec.lr}]
    if vision:
        groups.append({"params": vision, "lr": spec.vision_lr})
    return [g for g in groups if g["params"]]


def adamw_with_schedule(groups: list[dict], spec: OptimizerSpec, total_steps: int) -> dict:
    """AdamW over ``groups`` with :func:`warmup_cosine`, stepped every optimizer step, in
    the form ``LightningModule.configure_optimizers`` returns."""
    opt = torch.optim.AdamW(groups, lr=spec.lr, betas=tuple(spec.betas),
                            weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(total_steps, spec.warmup_ratio, spec.min_lr_ratio))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def plain(spec):
    """A spec as a plain dict (what a checkpoint stores); other values unchanged."""
    return asdict(spec) if is_dataclass(spec) and not isinstance(spec, type) else spec


Spec = TypeVar("Spec")


def as_spec(cls: type[Spec], value) -> Spec | None:
    """A spec from itself, a dict (a checkpoint's hyperparameters) or None. Unknown keys
    are an error that names them, not a silent drop."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a dict, got {type(value).__name__}")
