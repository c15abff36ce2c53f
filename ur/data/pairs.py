"""``PairsDataModule``: DPO preference pairs for a vision-language policy, as Lightning data.

Pairs come from any source the adapters read that holds understanding pairs (the
DPO schemas ``image_dpo`` and ``sharegptvideo_dpo``, what construction writes, or any
preference source of understanding pairs). Each pair keeps its roles: the preferred
answer is "chosen", the other "rejected", and nothing randomises their order (a
preference record's label says which is which; ties cannot train DPO and are dropped
and counted).

A batch holds each pair's prompt and media once and its two answers beside them, the
chosen answers of the batch, then the rejected ones (:class:`PairCollator`), so the
prompt and its media can be run once for both answers. Only the answer end of an
over-long pair is cut; a prompt whose media tokens would not fit is an error naming
the pair.

Held-out questions (``questions``: the synthetic world's understanding questions of a
split, with the scene's evidence) are what validation asks the policy, so that the
oracle can say whether its answers got better.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from ur.data.collate import (
    Conversation,
    ConversationCollator,
    RecordBatch,
    pad_rows,
)
from ur.data.datamodule import (
    CheckMedia,
    CorpusError,
    ProcessorFromPath,
    SourceSpec,
    WorldSpec,
    load_records,
    without_bad_media,
)
from ur.data.questions import Question, world_questions
from ur.data.records import PreferenceRecord, RecordError, is_generation
from ur.data.sampling import EpochLoader, MixtureSampler, ResumableTrainLoader

log = logging.getLogger(__name__)


def chosen_first(record: PreferenceRecord) -> PreferenceRecord | None:
    """The pair with its preferred answer first, or None for a tie."""
    if record.label == "tie":
        return None
    return record if record.label == "first" else record.swapped()


def keep_usable_pairs(dm, split: str, kept: list[list[PreferenceRecord]], dropped: Counter,
                      unreadable: int, what: str) -> None:
    """Settle a pairs DataModule's ``split``: drop the pairs whose media do not decode
    (strict or skipped and counted, as ``dm`` says), refuse a split with no pair left,
    log what was dropped, and record ``dm.pairs``, ``sizes``, ``dropped`` and
    ``skipped`` for it. ``kept`` holds each source's pairs, chosen first; ``unreadable``
    counts the records the readers already skipped."""
    kept, bad_media = without_bad_media(
        kept, dm.num_frames, check=dm.check_media, sample=dm.check_media_sample,
        seed=dm.seed, skip_bad=dm.skip_bad, max_bad=dm.max_bad,
        earlier=sum(dm.skipped.values()) + unreadable)
    dropped["bad"] += len(bad_media)
    if not any(kept):
        raise CorpusError([RecordError(f"no usable {what} pair in the {split} "
                                       f"sources ({dict(dropped)})")])
    for reason, n in dropped.items():
        if n:
            log.warning("%s: dropped %d pair(s): %s", split, n, reason)
    dm.pairs[split] = [p for recs in kept for p in recs]
    dm.sizes[split] = [len(recs) for recs in kept]
    dm.dropped[split] = dropped
    dm.skipped[split] = dropped["bad"]


@dataclass
class PairCollator(ConversationCollator):
    """Pairs -> one batch: each pair's prompt and media once, its two answers beside them
    (the layout :func:`ur.models.prefix.answer_logps` scores).

    - ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and the processor's media
      tensors: the prompts, one row per pair, padded on the left;
    - ``answer_ids``, ``answer_mask``: the chosen answers of every pair, then the
      rejected ones (row ``i`` and ``B + i`` answer prompt ``i``), padded on the right;
    - ``records``: the pairs.

    Only the answer end of an over-long pair is cut; a prompt that leaves no room for
    an answer, media that cannot be decoded and text holding the model's special tokens
    are each a :class:`RecordError` naming the pair; with ``skip_bad`` such a pair
    leaves the batch whole and is counted (``records.skipped``, as in
    :class:`ConversationCollator`).
    """

    def __call__(self, pairs: list[PreferenceRecord]) -> dict:
        kept, media, prompt_ids, token_types, skipped = self.encode_prompts(
            [Conversation(p.media, p.prompt, "", p) for p in pairs])
        if not kept:
            return {"records": RecordBatch([], skipped)}
        records = [c.record for c in kept]
        answers = [r.responses[i] + self._eot for i in (0, 1) for r in records]
        answer_ids = [list(a) for a in self.tokenizer(answers, add_special_tokens=False)["input_ids"]]
        if self.max_length is not None:
            for i, prompt in enumerate(prompt_ids):
                room = self.max_length - len(prompt)  # at least 1: see _too_long
                for row in (i, len(records) + i):
                    answer_ids[row] = answer_ids[row][:room]
        pad = self.pad_id
        batch = {"input_ids": pad_rows(prompt_ids, pad, left=True),
                 "attention_mask": pad_rows([[1] * len(p) for p in prompt_ids], 0, left=True)}
        if token_types is not None:
            batch["mm_token_type_ids"] = pad_rows([list(t) for t in token_types], 0, left=True)
        batch.update(media)
        batch["answer_ids"] = pad_rows(answer_ids, pad)
        batch["answer_mask"] = pad_rows([[1] * len(a) for a in answer_ids], 0)
        batch["records"] = RecordBatch(records, skipped)
        return batch

    def texts(self, conversation: Conversation) -> list[tuple[str, str]]:
        pair = conversation.record
        return [("prompt", pair.prompt), *(("responses", r) for r in pair.responses)]


class PairsDataModule(ProcessorFromPath, ResumableTrainLoader, LightningDataModule):
    """DPO pairs for a vision-language policy.

    Args:
        train: Pair sources for training (e.g. ``{name: image_dpo, path: pairs.jsonl}``).
        val: Pair sources for validation (the rewards metrics on held-out pairs).
        questions: The synthetic world whose held-out understanding questions
            validation asks the policy (``val/oracle_accuracy``); None: no such check.
        question_split: The world's split those questions come from.
        max_questions: How many held-out questions validation asks.
        test_question_split: The world's split ``ur test`` asks the policy.
        max_test_questions: How many questions ``ur test`` asks (None: all).
        processor: Path or hub id of the policy's processor; ``ur fit`` links it from the
            model's checkpoint.
        batch_size: Pairs per batch (each pair: one prompt, two answers).
        eval_batch_size: Pairs per validation batch (default: batch_size).
        num_workers: DataLoader workers.
        num_frames: Frames sampled uniformly from each video.
        max_length: Cut conversations to this many tokens, the answer end only.
        seed: Seed of the training order (``ur fit`` sets it to ``seed_everything``).
        skip_bad: Skip unusable pairs and count them instead of stopping.
        max_bad: With skip_bad, stop anyway past this many (at setup and in training
            batches together).
        check_media: At setup, decode the media of ``all`` training and validation
            pairs, of a seeded ``sample`` of ``check_media_sample`` pairs per split
            (huge corpora), or ``none``; unusable media stop a strict run there, or are
            skipped and counted.
        check_media_sample: Pairs per split that ``sample`` checks.
        processor_kwargs: Extra keywords for the processor call (e.g. pixel budgets).
    """

    def __init__(
        self,
        train: list[SourceSpec] | None = None,
        val: list[SourceSpec] | None = None,
        questions: WorldSpec | None = None,
        question_split: str = "val",
        max_questions: int | None = 200,
        test_question_split: str = "test",
        max_test_questions: int | None = None,
        processor: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_frames: int = 4,
        max_length: int | None = None,
        seed: int | None = None,
        skip_bad: bool = False,
        max_bad: int = 1000,
        check_media: CheckMedia = "all",
        check_media_sample: int = 1000,
        processor_kwargs: dict | None = None,
    ):
        super().__init__()
        self.sources = {"train": list(train or []), "val": list(val or [])}
        self.world = questions
        self.question_splits = {"val": (question_split, max_questions),
                                "test": (test_question_split, max_test_questions)}
        self.processor_path = processor
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.num_frames, self.max_length = num_workers, num_frames, max_length
        self.seed = 0 if seed is None else seed
        self.skip_bad, self.max_bad = skip_bad, max_bad
        self.check_media, self.check_media_sample = check_media, check_media_sample
        self.processor_kwargs = dict(processor_kwargs or {})
        self.pairs: dict[str, list[PreferenceRecord]] = {}
        self.sizes: dict[str, list[int]] = {}
        self.dropped: dict[str, Counter] = {}
        self.skipped: dict[str, int] = {}  # unusable pairs, for the max_bad cap
        self._questions: dict[str, list[Question]] = {}

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), None: ("train", "val")}
        for split in wanted.get(stage, ()):
            if split in self.pairs or not self.sources[split]:
                continue
            per_source, problems = load_records(self.sources[split], skip_bad=self.skip_bad,
                                                max_bad=self.max_bad)
            dropped = Counter(bad=len(problems))
            kept = []
            for recs in per_source:
                ok = []
                for r in recs:
                    if r.form != "pairwise" or is_generation(r.task):
                        dropped["not an understanding pair"] += 1
                    elif (pair := chosen_first(r)) is None:
                        dropped["tie"] += 1
                    else:
                        ok.append(pair)
                kept.append(ok)
            keep_usable_pairs(self, split, kept, dropped, len(problems), "understanding")

    def questions(self, stage: str = "val") -> list[Question]:
        """Held-out questions ``stage`` (val or test) asks the policy (none without a
        world)."""
        if stage not in self._questions:
            split, limit = self.question_splits[stage]
            if self.world is None:
                self._questions[stage] = []
            else:
                self.world.manifest()  # written on first use
                self._questions[stage] = world_questions(self.world.out, split,
                                                         max_questions=limit, seed=0)
        return self._questions[stage]

    def collator(self) -> PairCollator:
        return PairCollator(self.processor, num_frames=self.num_frames,
                            max_length=self.max_length, skip_bad=self.skip_bad,
                            processor_kwargs=self.processor_kwargs)

    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        if split not in self.pairs:
            self.setup("fit" if split == "train" else "validate")
        pairs = self.pairs[split]
        sampler = MixtureSampler(self.sizes[split],
                                 [s.weight for s in self.sources[split]] if shuffle
                                 else [1.0] * len(self.sizes[split]),
                                 seed=self.seed, shuffle=shuffle)
        cls = EpochLoader if shuffle else DataLoader
        return cls(pairs, sampler=sampler, collate_fn=self.collator(),
                   batch_size=self.batch_size if shuffle else self.eval_batch_size,
                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                   generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self):
        return self.resumed(self._loader("train", shuffle=True))

    def _question_loader(self, stage: str) -> DataLoader | None:
        questions = self.questions(stage)
        if not questions:
            return None
        collate = ConversationCollator(self.processor, num_frames=self.num_frames,
                                       with_targets=False, skip_bad=self.skip_bad,
                                       processor_kwargs=self.processor_kwargs)
        return DataLoader([Conversation(q.media, q.prompt, "", q) for q in questions],
                          batch_size=self.eval_batch_size, collate_fn=collate,
                          num_workers=self.num_workers)

    def val_dataloader(self):
        """The validation pairs, then the held-out questions (either may be absent)."""
        loaders = [self._loader("val", shuffle=False) if self.sources["val"] else None,
                   self._question_loader("val")]
        return [d for d in loaders if d is not None]

    def test_dataloader(self):
        """The held-out questions of the test split."""
        loader = self._question_loader("test")
        if loader is None:
            raise ValueError("ur test of a policy asks the world's held-out questions: set "
                             "data.init_args.questions to the synthetic world")
        return loader
