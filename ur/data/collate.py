"""Turning records into model inputs through a prompt template and the model's processor.

The user turn holds the media (images or video frames) followed by the instruction; the
assistant turn holds the target. The prompt (everything up to and including the
assistant header) is run through the processor, which expands the vision placeholders
and prepares pixels; the target is tokenized on its own and appended. So the label
mask is exact (loss on the assistant turn only, its end-of-turn token included), and
the model is trained on the same token boundary that generation continues from. Works
for any processor whose chat template takes ``{"type": "image"}`` / ``{"type":
"video"}`` content items (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ur.data.media import load_image, load_video
from ur.data.records import JudgeQuery, Media, PreferenceRecord, RecordError
from ur.data.templates import PromptTemplates

IGNORE_INDEX = -100
_SENTINEL = "\x00UR-TARGET\x00"


class RecordBatch:
    """The records behind a batch, and ``skipped``: the problems (described, with file,
    row and field) of the batch's records the collator dropped as unusable
    (``skip_bad``). Opaque on purpose: Lightning moves batches to devices by recursing
    into lists and dataclasses and refuses frozen dataclasses, records need no moving,
    and every consumer of a batch takes ``records`` out before the model sees it. The
    problems travel with the batch because a collator in a DataLoader worker is a copy
    whose own counter the trainer never sees."""

    __slots__ = ("items", "skipped")

    def __init__(self, items, skipped: Sequence[str] = ()):
        self.items = list(items)
        self.skipped = list(skipped)

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __repr__(self):
        return f"RecordBatch({len(self.items)} records)"


@dataclass(frozen=True)
class Conversation:
    """One user turn (media, then the instruction) and the assistant's target answer.

    Judge records become conversations through the prompt templates; other supervision
    (the tiny base's scene descriptions) is written as conversations directly. A judge
    query becomes a conversation without a target: it is the question alone."""

    media: tuple[Media, ...]
    instruction: str
    target: str = ""
    record: PreferenceRecord | JudgeQuery | None = None

    @classmethod
    def of(cls, record: PreferenceRecord | JudgeQuery | TextView | DescribeView,
           templates: PromptTemplates) -> Conversation:
        if isinstance(record, TextView):
            r = record.record
            target = "" if isinstance(r, JudgeQuery) else templates.target(r)
            return cls((), templates.text_view_instruction(r), target, r)
        if isinstance(record, DescribeView):
            r, i = record.record, record.index
            return cls((r.media[i],), templates.describe(r.modality),
                       templates.description_target(r.modality, r.evidence[i]), r)
        target = "" if isinstance(record, JudgeQuery) else templates.target(record)
        return cls(record.media, templates.instruction(record), target, record)


@dataclass(frozen=True)
class TextView:
    """A record shown without its media: its evidence (what the synthetic world's scene
    or clip holds) written as text before its instruction, its target unchanged. Text
    views of understanding records teach the comparison behind understanding verdicts (an
    answer's claims against the evidence) far more cheaply than images do
    (docs/tiny_base.md, "Text views"); ``PreferenceDataModule(text_views=...)`` adds
    them to training batches. A judge that describes first (``Judge(describe_first=...)``)
    asks its questions as text views of queries whose evidence is its own descriptions."""

    record: PreferenceRecord | JudgeQuery


@dataclass(frozen=True)
class DescribeView:
    """One image or clip of a record (its ``index``-th) with the instruction to describe
    it and nothing else in view, the target what it shows ("The image shows a red circle
    on the left."). Describe views teach a judge to describe a picture before it reads
    the caption or answers it judges (``Judge(describe_first=...)``);
    ``PreferenceDataModule(describe_views=...)`` adds them to training batches."""

    record: PreferenceRecord
    index: int = 0


def size_key(conversation: Conversation) -> tuple[int, int, int]:
    """What a conversation is sorted by when batches are grouped by length: its videos,
    its images, then the characters of its instruction (visual tokens per item are the
    model's business, so items with the same media are compared by text alone).

    The target is left out on purpose: with it in the key, the tiny base's pretraining
    failed (validation images' colour named right 0.09 of the time after 1000 steps,
    against 0.98 shuffled freely; final loss 0.48 against 0.21). A target's length says
    something about what it says (the colour, shape and place words set a description's
    length), so such batches hold related targets; that is the likely reason, not a
    proven one. Sorting by the prompt keeps the judge's saving (padding 1.24 -> 1.07)."""
    videos = sum(m.kind != "image" for m in conversation.media)
    return (videos, len(conversation.media) - videos, len(conversation.instruction))


def user_message(media: tuple[Media, ...], instruction: str) -> dict:
    """The user turn: one content item per image or video, then the instruction."""
    content = [{"type": "image" if m.kind == "image" else "video"} for m in media]
    content.append({"type": "text", "text": instruction})
    return {"role": "user", "content": content}


def prompt_text(processor, message: dict) -> str:
    return processor.apply_chat_template([message], tokenize=False, add_generation_prompt=True)


def end_of_turn(processor) -> str:
    """What the chat template writes after an assistant message (e.g. ``<|im_end|>``),
    without trailing whitespace; the model must learn to emit it to stop."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": "x"}]},
            {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]}]
    full = processor.apply_chat_template(msgs, tokenize=False)
    return full.split(_SENTINEL, 1)[1].rstrip()


def special_texts(processor) -> tuple[str, ...]:
    """The processor's special tokens as they are written in text (longest first)."""
    tok = getattr(processor, "tokenizer", processor)
    found = set(getattr(tok, "all_special_tokens", []))
    found |= {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special}
    for name in ("image_token", "video_token"):
        found.add(getattr(processor, name, None) or "")
    return tuple(sorted((t for t in found if len(t) > 1), key=len, reverse=True))


def pad_rows(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """Token rows as one ``long`` tensor as wide as the longest, padded with ``value`` on
    the right (training) or the left (prompts that generation or answers continue)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            row = out[i, width - len(r):] if left else out[i, :len(r)]
            row.copy_(torch.as_tensor(r, dtype=torch.long))
    return out


def load_record_media(record: PreferenceRecord | Conversation, num_frames: int):
    """(images, videos) lists for the processor, with errors located at the record."""
    images, videos = [], []
    origin = record.record if isinstance(record, Conversation) else record
    for m in record.media:
        try:
            if m.kind == "image":
                images.append(load_image(m))
            else:
                videos.append(load_video(m, num_frames))
        except RecordError as e:
            if origin is None:
                raise
            raise e.located(file=origin.file, row=origin.row, field=m.field) from None
    return images, videos


@dataclass
class ConversationCollator:
    """Callable collate: a list of conversations -> a padded batch for a causal VLM.

    The batch holds the processor's tensors (``input_ids``, ``attention_mask``,
    ``pixel_values``, ``image_grid_thw``, ...), ``labels`` with the prompt masked to
    -100 (training), and ``records`` (the records behind the conversations, for judging
    and metrics). With ``with_targets=False`` prompts are left-padded for generation.
    A conversation that cannot be used is a :class:`RecordError` naming its record's
    file, row and field: media that cannot be decoded, text holding the model's own
    special tokens (``<|image_pad|>``, ``<image>``, ``<|im_end|>``: the processor would
    read them as markup), a prompt that leaves no room within ``max_length``. With
    ``skip_bad`` it is dropped from its batch and counted instead: described in the
    batch's ``records.skipped`` (what training counts, see
    :class:`ur.callbacks.SkippedRecords`) and in this collator's running ``skipped``.
    """

    processor: object
    num_frames: int = 4
    max_length: int | None = None
    skip_bad: bool = False
    with_targets: bool = True
    processor_kwargs: dict = field(default_factory=dict)
    skipped: int = 0

    def __post_init__(self):
        self._eot = end_of_turn(self.processor) if self.with_targets else ""
        self._specials = special_texts(self.processor)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def __call__(self, conversations: list[Conversation]) -> dict:
        kept, media, prompt_ids, token_types, skipped = self.encode_prompts(conversations)
        if not kept:
            return {"records": RecordBatch([], skipped)}
        targets = [c.target + self._eot if self.with_targets else "" for c in kept]
        target_ids = (self.tokenizer(targets, add_special_tokens=False)["input_ids"]
                      if self.with_targets else [[] for _ in kept])
        batch = self._pad(prompt_ids, target_ids, token_types)
        batch.update(media)
        batch["records"] = RecordBatch((c.record for c in kept), skipped)
        return batch

    def encode_prompts(self, conversations: list[Conversation]
                       ) -> tuple[list[Conversation], dict, list[list[int]], list | None, list[str]]:
        """The processor's view of each conversation's prompt: ``(kept, media tensors,
        prompt token ids, token types or None, problems)``. Conversations that cannot be
        used (undecodable media, special tokens in the text, a prompt with no room
        within ``max_length``) stop the run, or under ``skip_bad`` are dropped, their
        problems described and counted in ``skipped``; the rest are encoded again
        without them, their media decoded once."""
        loaded, problems = [], []
        for c in conversations:
            try:
                self._check_text(c)
                loaded.append((c, *load_record_media(c, self.num_frames)))
            except RecordError as e:
                if not self.skip_bad:
                    raise
                problems.append(e.describe())
        encoded = [], {}, [], None
        while loaded:
            encoded = self._processed(loaded)
            over = self._too_long(encoded[0], encoded[2])
            if not over:
                break
            problems += over.values()
            loaded = [item for i, item in enumerate(loaded) if i not in over]
            encoded = [], {}, [], None
        self.skipped += len(problems)
        return (*encoded, problems)

    def _processed(self, loaded: list[tuple[Conversation, list, list]]):
        """The processor run on conversations whose media are decoded."""
        kept = [c for c, _, _ in loaded]
        images = [imgs for _, imgs, _ in loaded]
        videos = [v for _, _, vids in loaded for v in vids]
        prompts = [prompt_text(self.processor, user_message(c.media, c.instruction)) for c in kept]
        kwargs = dict(self.processor_kwargs)
        if any(images):
            # LLaVA-OneVision needs to know which prompt holds which images.
            nested = type(self.processor).__name__.startswith("LlavaOnevision")
            kwargs["images"] = images if nested else [i for imgs in images for i in imgs]
        if videos:
            kwargs["videos"] = videos
        # Tensors from the processor itself, which pads media of different sizes (LLaVA's
        # image patches); the prompts' own padding is taken off again here.
        enc = self.processor(text=prompts, padding=True, return_tensors="pt", **kwargs)
        real = enc.pop("attention_mask").bool()
        prompt_ids = [row[keep].tolist() for row, keep in zip(enc.pop("input_ids"), real, strict=True)]
        types = enc.pop("mm_token_type_ids", None)
        token_types = (None if types is None else
                       [row[keep].tolist() for row, keep in zip(types, real, strict=True)])
        return kept, dict(enc), prompt_ids, token_types

    def texts(self, conversation: Conversation) -> list[tuple[str, str]]:
        """``(field, text)`` of what the conversation's record writes into the rows."""
        return [("prompt", conversation.instruction), ("response", conversation.target)]

    def _check_text(self, conversation: Conversation) -> None:
        origin = conversation.record
        for name, text in self.texts(conversation):
            found = next((t for t in self._specials if t in text), None)
            if found is not None:
                raise RecordError(f"the text holds the model's special token {found!r}, "
                                  "which the processor would read as markup",
                                  file=getattr(origin, "file", None),
                                  row=getattr(origin, "row", None), field=name)

    def _too_long(self, kept: list[Conversation], prompt_ids: list[list[int]]) -> dict[int, str]:
        """The prompts that leave no room within ``max_length`` (an answer needs a token;
        a prompt to continue fits exactly): their problems by index; outside
        ``skip_bad`` the first stops the run."""
        if self.max_length is None:
            return {}
        room = self.max_length - (1 if self.with_targets else 0)
        over = {}
        for i, ids in enumerate(prompt_ids):
            if len(ids) > room:
                origin = kept[i].record
                error = RecordError(f"the prompt alone is {len(ids)} tokens with its media, "
                                    f"leaving no room within max_length {self.max_length} "
                                    "(only answers are cut, never media tokens)",
                                    file=getattr(origin, "file", None),
                                    row=getattr(origin, "row", None), field="max_length")
                if not self.skip_bad:
                    raise error
                over[i] = error.describe()
        return over

    def _pad(self, prompt_ids, target_ids, token_types) -> dict:
        """Right-pad prompt+target for training; left-pad prompts alone for generation."""
        pad = self.pad_id
        seqs, labels, types = [], [], []
        for i, (p, t) in enumerate(zip(prompt_ids, target_ids, strict=True)):
            p, t = list(p), list(t)
            ids = p + t
            lab = [IGNORE_INDEX] * len(p) + t
            tt = (list(token_types[i]) if token_types is not None else [0] * len(p)) + [0] * len(t)
            if self.max_length is not None and len(ids) > self.max_length:
                # Cutting the prompt could drop vision placeholder tokens and break the
                # image/token correspondence, so only the target end is cut
                # (``_too_long`` has taken out prompts that leave no room).
                ids, lab, tt = ids[:self.max_length], lab[:self.max_length], tt[:self.max_length]
            seqs.append(ids)
            labels.append(lab)
            types.append(tt)
        left = not self.with_targets  # generation continues from the right edge
        def padded(rows, value):
            return pad_rows(rows, value, left=left)
        batch = {"input_ids": padded(seqs, pad),
                 "attention_mask": padded([[1] * len(s) for s in seqs], 0)}
        if self.with_targets:
            batch["labels"] = padded(labels, IGNORE_INDEX)
        if token_types is not None:
            batch["mm_token_type_ids"] = padded(types, 0)
        return batch



@dataclass
class JudgeCollator(ConversationCollator):
    """Records (or their text views) -> conversations through the prompt templates -> a
    batch. Without targets (``with_targets=False``, judging) it also takes
    :class:`~ur.data.records.JudgeQuery` items, which carry no answer to train on."""

    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def __call__(self, records: list[PreferenceRecord | JudgeQuery | TextView]) -> dict:
        """A batch of the records; text views among them come padded on their own under
        ``text_views`` (a batch of the same keys), since they are rarely as long as the
        records they ride with (``RewardSFTModule.training_step`` sums both parts' loss
        over the whole batch's target tokens, so the loss is unchanged)."""
        if self.with_targets and any(isinstance(r, JudgeQuery) for r in records):
            raise TypeError("a JudgeQuery has no target to train on; training batches need "
                            "labelled PreferenceRecords")
        media = [Conversation.of(r, self.templates) for r in records if not isinstance(r, TextView)]
        views = [Conversation.of(r, self.templates) for r in records if isinstance(r, TextView)]
        if not (media and views):
            return super().__call__(media or views)
        batch = super().__call__(media)
        batch["text_views"] = super().__call__(views)
        batch["records"].skipped += batch["text_views"]["records"].skipped
        return batch
