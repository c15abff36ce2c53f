"""Run folders: where one `ur fit|validate|test|predict` keeps everything it writes.

Layout of ``<root>/<name>/<run id>/``::

    config.yaml           the resolved config (the exact run, replayable with --config);
                          secrets masked; kept when the run is resumed, which
                          saves its own as config-<UTC time>.yaml
    wandb_id              the W&B run's id, so a resumed run continues it
    checkpoints/          Lightning checkpoints (last.ckpt for --ckpt_path last)
    wandb/                the W&B run (offline unless WANDB_MODE says otherwise)
    metrics.json          final metrics per stage: {"fit": {...}, "test": {...}}
    export/               the Hugging Face folder of the trained model, when exported

``<run id>`` is a UTC timestamp with a short random suffix, so runs sort by start time
and two runs started in the same second do not collide.

A Lightning checkpoint is a pickle and carries the settings its module was made with.
Only local files are read (:func:`refuse_remote_checkpoint`), and a module rebuilt from
one (:func:`load_module`) takes its weights and plain settings from it, never remote
code, a download or a folder to write into: those come from the command line alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from pathlib import Path

from ur.io import write_json_atomic, write_text_atomic

_REMOTE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://|registry:)")

# Stored settings a rebuilt module never takes from its checkpoint: code shipped with
# the base, and folders the module writes to.
_NOT_FROM_CHECKPOINT = {"trust_remote_code": False, "reference_cache": None}

WANDB_ENV_DIRS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")


def new_run_dir(root: str | Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path(root) / name / f"{stamp}-{secrets.token_hex(2)}"


def latest_run_dir(root: str | Path, name: str) -> Path | None:
    """The newest run folder of an experiment, or None when it has none."""
    base = Path(root) / name
    runs = [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
    return max(runs, key=lambda p: p.name, default=None)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The run's ``checkpoints/last.ckpt`` when it is there and readable (not a link left
    dangling by a run killed between writing a checkpoint and relinking)."""
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def wandb_run_id(run_dir: Path) -> str:
    """The id of the run folder's W&B run: the one stored in ``wandb_id``, or a new one
    stored there (by rank 0, before it starts the other ranks), so every process that
    uses the folder, a resumed run included, logs to one W&B run."""
    path = run_dir / "wandb_id"
    if path.exists():
        return path.read_text().strip()
    # A letter first: an id of hex digits alone can read back from a config file as a
    # number ("7082e844" as inf, "12345678" as an int), which W&B's id refuses.
    run_id = "r" + secrets.token_hex(4)
    write_text_atomic(path, run_id + "\n")
    return run_id


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


def refuse_remote_checkpoint(path, command: str) -> None:
    """Stop when ``path`` is a URL (http, s3, a model registry): a checkpoint is
    unpickled, and Lightning reads remote ones with ``weights_only=False``."""
    if _REMOTE.match(str(path)):
        raise SystemExit(f"{command}: {path} is not a local file. A checkpoint is read from "
                         "this machine only (Lightning unpickles it); download it from a "
                         "source you trust and pass the file.")


def load_module(cls, ckpt: str | Path, command: str, base: str | None = None):
    """``cls`` (a LightningModule with a ``checkpoint`` base) rebuilt from a ``.ckpt`` file:
    read with ``weights_only=True``, ``trust_remote_code`` off and no folder to write
    into, from the base stored in the checkpoint only when that is a folder on this
    machine (a hub id stored in a file never downloads); ``base`` (from the command
    line) replaces it."""
    import pickle

    import torch

    refuse_remote_checkpoint(ckpt, command)
    try:
        stored = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise SystemExit(f"{command}: {ckpt} is not a checkpoint ur can read "
                         f"(weights and plain settings only): {e}") from None
    hparams = stored.get("hyper_parameters") if isinstance(stored, dict) else None
    if not isinstance(hparams, dict) or "checkpoint" not in hparams:
        raise SystemExit(f"{command}: {ckpt} holds no {cls.__name__} settings "
                         "(hyper_parameters with a checkpoint)")
    if base is None:
        base = str(hparams["checkpoint"])
        if not Path(base).is_dir():
            raise SystemExit(f"{command}: {ckpt} was trained from {base!r}, which is not a "
                             "folder here; a base named in a checkpoint is never downloaded. "
                             "Run from the folder the run started in, or name the base "
                             "(`ur export --base`).")
    overrides = {k: v for k, v in _NOT_FROM_CHECKPOINT.items() if k in hparams}
    module = cls(**{**hparams, **overrides, "checkpoint": base})
    module.on_load_checkpoint(stored)
    module.load_state_dict(stored["state_dict"])
    return module
