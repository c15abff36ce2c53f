"""Preference records: the one schema every source is mapped onto.

A record says which task and form it belongs to, where it came from (source, id, and
the file and row it was read from, so errors can point at it), the prompt (a caption
for generation tasks, a question for understanding tasks), its media, the candidate
answers for understanding tasks, and its label:

==================  =========================  ===========================
task                ``media``                  ``responses``
==================  =========================  ===========================
*_generation        the candidates (2 or 1)    empty
*_understanding     the context (1 item)       the candidates (2 or 1)
==================  =========================  ===========================

Pairwise records carry ``label`` in {first, second, tie}; pointwise records carry
``score`` and the ``scale`` it lives on. Sources that know how right each response is
(the synthetic world's oracle) carry ``response_scores`` in [0, 1], one per response;
the prompt templates use them to mark each answer in understanding targets. Sources
that ship the judge's own conversation (LLaVA-Critic, the UnifiedReward SFT files)
also carry ``instruction`` (the user turn, verbatim) and ``target`` (the assistant
turn, verbatim).

Records validate themselves on construction and raise :class:`RecordError`, which
names the file, the row and the field. Nothing downstream knows which source a record
came from beyond the ``source`` string.

A :class:`JudgeQuery` is what the judge is asked: a record without its answer (no
label, score, target or response scores). ``record.query()`` gives a record's query;
one-off questions build queries directly. Queries are validated like records (the
same task, form, media, response and scale checks), and records keep their label or
score mandatory: a row that lost its label is an error, never a question.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path

TASKS: tuple[str, ...] = (
    "image_generation",
    "image_understanding",
    "video_generation",
    "video_understanding",
)
FORMS: tuple[str, ...] = ("pairwise", "pointwise")
LABELS: tuple[str, ...] = ("first", "second", "tie")
MEDIA_KINDS: tuple[str, ...] = ("image", "video", "frames")


class RecordError(ValueError):
    """A record (or a whole file) that cannot be used, located as precisely as known."""

    def __init__(self, message: str, *, file: str | Path | None = None,
                 row: int | str | None = None, field: str | None = None):
        self.message = message
        self.file = None if file is None else str(file)
        self.row = row
        self.field = field
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return (": ".join([", ".join(where), self.message]) if where else self.message)

    def as_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "field": self.field, "error": self.message}

    def located(self, *, file=None, row=None, field=None) -> RecordError:
        """The same error with missing location parts filled in."""
        return RecordError(
            self.message,
            file=self.file if self.file is not None else file,
            row=self.row if self.row is not None else row,
            field=self.field if self.field is not None else field,
        )


def task_modality(task: str) -> str:
    """``image`` or ``video``: what kind of media a task's records carry."""
    return task.split("_", 1)[0]


def is_generation(task: str) -> bool:
    return task.endswith("_generation")


@dataclass(frozen=True)
class Media:
    """A reference to one image or video; decoded lazily by :mod:`ur.data.media`.

    ``kind`` is ``image``, ``video`` (a container file PyAV reads) or ``frames`` (a
    folder of pre-extracted frames, or an explicit list of frame files in ``frames``).
    Exactly one of ``path``, ``data`` or ``frames`` holds the content. ``field`` is
    the source field the reference came from, so a decoding error can name it.
    """

    kind: str
    path: str | None = None
    data: bytes | None = None
    frames: tuple[str, ...] | None = None
    field: str | None = None

    def __post_init__(self):
        if self.kind not in MEDIA_KINDS:
            raise RecordError(f"media kind must be one of {MEDIA_KINDS}, got {self.kind!r}",
                              field=self.field)
        given = sum(x is not None for x in (self.path, self.data, self.frames))
        if given != 1:
            raise RecordError("a media reference needs exactly one of a path, bytes or a "
                              "frame list", field=self.field)
        if self.data is not None and self.kind != "image":
            raise RecordError("inline bytes are supported for images only", field=self.field)

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        if self.frames is not None:
            return f"{len(self.frames)} frames from {self.frames[0] if self.frames else '?'}"
        return f"<{len(self.data)} bytes>"

    def __repr__(self) -> str:  # keep bytes out of reprs and logs
        return f"Media({self.kind}, {self.describe()!r}, field={self.field!r})"


_SURROGATE = re.compile("[\ud800-\udfff]")


def blank(text: str) -> bool:
    """Whether ``text`` shows nothing: only whitespace and format characters (Unicode
    category Cf: zero-width spaces and joiners, the word joiner, the byte-order mark,
    direction marks, the soft hyphen). ``str.strip`` keeps format characters, so a
    prompt of zero-width spaces passes it and reaches the model as an empty prompt."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def surrogate_in(text: str) -> str | None:
    """The first surrogate code point (U+D800 to U+DFFF) in ``text`` as ``U+XXXX``, or
    None. Python text holds one only on its own (JSON's ``"\\ud800"`` escape parses into
    one, undecodable bytes read with ``surrogateescape`` become one); it is no character,
    so UTF-8 encoding and tokenizers refuse it."""
    m = _SURROGATE.search(text)
    return None if m is None else f"U+{ord(m.group()):04X}"


def _texts(q):
    """``(field, text)`` of every text a question carries."""
    yield "source", q.source
    yield "id", q.id
    yield "prompt", q.prompt
    yield from (("responses", r) for r in q.responses)
    yield "instruction", q.instruction
    yield "target", q.target
    yield from (("evidence", e) for e in q.evidence or ())


def _check_question(q) -> None:
    """Validate (and normalise in place) what records and queries share: the task and
    form, the id, the prompt, the media and responses each task needs, the scale of a
    pointwise question, the evidence. Raises :class:`RecordError` through ``q._fail``."""
    fail = q._fail
    if q.task not in TASKS:
        fail("task", f"unknown task {q.task!r}; expected one of {', '.join(TASKS)}")
    if q.form not in FORMS:
        fail("form", f"unknown form {q.form!r}; expected pairwise or pointwise")
    if not isinstance(q.id, str) or not q.id:
        fail("id", "a record needs a non-empty string id")
    if not isinstance(q.prompt, str) or blank(q.prompt):
        fail("prompt", "empty prompt: the caption or question is missing, or holds only "
             "whitespace and invisible characters")
    object.__setattr__(q, "media", tuple(q.media))
    object.__setattr__(q, "responses", tuple(q.responses))
    n = 2 if q.form == "pairwise" else 1
    modality = task_modality(q.task)
    for m in q.media:
        if not isinstance(m, Media):
            fail("media", f"expected Media, got {type(m).__name__}")
        want_video = modality == "video"
        if want_video != (m.kind in ("video", "frames")):
            fail(m.field or "media", f"a {q.task} record cannot hold {m.kind} media")
    if is_generation(q.task):
        if len(q.media) != n:
            fail("media", f"{q.form} {q.task} needs {n} candidate "
                 f"{modality}(s), got {len(q.media)}")
        if q.responses:
            fail("responses", "generation records have no text responses")
    else:
        if len(q.media) != 1:
            fail("media", f"{q.task} needs one {modality} as context, got {len(q.media)}")
        if q.instruction is None and len(q.responses) != n:
            fail("responses", f"{q.form} {q.task} needs {n} response(s), "
                 f"got {len(q.responses)}")
        for r in q.responses:
            if not isinstance(r, str) or blank(r):
                fail("responses", "empty answer: a response is missing, or holds only "
                     "whitespace and invisible characters")
    if q.form == "pointwise":
        if q.scale is None or len(q.scale) != 2:
            fail("scale", "a pointwise record needs its scale as (low, high)")
        try:
            lo, hi = (float(v) for v in q.scale)
        except (TypeError, ValueError, OverflowError):
            fail("scale", f"a scale is two numbers, got {q.scale!r}")
        if not lo < hi:  # NaN fails too
            fail("scale", f"scale low must be below high, got {q.scale}")
        object.__setattr__(q, "scale", (lo, hi))
    if q.evidence is not None:
        ev = tuple(q.evidence)
        if len(ev) != len(q.media):
            fail("evidence", f"evidence needs one entry per media item ({len(q.media)}), "
                 f"got {len(ev)}")
        object.__setattr__(q, "evidence", ev)
    for name, text in _texts(q):
        bad = isinstance(text, str) and surrogate_in(text)
        if bad:
            fail(name, f"the text holds a lone surrogate ({bad}), which is no character: "
                 "it cannot be encoded as UTF-8 or tokenized")


def _candidates(q) -> tuple:
    return q.media if is_generation(q.task) else q.responses


def _fingerprint(candidate) -> str:
    if isinstance(candidate, str):
        return candidate
    if candidate.data is not None:
        return hashlib.blake2b(candidate.data, digest_size=16).hexdigest()
    return candidate.path if candidate.path is not None else "\x1e".join(candidate.frames)


def record_key(q: PreferenceRecord | JudgeQuery) -> int:
    """A stable signed 64-bit key of one judgment: the source and id, the task and form,
    the prompt and the candidates in their order. A record and its query share the key;
    the same record with its candidates swapped has another. Metrics count each key once,
    so a record that an evaluation shard repeats (Lightning's distributed sampler pads
    shards that way) is counted once after the ranks' states are gathered."""
    parts = [q.source, q.id, q.task, q.form, q.prompt, *(_fingerprint(c) for c in _candidates(q))]
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class _Judged:
    """What a record and a query share: where an error points, the modality, and the
    candidates being judged."""

    def _fail(self, field_name: str, message: str):
        raise RecordError(message, file=self.file, row=self.row, field=field_name)

    @property
    def modality(self) -> str:
        return task_modality(self.task)

    @property
    def candidates(self) -> tuple:
        """What is being judged: media for generation tasks, responses for understanding."""
        return _candidates(self)


@dataclass(frozen=True)
class JudgeQuery(_Judged):
    """A question for the judge: a preference record without its answer.

    The same fields as :class:`PreferenceRecord` minus the label, score, target and
    response scores, validated the same way. ``instruction`` is a verbatim user turn
    (records that ship the judge's conversation); ``evidence`` says what each media item
    shows when it is known (the synthetic world), for prompts that show it as text; the
    judge itself reads neither labels nor evidence. ``source`` and ``id`` default to a
    one-off query's."""

    task: str
    form: str
    prompt: str
    media: tuple[Media, ...]
    responses: tuple[str, ...] = ()
    scale: tuple[float, float] | None = None
    instruction: str | None = None
    evidence: tuple[str, ...] | None = None
    source: str = "query"
    id: str = "0"
    file: str | None = field(default=None, compare=False)
    row: int | str | None = field(default=None, compare=False)

    def __post_init__(self):
        _check_question(self)

    @property
    def target(self) -> None:
        """None: a query carries no answer (the prompt templates ask for one)."""
        return None

    def swapped(self) -> JudgeQuery:
        """The same pairwise question with the two candidates in the other order."""
        if self.form != "pairwise":
            raise ValueError("only pairwise queries can be swapped")
        if self.instruction is not None:
            raise ValueError("a query with a verbatim instruction cannot be reordered")
        if is_generation(self.task):
            ev = None if self.evidence is None else self.evidence[::-1]
            return replace(self, media=self.media[::-1], evidence=ev)
        return replace(self, responses=self.responses[::-1])

    def candidate(self, i: int, scale: tuple[float, float]) -> JudgeQuery:
        """The pointwise question about candidate ``i`` (0 or 1) of this pairwise query,
        on ``scale``: its image or clip (generation), or its answer about the same media
        (understanding), with that candidate's evidence when the query has some."""
        if self.form != "pairwise":
            raise ValueError("only a pairwise query has candidates to score one by one")
        if self.instruction is not None:
            raise ValueError("a query with a verbatim instruction cannot be split into "
                             "its candidates")
        if is_generation(self.task):
            ev = None if self.evidence is None else (self.evidence[i],)
            return replace(self, form="pointwise", media=(self.media[i],), evidence=ev,
                           scale=tuple(scale))
        return replace(self, form="pointwise", responses=(self.responses[i],),
                       scale=tuple(scale))


@dataclass(frozen=True)
class PreferenceRecord(_Judged):
    task: str
    form: str
    source: str
    id: str
    prompt: str
    media: tuple[Media, ...]
    responses: tuple[str, ...] = ()
    label: str | None = None
    score: float | None = None
    scale: tuple[float, float] | None = None
    instruction: str | None = None
    target: str | None = None
    evidence: tuple[str, ...] | None = None
    response_scores: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    file: str | None = field(default=None, compare=False)
    row: int | str | None = field(default=None, compare=False)

    def __post_init__(self):
        fail = self._fail
        _check_question(self)
        if self.form == "pairwise":
            if self.label not in LABELS:
                fail("label", f"pairwise label must be first, second or tie, got {self.label!r}")
            if self.score is not None:
                fail("score", "pairwise records carry a label, not a score")
        else:
            if self.label is not None:
                fail("label", "pointwise records carry a score, not a label")
            lo, hi = self.scale
            try:
                score = float(self.score)
            except (TypeError, ValueError, OverflowError):
                fail("score", f"score must be a number, got {self.score!r}")
            if math.isnan(score) or not lo <= score <= hi:
                fail("score", f"score {score} is outside the scale [{lo:g}, {hi:g}]")
            object.__setattr__(self, "score", score)
        if (self.instruction is None) != (self.target is None) and self.instruction is not None:
            fail("target", "a verbatim instruction needs its verbatim target answer")
        if self.response_scores is not None:
            scores = tuple(self.response_scores)
            if len(scores) != len(self.responses):
                fail("response_scores", f"one score per response ({len(self.responses)}), "
                     f"got {len(scores)}")
            for v in scores:
                if not isinstance(v, int | float) or not 0 <= v <= 1:  # NaN fails too
                    fail("response_scores", f"response scores lie in [0, 1], got {v!r}")
            object.__setattr__(self, "response_scores", tuple(float(v) for v in scores))

    def query(self) -> JudgeQuery:
        """What the judge is asked about this record: everything but its answer."""
        return JudgeQuery(task=self.task, form=self.form, prompt=self.prompt, media=self.media,
                          responses=self.responses, scale=self.scale,
                          instruction=self.instruction, evidence=self.evidence,
                          source=self.source, id=self.id, file=self.file, row=self.row)

    def swapped(self) -> PreferenceRecord:
        """The same pairwise judgment with the two candidates in the other order."""
        if self.form != "pairwise":
            raise ValueError("only pairwise records can be swapped")
        if self.instruction is not None:
            raise ValueError("a record with a verbatim instruction cannot be reordered")
        label = {"first": "second", "second": "first", "tie": "tie"}[self.label]
        if is_generation(self.task):
            ev = None if self.evidence is None else self.evidence[::-1]
            return replace(self, media=self.media[::-1], label=label, evidence=ev)
        scores = None if self.response_scores is None else self.response_scores[::-1]
        return replace(self, responses=self.responses[::-1], label=label,
                       response_scores=scores)

    def normalized_score(self) -> float:
        """A pointwise score mapped to [0, 1] on its scale."""
        lo, hi = self.scale
        return (self.score - lo) / (hi - lo)
