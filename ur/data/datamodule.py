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
With ``text_views``, each training batch also carries that many records of the world
(understanding records, or those of ``text_view_tasks``) shown as text (their evidence in the prompt, no media), drawn per batch
and padded apart from the batch's records (``batch["text_views"]``). With
``describe_views``, each also carries that many single images or clips of its records
with the instruction to describe them and the evidence as the target. With
``malformed_views``, each also carries that many understanding records with one answer
garbled and labelled by the world's oracle (:mod:`ur.data.synthetic.malformed`).

Bad input: strict by default (any unusable record stops setup with every problem
listed); ``skip_bad=True`` skips and counts them, up to ``max_bad``. Setup also decodes
the media of every training and validation record (``check_media``: all, a seeded
sample, or none), so a 0-byte image stops a strict run before its first step, not at
step N; what still fails inside a batch is counted by :class:`ur.callbacks.SkippedRecords`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from ur.data.collate import (
    Conversation,
    DescribeView,
    JudgeCollator,
    TextView,
    load_record_media,
    size_key,
)
from ur.data.records import FORMS, TASKS, PreferenceRecord, RecordError, is_generation
from ur.data.sampling import (
    EpochLoader,
    MixtureSampler,
    ResumableTrainLoader,
    TextViewBatches,
)
from ur.data.sources import option_errors, read_source
from ur.data.templates import PromptTemplates

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
CheckMedia = Literal["all", "sample", "none"]


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
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Relative sizes of train, val and test within each (task, form): ``[8, 1, 4]`` of
    1300 items gives 800, 100 and 400. Items are numbered across the splits in that
    order, so a larger test split leaves train and val as they were."""

    def manifest(self) -> dict:
        from ur.data.synthetic.writer import write_world
        from ur.io import exclusive

        with exclusive(self.out):
            return write_world(self.out, size=self.size, seed=self.seed,
                               difficulty=self.difficulty, image_size=self.image_size,
                               num_frames=self.num_frames, splits=tuple(self.splits))

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
    """Read every source; records per source (filtered), and the problems found.

    Each problem is one unusable part (a row, a line, a shard, a file) and the rest of
    its source is read. An option a source does not take is a mistake in the
    configuration, not in the data, and stops setup even with ``skip_bad``."""
    misspelt = [e for spec in specs for e in option_errors(spec.name, spec.options, spec.path)]
    if misspelt:
        raise ValueError("\n".join(e.describe() for e in misspelt))
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


def unusable_media(records: Sequence[PreferenceRecord], num_frames: int, *,
                   check: CheckMedia = "all", sample: int = 1000, seed: int = 0
                   ) -> list[tuple[PreferenceRecord, RecordError]]:
    """Decode the media of ``records`` as the collator will (``check``: all of them, a
    seeded ``sample`` of the records, or none): each record whose media cannot be used,
    with its problem naming file, row and field. Media that several records share are
    decoded once."""
    if check == "none":
        return []
    if check == "sample" and len(records) > sample:
        rng = np.random.default_rng(seed)
        records = [records[i] for i in sorted(rng.choice(len(records), sample, replace=False))]
    decoded: dict[tuple, RecordError | None] = {}
    problems = []
    for r in records:
        if r.media not in decoded:
            try:
                load_record_media(r, num_frames)
                decoded[r.media] = None
            except RecordError as e:
                decoded[r.media] = e
        if (e := decoded[r.media]) is not None:
            problems.append((r, RecordError(e.message, file=r.file, row=r.row, field=e.field)))
    return problems


def without_bad_media(per_source: list[list[PreferenceRecord]], num_frames: int, *,
                      check: CheckMedia, sample: int, seed: int, skip_bad: bool,
                      max_bad: int | None, earlier: int = 0
                      ) -> tuple[list[list[PreferenceRecord]], list[RecordError]]:
    """``per_source`` without the records whose media cannot be decoded
    (:func:`unusable_media`) and those problems; they stop setup as
    :func:`load_records`' do (strict, or with ``earlier`` problems past ``max_bad``)."""
    flat = [r for recs in per_source for r in recs]
    found = unusable_media(flat, num_frames, check=check, sample=sample, seed=seed)
    problems = [e for _, e in found]
    if problems and (not skip_bad or (max_bad is not None and earlier + len(problems) > max_bad)):
        raise CorpusError(problems, total=max_bad if skip_bad else None)
    bad = {id(r) for r, _ in found}
    return [[r for r in recs if id(r) not in bad] for recs in per_source], problems


def _digest(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()


def stable_coin(seed: int, key: str) -> bool:
    """A fair coin that depends only on (seed, key): the same on every worker and run."""
    return _digest(seed, key)[0] & 1 == 1


def stable_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on (seed, key)."""
    return np.random.default_rng([seed, int.from_bytes(_digest(seed, key), "little")])


def randomize_order(record: PreferenceRecord, seed: int) -> PreferenceRecord:
    if record.form != "pairwise" or record.instruction is not None:
        return record
    return record.swapped() if stable_coin(seed, f"{record.source}/{record.id}") else record


class RecordDataset(Dataset):
    """The records of a split; index ``len(records) + k`` is the text view of the
    ``k``-th of ``views`` (record indices); after those, the describe views of
    ``described`` (record index, media index), then the records of ``malformed``, for
    :class:`TextViewBatches`."""

    def __init__(self, records: list[PreferenceRecord], views: Sequence[int] = (),
                 described: Sequence[tuple[int, int]] = (),
                 malformed: Sequence[PreferenceRecord] = ()):
        self.records, self.views, self.described = records, list(views), list(described)
        self.malformed = list(malformed)
        sizes = [len(self.views), len(self.described), len(self.malformed)]
        starts = itertools.accumulate([len(records), *sizes[:-1]])
        self._ranges = list(zip(starts, sizes, strict=True))

    def __len__(self):
        return len(self.records)

    def view_ranges(self) -> list[tuple[int, int]]:
        """(first index, count) of the text views, the describe views and the malformed
        records, in that order."""
        return list(self._ranges)

    def __getitem__(self, i):
        if i < len(self.records):
            return self.records[i]
        (views, _), (described, _), (malformed, _) = self._ranges
        if i < described:
            return TextView(self.records[self.views[i - views]])
        if i < malformed:
            r, m = self.described[i - described]
            return DescribeView(self.records[r], m)
        return self.malformed[i - malformed]


class ProcessorFromPath:
    """A DataModule's processor: loaded from ``processor_path`` (a model folder or hub
    id) on first use, or set directly."""

    processor_path: str | None = None
    _processor = None

    @property
    def processor(self):
        if self._processor is None:
            if self.processor_path is None:
                raise ValueError(f"{type(self).__name__} needs `processor` (a model path or "
                                 "id); `ur fit` links it from the model's checkpoint")
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self.processor_path)
        return self._processor

    @processor.setter
    def processor(self, value) -> None:
        self._processor = value


class PreferenceDataModule(ProcessorFromPath, ResumableTrainLoader, LightningDataModule):
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
        max_val_records: Cap on records per validation source (chosen with eval_seed).
        max_test_records: Cap on records per test source (chosen with eval_seed); the
            default, None, tests on every record.
        seed: Seed of training's mixing, shuffling and candidate order (``ur fit`` sets it
            to ``seed_everything`` when left empty).
        eval_seed: Seed of the validation/test subset and candidate order; fixed apart from
            ``seed`` so runs with different seeds are scored on the same records.
        skip_bad: Skip unusable records and count them instead of stopping.
        max_bad: With skip_bad, stop anyway past this many (at setup and in training
            batches together).
        check_media: At setup, decode the media of ``all`` training and validation
            records, of a seeded ``sample`` of ``check_media_sample`` records per split
            (huge corpora), or ``none``; unusable media stop a strict run there, or are
            skipped and counted.
        check_media_sample: Records per split that ``sample`` checks.
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
        text_view_tasks: The tasks whose training records text views show (default:
            image and video understanding). Generation records viewed as text show each
            picture's evidence in the prompt ("Text: a red circle on the left, blurry;
            a red square on the left."), which teaches the comparison behind their
            verdicts (with ``templates.generation_checks``) the same way.
        describe_views: Add this many describe views to every training batch: one
            image or clip of a training record with evidence, the instruction to
            describe it and nothing else, the target what it shows
            (:class:`ur.data.collate.DescribeView`). They teach the judge to describe a
            picture on its own, which a judge that describes first
            (``judge.describe_first``, with no ``describer``) relies on.
        malformed_views: Add this many malformed records to every training batch: an
            understanding record of the training split (with evidence: the synthetic
            world's) with an answer garbled, a stray word, a fragment, words run
            together or left out, and labelled by the oracle reading it against the
            evidence (a pair: the better answer against its garbled copy; a single
            answer: garbled). The world's wrong answers are all well-formed; these
            teach a judge what a policy's malformed samples are worth. Each training
            record has one garbled copy, fixed by ``seed``. A training split without
            understanding records (a generation-only arm) gets none.
        restyle_answers: Reword the description answers of this share of the training
            split's understanding records with evidence (0 to 1, chosen per record by
            ``seed``): each answer opened another way ("The image shows a red circle on
            the left." for "A red circle on the left."), its claims and label unchanged
            (:mod:`ur.data.synthetic.restyle`). The world words every description as a
            noun phrase; a policy pretrained on captions writes sentences that open like
            the judge's own evidence, which a judge that has never read one misjudges.
            Text views and malformed views are made from the reworded records.
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
        max_val_records: int | None = None,
        max_test_records: int | None = None,
        seed: int | None = None,
        eval_seed: int = 0,
        skip_bad: bool = False,
        max_bad: int = 1000,
        check_media: CheckMedia = "all",
        check_media_sample: int = 1000,
        processor_kwargs: dict | None = None,
        length_grouping: int = 8,
        text_views: int = 0,
        text_view_tasks: list[str] | None = None,
        describe_views: int = 0,
        malformed_views: int = 0,
        restyle_answers: float = 0.0,
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
        self.max_records = {"val": max_val_records, "test": max_test_records}
        self.seed = 0 if seed is None else seed
        self.eval_seed, self.skip_bad, self.max_bad = eval_seed, skip_bad, max_bad
        self.check_media, self.check_media_sample = check_media, check_media_sample
        self.processor_kwargs = dict(processor_kwargs or {})
        if length_grouping < 0:
            raise ValueError(f"length_grouping must be >= 0, got {length_grouping}")
        self.length_grouping = length_grouping
        if text_views < 0:
            raise ValueError(f"text_views must be >= 0, got {text_views}")
        self.text_views = text_views
        unknown = set(text_view_tasks or ()) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown text_view_tasks {sorted(unknown)}; choose from {list(TASKS)}")
        self.text_view_tasks = (list(text_view_tasks) if text_view_tasks
                                else [t for t in TASKS if not is_generation(t)])
        if describe_views < 0:
            raise ValueError(f"describe_views must be >= 0, got {describe_views}")
        self.describe_views = describe_views
        if malformed_views < 0:
            raise ValueError(f"malformed_views must be >= 0, got {malformed_views}")
        self.malformed_views = malformed_views
        if not 0 <= restyle_answers <= 1:
            raise ValueError(f"restyle_answers must be between 0 and 1, got {restyle_answers}")
        self.restyle_answers = restyle_answers
        self.datasets: dict[str, RecordDataset] = {}
        self.sizes: dict[str, list[int]] = {}
        self.skipped: dict[str, int] = {}
        self._processor = None
        self._kinds: dict[tuple, str | None] = {}

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
            seed = self.seed if split == "train" else self.eval_seed
            cap = self.max_records.get(split)
            if cap is not None:
                rng = np.random.default_rng(seed)
                per_source = [[recs[i] for i in sorted(rng.choice(len(recs), cap, replace=False))]
                              if len(recs) > cap else recs for recs in per_source]
            if split != "test":
                per_source, bad_media = without_bad_media(
                    per_source, self.num_frames, check=self.check_media,
                    sample=self.check_media_sample, seed=seed, skip_bad=self.skip_bad,
                    max_bad=self.max_bad, earlier=sum(self.skipped.values()) + len(problems))
                problems = problems + bad_media
            if problems:
                log.warning("%s: skipped %d unusable record(s)", split, len(problems))
            self.skipped[split] = len(problems)
            records = [randomize_order(r, seed) for recs in per_source for r in recs]
            if split == "train" and self.restyle_answers:
                records = self._restyled(records)
            self.sizes[split] = [len(r) for r in per_source]
            views = ()
            if split == "train" and self.text_views:
                viewable = [i for i, r in enumerate(records) if r.task in self.text_view_tasks]
                views = [i for i in viewable if records[i].evidence]
                if viewable and not views:
                    raise ValueError(f"text_views={self.text_views} needs records of "
                                     f"{', '.join(self.text_view_tasks)} with evidence in the "
                                     "training split (the synthetic world's); these sources "
                                     "have none")
                if not viewable:  # e.g. a generation-only arm of a task ablation
                    log.info("text_views: the training split (tasks=%s) has no records of "
                             "%s to view; none added", tasks, ", ".join(self.text_view_tasks))
            described = ()
            if split == "train" and self.describe_views:
                described = [(i, m) for i, r in enumerate(records) if r.evidence
                             and len(r.evidence) == len(r.media) for m in range(len(r.media))]
                if not described:
                    raise ValueError(f"describe_views={self.describe_views} needs training "
                                     "records with evidence for each image or clip (the "
                                     "synthetic world's); these sources have none")
            malformed = ()
            if split == "train" and self.malformed_views:
                malformed = self._malformed(records)
            self.datasets[split] = RecordDataset(records, views, described, malformed)

    def _restyled(self, records: list[PreferenceRecord]) -> list[PreferenceRecord]:
        """``records`` with the description answers of a seeded share reworded."""
        from ur.data.synthetic.restyle import restyled_record

        out, changed = [], 0
        for r in records:
            rng = stable_rng(self.seed, f"restyle/{r.source}/{r.id}")
            new = restyled_record(r, rng) if rng.random() < self.restyle_answers else None
            changed += new is not None and new != r
            out.append(new or r)
        log.info("restyle_answers: %d of %d training records reworded", changed, len(records))
        return out

    def _malformed(self, records: list[PreferenceRecord]) -> list[PreferenceRecord]:
        """One garbled copy of each understanding record with evidence, seeded per record."""
        from ur.data.synthetic.malformed import malformed_record, vocabulary

        understanding = [r for r in records if not is_generation(r.task)]
        if not understanding:  # e.g. a generation-only arm of a task ablation
            log.info("malformed_views: the training split has no understanding records; "
                     "none added")
            return []
        usable = [r for r in understanding if r.evidence]
        words = vocabulary(usable)
        out = [m for r in usable if (m := malformed_record(r, stable_rng(self.seed, r.id), words))]
        if not out:
            raise ValueError(f"malformed_views={self.malformed_views} needs understanding "
                             "records with evidence in the training split (the synthetic "
                             "world's); these sources have none")
        return out

    def difference_kinds(self, records: Sequence[PreferenceRecord]) -> list[str | None]:
        """Per record, what tells its two candidates apart
        (:func:`ur.data.synthetic.world.difference_kind`) for the synthetic world's
        pairwise records, None for any other record."""
        if self.world is None:
            return [None] * len(records)
        from ur.data.synthetic.world import difference_kind

        root = Path(self.world.out).resolve()
        w = self.world
        out = []
        for r in records:
            key = (r.file, r.id)  # each record is looked at once, in every epoch after
            if key not in self._kinds:
                ours = (r.form == "pairwise" and r.file is not None
                        and Path(r.file).resolve().is_relative_to(root))
                self._kinds[key] = difference_kind(
                    r.id, seed=w.seed, difficulty=w.difficulty, image_size=w.image_size,
                    num_frames=w.num_frames) if ours else None
            out.append(self._kinds[key])
        return out

    def summary(self, split: str) -> dict:
        """Counts by task and form of a split that has been set up."""
        recs = self.datasets[split].records
        return {"records": len(recs), "skipped": self.skipped.get(split, 0),
                "by_task": dict(Counter(r.task for r in recs)),
                "by_form": dict(Counter(r.form for r in recs))}

    # -- batches -----------------------------------------------------------------------
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
        ranges = dataset.view_ranges()
        if not (shuffle and any(n for _, n in ranges)):
            loader = EpochLoader if shuffle else DataLoader
            return loader(dataset, sampler=sampler,
                          batch_size=self.batch_size if shuffle else self.eval_batch_size,
                          **common)
        counts = (self.text_views, self.describe_views, self.malformed_views)
        (first, views, count), *more = [(first, n, c) for (first, n), c
                                        in zip(ranges, counts, strict=True)]
        batches = TextViewBatches(sampler, self.batch_size, first_view=first, views=views,
                                  count=count, seed=self.seed, more=more)
        return EpochLoader(dataset, batch_sampler=batches, **common)

    def train_dataloader(self):
        return self.resumed(self._loader("train", shuffle=True))

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def predict_dataloader(self):
        return self._loader("test", shuffle=False)
