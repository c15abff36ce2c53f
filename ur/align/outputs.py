"""A test run's per-item results on disk: every rank's rows, gathered, one file.

The DPO modules score each held-out item as they test (an answer to a question, a
sample of a caption and seed); the alignment loop pairs those scores with the base's,
item by item, for its intervals. Under DDP each rank holds its own items; rank 0 writes
them all, each once (a sampler that pads the last batch hands some items out twice).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from ur.io import write_text_atomic


def write_test_rows(trainer, rows: list[dict], name: str, key: Callable[[dict], object]
                    ) -> Path | None:
    """Every rank's ``rows`` to ``<run folder>/<name>`` (JSONL, in ``key`` order, one row
    per key), written by rank 0, atomically; the path, or None on other ranks or without
    rows. Every rank must call it (it gathers)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shards = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, rows)
        rows = [r for shard in shards for r in shard]
    if not rows or not trainer.is_global_zero:
        return None
    unique = {key(r): r for r in rows}
    return write_text_atomic(Path(trainer.default_root_dir) / name,
                             "".join(json.dumps(unique[k]) + "\n" for k in sorted(unique)))
