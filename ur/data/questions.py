"""Questions for an understanding policy: what it is asked, and where they come from.

A :class:`Question` is one image or video, the question, and (on the synthetic world)
the evidence, what the media shows, which the oracle scores answers against
(:func:`ur.data.synthetic.oracle.oracle_score`). :func:`questions_of` reads them from
understanding records of either form: a pairwise record's prompt is the question; a
pointwise record whose instruction embeds "Question: ...\nAnswer: ..." (the world's
LLaVA-Critic and SFT conversations) gives the embedded question. :func:`world_questions`
reads a written world's split.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ur.data.records import Media, PreferenceRecord, RecordError, blank, is_generation
from ur.data.templates import embedded_answer

UNDERSTANDING_TASKS: tuple[str, ...] = ("image_understanding", "video_understanding")


@dataclass(frozen=True)
class Question:
    """One question for an understanding policy: ``task`` (image or video
    understanding), ``prompt`` (the question), ``media`` (the one image or video it is
    about), ``evidence`` (what the media shows, one entry per media item, when known),
    ``source`` and ``id`` (where it came from), ``file`` and ``row`` (for errors)."""

    id: str
    task: str
    prompt: str
    media: tuple[Media, ...]
    evidence: tuple[str, ...] | None = None
    source: str = "question"
    file: str | None = field(default=None, compare=False)
    row: int | str | None = field(default=None, compare=False)

    def __post_init__(self):
        def fail(name, message):
            raise RecordError(message, file=self.file, row=self.row, field=name)

        if self.task not in UNDERSTANDING_TASKS:
            fail("task", f"a question belongs to {' or '.join(UNDERSTANDING_TASKS)}, "
                 f"got {self.task!r}")
        if not isinstance(self.id, str) or not self.id:
            fail("id", "a question needs a non-empty string id")
        if not isinstance(self.prompt, str) or blank(self.prompt):
            fail("prompt", "the question is missing or empty (nothing but spaces or "
                 "zero-width characters)")
        media = tuple(self.media)
        if len(media) != 1 or not isinstance(media[0], Media):
            fail("media", f"a question is about one image or video, got {len(media)} items")
        if (media[0].kind == "image") != (self.task == "image_understanding"):
            fail("media", f"a {self.task} question cannot be about {media[0].kind} media")
        object.__setattr__(self, "media", media)
        if self.evidence is not None:
            evidence = tuple(self.evidence)
            if len(evidence) != len(media) or not all(isinstance(e, str) for e in evidence):
                fail("evidence", "evidence is one description per media item")
            object.__setattr__(self, "evidence", evidence)

    @property
    def modality(self) -> str:
        return "image" if self.task == "image_understanding" else "video"


def _media_key(media: Media) -> str:
    if media.path is not None:
        return media.path
    if media.frames is not None:
        return "\x1e".join(media.frames)
    import hashlib

    return hashlib.blake2b(media.data, digest_size=16).hexdigest()


def question_of(record: PreferenceRecord) -> Question | None:
    """The question an understanding record asks, or None (a generation record, or a
    verbatim instruction that embeds no "Question: ...\\nAnswer: ...")."""
    if is_generation(record.task):
        return None
    prompt = record.prompt
    if record.instruction is not None:
        embedded = embedded_answer(record.instruction)
        if embedded is None:
            return None
        prompt = embedded[0]
    return Question(id=record.id, task=record.task, prompt=prompt, media=record.media,
                    evidence=record.evidence, source=record.source, file=record.file,
                    row=record.row)


def questions_of(records: Iterable[PreferenceRecord]) -> list[Question]:
    """The distinct questions of ``records`` (understanding records of either form), in
    order, one per (media, question text): the first record that asks it names it."""
    seen, out = set(), []
    for record in records:
        q = question_of(record)
        if q is None:
            continue
        key = (_media_key(q.media[0]), q.prompt.strip())
        if key not in seen:
            seen.add(key)
            out.append(q)
    return out


def world_questions(world: str | Path, split: str = "train", *,
                    max_questions: int | None = None, seed: int = 0) -> list[Question]:
    """The understanding questions of a written synthetic world's ``split`` (its
    pairwise and pointwise understanding records, deduplicated); with
    ``max_questions``, a subset of that many chosen with ``seed``, in the world's order.
    Raises FileNotFoundError when ``world`` holds no complete world."""
    from ur.data.datamodule import SourceSpec, load_records
    from ur.data.synthetic.writer import read_manifest

    manifest = read_manifest(world)
    if manifest is None:
        raise FileNotFoundError(f"{world}: no synthetic world here (no complete "
                                "manifest.json); write one with `ur corpus synth`")
    specs = [SourceSpec(name=e["source"], path=str(Path(world) / e["path"]))
             for e in manifest["entries"]
             if e["split"] == split and not e.get("benchmark") and e["task"] in UNDERSTANDING_TASKS]
    if not specs:
        raise ValueError(f"{world}: the world has no understanding records in split {split!r}")
    per_source, _ = load_records(specs, tasks=list(UNDERSTANDING_TASKS))
    questions = questions_of(r for records in per_source for r in records)
    if max_questions is not None and max_questions < len(questions):
        keep = sorted(random.Random(seed).sample(range(len(questions)), max_questions))
        questions = [questions[i] for i in keep]
    return questions
