"""Reference log-probabilities computed once and kept on disk.

DPO compares the policy with a fixed reference on every pair, every epoch. With the
reference's summed answer log-probabilities computed once per pair, a step runs one
model instead of two and no second copy of the weights stays in memory (TRL refuses
this for vision data; FACTS.md section 3).

The table lives in one file per reference: ``ref_logps-<fingerprint>.pt``, holding a
pair's :func:`ur.data.records.record_key` (source, id, prompt and both answers in their
order) with its chosen and rejected log-probabilities. The fingerprint covers the
reference's weight files and what shapes its inputs (frames per video, the length
cut, processor settings), so another reference or another input shaping gets a table
of its own. Pairs missing from a table are computed and added; processes that ask at
once (DDP ranks) compute them once, under a lock; the file is replaced atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ur.align.losses import sequence_logps
from ur.data.records import PreferenceRecord, record_key
from ur.io import exclusive, write_bytes_atomic
from ur.models.prefix import answer_logits


def reference_fingerprint(checkpoint: str | Path, shaping: dict) -> str:
    """A hex digest of the reference's weight files (or its hub id, when it is not a
    local folder) and of ``shaping``, the settings that shape its inputs."""
    h = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    path = Path(checkpoint)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        h.update(str(checkpoint).encode())
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:20]


def _read(path: Path) -> dict[int, tuple[float, float]]:
    if not path.exists():
        return {}
    table = torch.load(path, weights_only=True, map_location="cpu")
    return {int(k): (float(c), float(r)) for k, c, r in
            zip(table["keys"], table["chosen"], table["rejected"], strict=True)}


def _write(path: Path, table: dict[int, tuple[float, float]]) -> None:
    keys = sorted(table)
    buf = io.BytesIO()
    torch.save({"keys": torch.tensor(keys, dtype=torch.int64),
                "chosen": torch.tensor([table[k][0] for k in keys], dtype=torch.float64),
                "rejected": torch.tensor([table[k][1] for k in keys], dtype=torch.float64)}, buf)
    write_bytes_atomic(path, buf.getvalue())


@torch.no_grad()
def compute_reference_logps(model, collate: Callable[[list[PreferenceRecord]], dict],
                            pairs: Sequence[PreferenceRecord], batch_size: int = 8,
                            device: torch.device | str = "cpu") -> dict[int, tuple[float, float]]:
    """Summed chosen and rejected log-probabilities of ``pairs`` under ``model`` (in eval
    mode), keyed by :func:`record_key`; ``collate`` makes the DPO batches."""
    was_training = model.training
    model.eval()
    out = {}
    for start in range(0, len(pairs), batch_size):
        batch = collate(list(pairs[start:start + batch_size]))
        kept = list(batch.pop("records"))
        logps, _ = sequence_logps(*answer_logits(model, {k: v.to(device) for k, v in batch.items()}))
        n = len(kept)
        for i, pair in enumerate(kept):
            out[record_key(pair)] = (float(logps[i]), float(logps[n + i]))
    model.train(was_training)
    return out


def cached_reference_logps(path: Path, pairs: Sequence[PreferenceRecord],
                           compute: Callable[[list[PreferenceRecord]], dict]
                           ) -> dict[int, tuple[float, float]]:
    """The table at ``path``, with every pair of ``pairs`` in it: missing ones are
    computed by ``compute`` (called only when some are missing) and written back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path):
        table = _read(path)
        missing = [p for p in pairs if record_key(p) not in table]
        if missing:
            table.update(compute(missing))
            _write(path, table)
    return table
