"""``PreferenceDataModule``: a task mixture of preference sources, as Lightning data.

Sources are listed per split (adapter name, path, optional split, weight, media root,
adapter options); a synthetic ``world`` can stand in for them (generated on first use
and read back through the same adapters, from its manifest). ``tasks`` and ``forms``
filter what is used: the knob the task-synergy ablations turn.

Mixing: each epoch a source contributes ``round(weight * n)`` of its ``n`` records
(a weight of 1 means each once; 0.5 a seeded half; 2 each twice), and the whole epoch
is shuffled with ``seed + epoch``. Pairwise records are put in a seeded random order
(swapped with probability 1/2, keyed by seed and record id) so sources that always
list the preferred candidate first (VideoDPO, ShareGPTVideo) do not teach position.
With ``text_views``, each training batch also carries that many understanding records
of the world shown as text (their evidence in the prompt, no media), drawn per batch
and padded apart from the batch's records (``batch["text_views"]``).

Bad input: strict by default (any unusable record stops setup with every problem
listed); ``skip_bad=True`` skips and counts them, up to ``max_bad``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from ur.data.collate import Conversation, JudgeCollator, TextView, size_key
from ur.data.records import FORMS, TASKS, PreferenceRecord, RecordError, is_generation
from ur.data.sources import read_source
from ur.data.templates import PromptTemplates

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class SourceSpec:
    """One preference source."""

    name: str
    """Adapter name, e.g. ``pickapic_v2`` (see ``ur corpus check --help``)."""
    path: str
    """A file, a folder, a ``save_to_disk`` folder, or a hub id."""
    split: str | None = None
    """Split within the source (a DatasetDict split, or a file-name filter)."""
    weight: float = 1.0
    """Records drawn per epoch, as a multiple of the source's size."""
    media_root: str | None = None
    """Folder media paths are resolved against (default: the data set's folder)."""
    options: dict = field(default_factory=dict)
    """Adapter-specific keywords (e.g. ``dimension: Overall``)."""


@dataclass
class WorldSpec:
    """The synthetic world, generated into ``out`` on first use (then reused)."""

    out: str = "data/world"
    size: int = 8000
    """Records in all (over the four tasks, both forms and the three splits)."""
    seed: int = 0
    difficulty: int = 1
    """0: gross errors only; 1: moderate; 2: subtle (see ur.data.synthetic.world)."""
    image_size: int = 84
    num_frames: int = 4

    def manifest(self) -> dict:
        from ur.data.synthetic.writer import write_world
        from ur.io import exclusive

        with exclusive(self.out):
            return write_world(self.out, size=self.size, seed=self.seed,
                               difficulty=self.difficulty, image_size=self.image_size,
                               num_frames=self.num_frames)

    def sources(self, split: str, *, benchmarks: bool = False) -> list[SourceSpec]:
        """A split's sources in their training schemas (and the benchmark-schema copies
        of the test split, on request)."""
        root = Path(self.out)
        return [SourceSpec(name=e["source"], path=str(root / e["path"]))
                for e in self.manifest()["entries"]
                if e["split"] == split and bool(e.get("benchmark")) == benchmarks]


class CorpusError(RuntimeError):
    """Setup found unusable records in strict mode (or more than ``max_bad``)."""

    def __init__(self, problems: list[RecordError], total: int | None = None, limit: int = 20):
        self.problems = problems
        lines = [f"  {p.describe()}" for p in problems[:limit]]
        more = len(problems) - limit
        if more > 0:
            lines.append(f"  ... and {more} more")
        head = (f"{len(problems)} unusable record(s)" if total is None else
                f"{len(problems)} unusable record(s), over the limit of {total}")
        super().__init__(head + ":\n" + "\n".join(lines) +
                         "\n(fix them, or set skip_bad: true to skip and count them)")


def load_records(specs: Sequence[SourceSpec], *, tasks=None, forms=None, skip_bad=False,
                 max_bad: int | None = None) -> tuple[list[list[PreferenceRecord]], list[RecordError]]:
    """Read every source; records per source (filtered), and the problems found."""
    per_source, problems = [], []
    for spec in specs:
        recs = []
        for item in read_source(spec.name, spec.path, split=spec.split,
                                media_root=spec.media_root, **spec.options):
            if isinstance(item, RecordError):
                problems.append(item)
                continue
            if (tasks is None or item.task in tasks) and (forms is None or item.form in forms):
                recs.append(item)
        per_source.append(recs)
    if problems and (not skip_bad or (max_bad is not None and len(problems) > max_bad)):
        raise CorpusError(problems, total=max_bad if skip_bad else None)
    return per_source, problems


def stable_coin(seed: int, key: str) -> bool:
    """A fair coin that depends only on (seed, key): the same on every worker and run."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return digest[0] & 1 == 1


def randomize_order(record: PreferenceRecord, seed: int) -> PreferenceRecord:
    if record.form != "pairwise" or record.instruction is not None:
        return record
    return record.swapped() if stable_coin(seed, f"{record.source}/{record.id}") else record


class RecordDataset(Dataset):
    """The records of a split; index ``len(records) + k`` is the text view of the
    ``k``-th of ``views`` (record indices), for :class:`TextViewBatches`."""

    def __init__(self, records: list[PreferenceRecord], views: Sequence[int] = ()):
        self.records, self.views = records, list(views)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if i < len(self.records):
            return self.records[i]
        return TextView(self.records[self.views[i - len(self.records)]])


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


class TextViewBatches(Sampler[list[int]]):
    """A sampler's indices cut into batches of ``batch_size``, each followed by ``count``
    text views (dataset indices ``first_view + k`` for ``k < views``), drawn without
    replacement within a batch (with replacement only when ``count`` exceeds ``views``),
    seeded by ``seed`` and the sampler's epoch. Single-process training only: it is not a
    ``BatchSampler`` a distributed sampler could replace."""

    def __init__(self, sampler: MixtureSampler, batch_size: int, *, first_view: int,
                 views: int, count: int, seed: int = 0):
        if views < 1:
            raise ValueError("text views need at least one record to view")
        self.sampler, self.batch_size = sampler, batch_size
        self.first_view, self.views, self.count, self.seed = first_view, views, count, seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.sampler.epoch, 1])
        order = list(self.sampler)
        for start in range(0, len(order), self.batch_size):
            drawn = rng.choice(self.views, self.count, replace=self.count > self.views)
            yield order[start:start + self.batch_size] + [self.first_view + int(k) for k in drawn]

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


class PreferenceDataModule(LightningDataModule):
    """Preference records from public sources or the synthetic world, as judge batches.

    Args:
        train: Sources for training.
        val: Sources for validation (metrics are computed on them).
        test: Sources for ``ur test``.
        world: Generate the synthetic world and use its splits for every split whose
            source list is empty.
        tasks: Only these tasks (default: all four).
        train_tasks: Train on these tasks only, while validation and test still cover
            ``tasks`` (task ablations: a single-task arm reports its transfer too).
        forms: Only these forms (default: pairwise and pointwise).
        processor: Path or hub id of the model whose processor prepares the inputs;
            linked from the model's checkpoint by ``ur fit``.
        templates: Prompt templates and the answer style.
        batch_size: Records per batch.
        eval_batch_size: Records per validation/test batch (default: batch_size).
        num_workers: DataLoader workers.
        num_frames: Frames sampled uniformly from each video.
        max_length: Cut training sequences to this many tokens (the target end only).
        max_eval_records: Cap on records per validation/test source (chosen with eval_seed).
        seed: Seed of training's mixing, shuffling and candidate order (``ur fit`` sets it
            to ``seed_everything`` when left empty).
        eval_seed: Seed of the validation/test subset and candidate order; fixed apart from
            ``seed`` so runs with different seeds are scored on the same records.
        skip_bad: Skip unusable records and count them instead of stopping.
        max_bad: With skip_bad, stop anyway past this many.
        length_grouping: Training batches are cut from runs of this many batches sorted
            by media and prompt length (less padding, see :class:`MixtureSampler`); 0
            shuffles freely.
        processor_kwargs: Extra keywords for the processor call (e.g. max_pixels).
        text_views: Add this many text views to every training batch: understanding
            records (pairs and single answers) of the training split shown without
            their media, their evidence written as text before the instruction, the
            same target (:class:`ur.data.collate.TextView`). They teach the comparison
            behind understanding verdicts cheaply; only records with evidence (the
            synthetic world's) can be viewed so. 0 (default) adds none, and so does a
            training split without understanding records (a generation-only arm).
            Views are padded to their own longest row under ``batch["text_views"]``;
            the module's loss covers both parts.
    """

    def __init__(
        self,
        train: list[SourceSpec] | None = None,
        val: list[SourceSpec] | None = None,
        test: list[SourceSpec] | None = None,
        world: WorldSpec | None = None,
        tasks: list[str] | None = None,
        train_tasks: list[str] | None = None,
        forms: list[str] | None = None,
        processor: str | None = None,
        templates: PromptTemplates | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_frames: int = 4,
        max_length: int | None = None,
        max_eval_records: int | None = None,
        seed: int | None = None,
        eval_seed: int = 0,
        skip_bad: bool = False,
        max_bad: int = 1000,
        processor_kwargs: dict | None = None,
        length_grouping: int = 8,
        text_views: int = 0,
    ):
        super().__init__()
        for name, values, allowed in (("tasks", tasks, TASKS), ("train_tasks", train_tasks, TASKS),
                                      ("forms", forms, FORMS)):
            unknown = set(values or ()) - set(allowed)
            if unknown:
                raise ValueError(f"unknown {name} {sorted(unknown)}; choose from {list(allowed)}")
        self.sources = {"train": list(train or []), "val": list(val or []),
                        "test": list(test or [])}
        self.world = world
        self.tasks, self.forms = (list(tasks) if tasks else None), (list(forms) if forms else None)
        self.train_tasks = list(train_tasks) if train_tasks else None
        if self.train_tasks and self.tasks and set(self.train_tasks) - set(self.tasks):
            raise ValueError(f"train_tasks {self.train_tasks} must be among tasks {self.tasks}")
        self.processor_path = processor
        self.templates = templates or PromptTemplates()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.num_frames, self.max_length = num_workers, num_frames, max_length
        self.max_eval_records = max_eval_records
        self.seed = 0 if seed is None else seed
        self.eval_seed, self.skip_bad, self.max_bad = eval_seed, skip_bad, max_bad
        self.processor_kwargs = dict(processor_kwargs or {})
        if length_grouping < 0:
            raise ValueError(f"length_grouping must be >= 0, got {length_grouping}")
        self.length_grouping = length_grouping
        if text_views < 0:
            raise ValueError(f"text_views must be >= 0, got {text_views}")
        self.text_views = text_views
        self.datasets: dict[str, RecordDataset] = {}
        self.sizes: dict[str, list[int]] = {}
        self.skipped: dict[str, int] = {}
        self._processor = None

    # -- sources -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.world is not None:
            self._world_manifest()

    def _world_manifest(self) -> dict:
        return self.world.manifest()

    def specs(self, split: str) -> list[SourceSpec]:
        """The sources of a split: as configured, else the synthetic world's."""
        if self.sources[split] or self.world is None:
            return self.sources[split]
        return self.world.sources(split)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",), None: SPLITS}[stage]
        for split in wanted:
            if split in self.datasets:
                continue
            tasks = self.train_tasks or self.tasks if split == "train" else self.tasks
            per_source, problems = load_records(self.specs(split), tasks=tasks,
                                                forms=self.forms, skip_bad=self.skip_bad,
                                                max_bad=self.max_bad)
            if problems:
                log.warning("%s: skipped %d unusable record(s)", split, len(problems))
            self.skipped[split] = len(problems)
            seed = self.seed if split == "train" else self.eval_seed
            if split != "train" and self.max_eval_records is not None:
                rng = np.random.default_rng(seed)
                per_source = [[recs[i] for i in sorted(rng.choice(len(recs), self.max_eval_records,
                                                                  replace=False))]
                              if len(recs) > self.max_eval_records else recs
                              for recs in per_source]
            records = [randomize_order(r, seed) for recs in per_source for r in recs]
            self.sizes[split] = [len(r) for r in per_source]
            views = ()
            if split == "train" and self.text_views:
                understanding = [i for i, r in enumerate(records) if not is_generation(r.task)]
                views = [i for i in understanding if records[i].evidence]
                if understanding and not views:
                    raise ValueError(f"text_views={self.text_views} needs understanding "
                                     "records with evidence in the training split (the "
                                     "synthetic world's); these sources have none")
                if not understanding:  # e.g. a generation-only arm of a task ablation
                    log.info("text_views: the training split (tasks=%s) has no "
                             "understanding records to view; none added", tasks)
            self.datasets[split] = RecordDataset(records, views)

    def summary(self, split: str) -> dict:
        """Counts by task and form of a split that has been set up."""
        recs = self.datasets[split].records
        return {"records": len(recs), "skipped": self.skipped.get(split, 0),
                "by_task": dict(Counter(r.task for r in recs)),
                "by_form": dict(Counter(r.form for r in recs))}

    # -- batches -----------------------------------------------------------------------
    @property
    def processor(self):
        if self._processor is None:
            if self.processor_path is None:
                raise ValueError("PreferenceDataModule needs `processor` (a model path or id); "
                                 "`ur fit` links it from the model's checkpoint")
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self.processor_path)
        return self._processor

    @processor.setter
    def processor(self, value) -> None:
        self._processor = value

    def collator(self, *, with_targets: bool = True) -> JudgeCollator:
        return JudgeCollator(self.processor, templates=self.templates, num_frames=self.num_frames,
                             max_length=self.max_length, skip_bad=self.skip_bad,
                             with_targets=with_targets, processor_kwargs=self.processor_kwargs)

    def sampler(self, split: str, *, shuffle: bool) -> MixtureSampler:
        """The split's sampler: training mixes sources by weight and shuffles; evaluation
        sees every record once, in order."""
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        if not len(self.datasets[split]):
            tasks = self.train_tasks or self.tasks if split == "train" else self.tasks
            raise ValueError(f"the {split} split has no records after filtering by tasks="
                             f"{tasks} forms={self.forms}")
        weights = ([s.weight for s in self.specs(split)] if shuffle and self.sources[split]
                   else [1.0] * len(self.sizes[split]))
        sizes = None
        if shuffle and self.length_grouping:
            sizes = [size_key(Conversation.of(r, self.templates))
                     for r in self.datasets[split].records]
        return MixtureSampler(self.sizes[split], weights, seed=self.seed, shuffle=shuffle,
                              item_sizes=sizes, batch_size=self.batch_size,
                              group=self.length_grouping)

    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        sampler = self.sampler(split, shuffle=shuffle)
        dataset = self.datasets[split]
        common = dict(collate_fn=self.collator(), num_workers=self.num_workers,
                      persistent_workers=self.num_workers > 0,
                      generator=torch.Generator().manual_seed(self.seed))
        if not (shuffle and dataset.views):
            loader = EpochLoader if shuffle else DataLoader
            return loader(dataset, sampler=sampler,
                          batch_size=self.batch_size if shuffle else self.eval_batch_size,
                          **common)
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ValueError("text_views works in single-process training only (got "
                             f"{self.trainer.world_size} processes); set it to 0")
        batches = TextViewBatches(sampler, self.batch_size, first_view=len(dataset),
                                  views=len(dataset.views), count=self.text_views,
                                  seed=self.seed)
        return EpochLoader(dataset, batch_sampler=batches, **common)

    def train_dataloader(self):
        loader = self._loader("train", shuffle=True)
        if self._train_state is not None:
            loader.load_state_dict(self._train_state)
            self._train_state = None
        return loader

    # The training loader's place in its epoch, kept in checkpoints. Lightning also keeps
    # it as the loader's own state, but restores that only when it creates the loader
    # after the checkpoint is read, and a fit with max_epochs creates it before (to count
    # the steps for the schedule); the datamodule's state is read before either. (Where
    # Lightning rebuilds the loader with a distributed sampler, the rebuilt one starts
    # without it, and only Lightning's own restore applies.)
    _train_state: dict | None = None

    def state_dict(self) -> dict:
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        return {"train_loader": loader.state_dict()} if isinstance(loader, EpochLoader) else {}

    def load_state_dict(self, state: dict) -> None:
        self._train_state = state.get("train_loader")

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def predict_dataloader(self):
        return self._loader("test", shuffle=False)
