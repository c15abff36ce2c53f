"""Run folders: where one `ur fit|validate|test|predict` keeps everything it writes.

Layout of ``<root>/<name>/<run id>/``::

    config.yaml           the resolved config (the exact run, replayable with --config)
    checkpoints/          Lightning checkpoints (last.ckpt for --ckpt_path last)
    wandb/                the W&B run (offline unless WANDB_MODE says otherwise)
    metrics.json          final metrics per stage: {"fit": {...}, "test": {...}}
    export/               the Hugging Face folder of the trained model, when exported

``<run id>`` is a UTC timestamp with a short random suffix, so runs sort by start time
and two runs started in the same second do not collide.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path

from ur.io import write_json_atomic

WANDB_ENV_DIRS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")


def new_run_dir(root: str | Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path(root) / name / f"{stamp}-{secrets.token_hex(2)}"


def latest_run_dir(root: str | Path, name: str, *, with_checkpoint: bool = True) -> Path | None:
    """The newest run folder of an experiment (that has a last.ckpt, by default)."""
    base = Path(root) / name
    if not base.is_dir():
        return None
    runs = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    for run in runs:
        if not with_checkpoint or (run / "checkpoints" / "last.ckpt").exists():
            return run
    return None


def point_wandb_at(run_dir: Path) -> None:
    """Keep every file W&B writes inside the run folder; offline unless the user chose."""
    os.environ.setdefault("WANDB_MODE", "offline")
    # WANDB_DIR is the root W&B puts its own "wandb/" folder in; the cache, config and
    # data folders go inside that folder (a ".wandb" next to it would make W&B switch to
    # the hidden name).
    os.environ["WANDB_DIR"] = str(run_dir.resolve())
    for var in WANDB_ENV_DIRS[1:]:
        sub = run_dir / "wandb" / f".{var[6:-4].lower()}"
        sub.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(sub.resolve())


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def record_metrics(run_dir: Path, stage: str, metrics: dict) -> dict:
    """Merge one stage's final metrics into ``metrics.json``; returns the whole file."""
    path = run_dir / "metrics.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[stage] = {k: _plain(v) for k, v in sorted(metrics.items())}
    write_json_atomic(path, data)
    return data
