"""Samplers and the training loader shared by every DataModule of ur.

- :class:`MixtureSampler`: each epoch, ``round(weight * n)`` items of each source,
  shuffled with ``seed + epoch``, optionally grouped by length to cut padding.
- :class:`TextViewBatches`: batches of a sampler's items, each followed by text views.
- :class:`EpochLoader`: the training DataLoader; it starts drawing at its first batch
  (after Lightning sets the epoch) and resumes in the middle of an epoch from the
  state Lightning keeps in checkpoints.

Nothing here reorders what an item holds: a preference DataModule randomises the order
of a pair's candidates itself, and a DPO pairs DataModule keeps chosen and rejected
as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import BatchSampler, DataLoader, Sampler


class MixtureSampler(Sampler[int]):
    """Per-epoch draw of ``round(weight * n)`` indices from each source, then a shuffle.

    With ``sizes`` for the items (any sortable key; see :func:`size_key`) and a
    ``batch_size``, each run of ``group`` batches of the shuffled draw is sorted by size
    before it is cut into batches, and the batches are shuffled: batches hold items of
    similar length, so less of each is padding (:func:`ur.data.collate.size_key` sorts by
    the prompt, never the target). Measured in benchmarks/length_grouping.py.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int = 0,
                 shuffle: bool = True, *, item_sizes: Sequence | None = None,
                 batch_size: int = 1, group: int = 0):
        self.offsets = np.cumsum([0, *sizes[:-1]])
        self.sizes, self.weights = list(sizes), list(weights)
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        if item_sizes is not None and len(item_sizes) != sum(self.sizes):
            raise ValueError(f"item_sizes has {len(item_sizes)} entries for "
                             f"{sum(self.sizes)} items")
        self.item_sizes, self.batch_size, self.group = item_sizes, batch_size, group

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = []
        for off, n, w in zip(self.offsets, self.sizes, self.weights, strict=True):
            count = int(round(w * n))
            if n == 0 or count == 0:
                continue
            reps = -(-count // n)
            idx = np.concatenate([rng.permutation(n) if self.shuffle else np.arange(n)
                                  for _ in range(reps)])[:count]
            parts.append(idx + off)
        out = np.concatenate(parts) if parts else np.zeros(0, dtype=int)
        if not self.shuffle:
            return out
        out = rng.permutation(out)
        if self.item_sizes is None or self.group < 1:
            return out
        return self._grouped(out, rng)

    def _grouped(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        run = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), run):
            chunk = sorted(order[start:start + run].tolist(), key=self.item_sizes.__getitem__)
            batches += [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        # The last batch may be short: keep it last so a DataLoader batches the same items.
        head, tail = (batches[:-1], batches[-1:]) if len(batches[-1]) < self.batch_size else (
            batches, [])
        head = [head[i] for i in rng.permutation(len(head))]
        return np.array([i for b in head + tail for i in b], dtype=int)

    def __iter__(self):
        idx = self._indices()
        self.epoch += 1  # a new draw next time even when nobody calls set_epoch
        return iter(idx.tolist())

    def __len__(self):
        return sum(int(round(w * n)) for n, w in zip(self.sizes, self.weights, strict=True))


class TextViewBatches(BatchSampler):
    """A sampler's indices cut into batches of ``batch_size``, each followed by ``count``
    views (dataset indices ``first_view + k`` for ``k < views``), drawn without
    replacement within a batch (with replacement only when ``count`` exceeds ``views``),
    seeded by ``seed``, the sampler's epoch and (under DDP) the rank. ``more`` adds other
    kinds of views the same way, each a ``(first_view, views, count)``, drawn after.

    A ``BatchSampler`` whose ``sampler`` argument Lightning can replace: under DDP it is
    rebuilt around a distributed sampler that hands each rank its share of the records,
    and each rank adds its own views."""

    def __init__(self, sampler: Sampler[int], batch_size: int, *, first_view: int,
                 views: int, count: int, seed: int = 0,
                 more: Sequence[tuple[int, int, int]] = ()):
        super().__init__(sampler, batch_size, drop_last=False)
        # (stream, first, views, count): a kind's stream is its place in the list given,
        # so adding a kind leaves the others' draws as they were.
        self.groups = [(k, *g) for k, g in enumerate([(first_view, views, count), *more])
                       if g[2] > 0]
        if any(n < 1 for _, _, n, _ in self.groups):
            raise ValueError("views need at least one record to view")
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        rank = getattr(self.sampler, "rank", 0)
        rngs = [np.random.default_rng([self.seed, self.sampler.epoch, 1 if k == 0 else 100 + k,
                                       *([rank] if rank else [])])
                for k, *_ in self.groups]
        order = list(self.sampler)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for rng, (_, first, views, count) in zip(rngs, self.groups, strict=True):
                drawn = rng.choice(views, count, replace=count > views)
                batch += [first + int(k) for k in drawn]
            yield batch

    def __len__(self):
        return -(-len(self.sampler) // self.batch_size)


class EpochLoader(DataLoader):
    """The training DataLoader: it starts drawing at its first batch, and it resumes in
    the middle of an epoch.

    - Lightning creates the training iterator before it sets the sampler's epoch (once
      per process, in ``FitLoop.setup_data``), and a loader with workers hands them
      their first batches of indices the moment its iterator is created: a run resumed
      at epoch N drew epoch 0's order. This loader's iterator starts at its first
      ``next``, once the epoch is set.
    - Its state (``state_dict``, which Lightning keeps in checkpoints) is the sampler's
      epoch and the batches handed out in it. Restored, it skips that many batches of
      indices (no data is read for them) when that epoch starts again, so a run resumed
      from a checkpoint written mid-epoch sees the rest of the epoch, as an
      uninterrupted run does. Resumed at another epoch (from the end of one), it skips
      nothing.

    The epoch is read from the sampler Lightning sets it on (``epoch``); a sampler
    without one counts as epoch None.
    """

    _epoch: int | None = None
    _taken = 0  # batches handed out in the current epoch
    _skip = 0  # batches of indices the next pass of the index sampler leaves out
    _restored: dict | None = None

    def __iter__(self):
        return _Deferred(self)

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": self._taken}

    def load_state_dict(self, state: dict) -> None:
        self._restored = dict(state)

    def _start(self):
        epoch = _sampler_epoch(self)
        restored, self._restored = self._restored, None
        skip = restored["batches"] if restored and restored.get("epoch") == epoch else 0
        self._epoch, self._taken, self._skip = epoch, skip, skip
        return super().__iter__()

    @property
    def _index_sampler(self):
        # What torch's iterators draw batches of indices from; a persistent worker
        # iterator keeps it, so the skip is looked up on every pass.
        return _Skipping(self, super()._index_sampler)


class _Deferred:
    def __init__(self, loader: EpochLoader):
        self._loader, self._it = loader, None

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._loader._start()
        batch = next(self._it)
        self._loader._taken += 1
        return batch


class _Skipping:
    """An index sampler that leaves out the first ``loader._skip`` batches of its next
    pass (drawn, so seeded draws after them stay the same). Lazy, like a generator:
    torch's iterators call ``iter`` twice and use the second."""

    def __init__(self, loader: EpochLoader, sampler):
        self.loader, self.sampler = loader, sampler

    def __iter__(self):
        skip, self.loader._skip = self.loader._skip, 0
        it = iter(self.sampler)
        for _ in range(skip):
            next(it, None)
        yield from it

    def __len__(self):
        return len(self.sampler)


def _sampler_epoch(loader: DataLoader) -> int | None:
    for obj in (getattr(loader.batch_sampler, "sampler", None), loader.batch_sampler,
                loader.sampler):
        epoch = getattr(obj, "epoch", None)
        if isinstance(epoch, int):
            return epoch
    return None


class ResumableTrainLoader:
    """For a DataModule whose training loader is an :class:`EpochLoader`: the loader's
    place in its epoch is kept in checkpoints through the DataModule's own state.

    Lightning also keeps it as the loader's state, but restores that only when it
    creates the loader after reading the checkpoint, and a fit with ``max_epochs``
    creates it before (to count the steps for the schedule); a DataModule's state is
    read before either. (Where Lightning rebuilds the loader with a distributed sampler,
    the rebuilt one starts without it, and only Lightning's own restore applies.) A
    DataModule's ``train_dataloader`` returns ``self.resumed(loader)``."""

    _train_state: dict | None = None

    def resumed(self, loader: EpochLoader) -> EpochLoader:
        """``loader``, at the place a restored checkpoint left it (once)."""
        if self._train_state is not None:
            loader.load_state_dict(self._train_state)
            self._train_state = None
        return loader

    def state_dict(self) -> dict:
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        return {"train_loader": loader.state_dict()} if isinstance(loader, EpochLoader) else {}

    def load_state_dict(self, state: dict) -> None:
        self._train_state = state.get("train_loader")
