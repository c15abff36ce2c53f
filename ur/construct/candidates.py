"""Candidates from a policy: the questions it answers, N sampled answers per question,
and the samples on disk.

The questions come from :mod:`ur.data.questions`.

:func:`sample_answers` draws N answers per question, batched, from a model loaded with
:func:`ur.models.loading.load_vlm`. Temperature, top-p and top-k are always passed to
``generate``: a checkpoint's own ``generation_config.json`` (Qwen2-VL ships near-greedy
values) or transformers' default top-k of 50 would otherwise change what "temperature
1.0" draws. The draw is seeded and leaves the global random state as it was; it is the
same for the same questions in the same order with the same batch size.

:class:`Candidates` holds one question's answers with the settings that drew them (the
model, seed, temperature, top-p, top-k, N, token budget); :func:`write_candidates` and
:func:`read_candidates` keep them as JSONL, one question a line, so that a pair can be
traced back to the samples it was cut from::

    {"id": ..., "source": ..., "task": "image_understanding", "prompt": ...,
     "media": [{"kind": "image", "path": "/abs/path.png", "field": "image"}],
     "evidence": [...] | null,
     "answers": [...], "n": 8, "model": ..., "seed": 0, "temperature": 1.0,
     "top_p": 1.0, "top_k": 0, "max_new_tokens": 48}

Media are kept as the paths the questions were read with (images held only as bytes
cannot be written).

:class:`Samples` holds one caption's generated candidates for the generation tasks:
images or clips on disk (``ur construct oracle-generation`` writes them), each with the
seed of its noise, the generator and its sampling settings, and the oracle's score of
each on the synthetic world; the same file holds them, one caption a line::

    {"id": ..., "task": "image_generation", "prompt": "a red circle on the left",
     "samples": [{"kind": "image", "path": "/abs/c0.png"}, ...], "seeds": [...],
     "n": 4, "model": ..., "settings": {"sample_steps": 12, ...},
     "oracle_scores": [...] | null}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ur.data.questions import Question
from ur.data.records import Media, RecordError, is_generation
from ur.io import write_text_atomic


def _generate_kwargs(n: int, temperature: float, top_p: float, top_k: int,
                     max_new_tokens: int) -> dict:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 1:
        raise ValueError("sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0 and "
                         f"max_new_tokens >= 1; got {temperature}, {top_p}, {top_k}, "
                         f"{max_new_tokens}")
    if temperature == 0:
        if n != 1:
            raise ValueError("temperature 0 is greedy decoding, which gives one answer; "
                             f"ask for n=1, not {n}")
        return {"do_sample": False, "max_new_tokens": max_new_tokens}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k,
            "num_return_sequences": n, "max_new_tokens": max_new_tokens}


def sample_answers(model, processor, questions: Sequence, *, n: int = 10,
                   temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                   max_new_tokens: int = 48, seed: int = 0, batch_size: int = 16,
                   num_frames: int = 4) -> list[list[str]]:
    """``n`` sampled answers to each question (anything with ``media`` and ``prompt``),
    in the questions' order, each decoded without special tokens and stripped.

    ``batch_size`` questions go through ``generate`` at a time, each drawn ``n`` times
    (``num_return_sequences``). ``temperature`` 0 decodes greedily (then ``n`` must be
    1); ``top_k`` 0 keeps every token. ``num_frames`` frames are read from each video.
    The draw is seeded with ``seed`` and leaves the global random state untouched."""
    import torch

    from ur.data.collate import Conversation, ConversationCollator

    kwargs = _generate_kwargs(n, temperature, top_p, top_k, max_new_tokens)
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token_id is not None:
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    collate = ConversationCollator(processor, num_frames=num_frames, with_targets=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, len(questions), batch_size):
                chunk = questions[start:start + batch_size]
                batch = collate([Conversation(q.media, q.prompt, "", q) for q in chunk])
                batch.pop("records", None)
                batch = {k: v.to(device) for k, v in batch.items()}
                width = batch["input_ids"].shape[1]
                seqs = model.generate(**batch, **kwargs)
                texts = tokenizer.batch_decode(seqs[:, width:], skip_special_tokens=True)
                out.extend([t.strip() for t in texts[i * n:(i + 1) * n]]
                           for i in range(len(chunk)))
    finally:
        model.train(was_training)
    return out


@dataclass(frozen=True)
class Candidates:
    """One question's sampled answers and the settings that drew them."""

    question: Question
    answers: tuple[str, ...]
    model: str
    """The policy's path or hub id."""
    seed: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int

    def __post_init__(self):
        object.__setattr__(self, "answers", tuple(self.answers))
        if not self.answers or not all(isinstance(a, str) for a in self.answers):
            raise RecordError("candidates need at least one answer, each a string",
                              file=self.question.file, row=self.question.row, field="answers")

    @property
    def n(self) -> int:
        return len(self.answers)


def candidates_of(questions: Sequence[Question], answers: Sequence[Sequence[str]], *,
                  model: str, seed: int, temperature: float, top_p: float, top_k: int = 0,
                  max_new_tokens: int) -> list[Candidates]:
    """Each question with its answers (as :func:`sample_answers` returns them) and the
    settings that drew them."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answer lists")
    return [Candidates(q, tuple(a), str(model), seed, float(temperature), float(top_p),
                       int(top_k), int(max_new_tokens))
            for q, a in zip(questions, answers, strict=True)]


def _media_row(media: Media, owner: Question | Samples) -> dict:
    if media.data is not None:
        raise ValueError(f"prompt {owner.id!r}: an image held as bytes; candidates keep media "
                         "as paths")
    where = {"frames": list(media.frames)} if media.frames is not None else {"path": media.path}
    return {"kind": media.kind, **where, "field": media.field}


def candidates_row(c: Candidates) -> dict:
    """The JSON row of one question's candidates (the file format above)."""
    q = c.question
    return {"id": q.id, "source": q.source, "task": q.task, "prompt": q.prompt,
            "media": [_media_row(m, q) for m in q.media],
            "evidence": None if q.evidence is None else list(q.evidence),
            "answers": list(c.answers), "n": c.n, "model": c.model, "seed": c.seed,
            "temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k,
            "max_new_tokens": c.max_new_tokens}


@dataclass(frozen=True)
class Samples:
    """One caption's generated candidates (images or clips on disk) and what drew
    them: sample ``j`` comes from noise seed ``seeds[j]``."""

    id: str
    task: str
    prompt: str
    samples: tuple[Media, ...]
    seeds: tuple[int, ...]
    model: str
    settings: dict
    oracle_scores: tuple[float, ...] | None = None
    file: str | None = None
    row: int | None = None

    def __post_init__(self):
        for name in ("samples", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.oracle_scores is not None:
            object.__setattr__(self, "oracle_scores", tuple(self.oracle_scores))
        if not is_generation(self.task):
            raise RecordError(f"generated samples belong to a generation task, not {self.task!r}",
                              file=self.file, row=self.row, field="task")
        if not self.samples:
            raise RecordError("samples need at least one image or clip", file=self.file,
                              row=self.row, field="samples")
        for name in ("seeds", "oracle_scores"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.samples):
                raise RecordError(f"{len(values)} {name} for {len(self.samples)} samples",
                                  file=self.file, row=self.row, field=name)

    @property
    def n(self) -> int:
        return len(self.samples)


def samples_row(s: Samples) -> dict:
    """The JSON row of one caption's samples (the file format above)."""
    return {"id": s.id, "task": s.task, "prompt": s.prompt,
            "samples": [_media_row(m, s) for m in s.samples], "seeds": list(s.seeds),
            "n": s.n, "model": s.model, "settings": dict(s.settings),
            "oracle_scores": None if s.oracle_scores is None else list(s.oracle_scores)}


def write_candidates(path: str | Path, candidates: Iterable[Candidates | Samples]) -> Path:
    """Write ``candidates`` (answers or generated samples) as JSONL, one prompt a line, to
    ``path``, atomically."""
    path = Path(path)
    text = "".join(json.dumps(samples_row(c) if isinstance(c, Samples) else candidates_row(c))
                   + "\n" for c in candidates)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)


_SETTINGS = {"model": str, "seed": int, "temperature": (int, float), "top_p": (int, float),
             "top_k": int, "max_new_tokens": int}


def parse_candidates_row(row, file: str, i: int) -> Candidates:
    """The candidates of one JSON row, a bad field a RecordError naming it."""
    def need(name, types):
        if not isinstance(row, dict) or name not in row or not isinstance(row[name], types) \
                or isinstance(row[name], bool):
            raise RecordError(f"expected {name} as {getattr(types, '__name__', types)}",
                              file=file, row=i, field=name)
        return row[name]

    media = _media_of(need("media", list), file, i, "media")
    evidence = row.get("evidence")
    question = Question(id=need("id", str), task=need("task", str), prompt=need("prompt", str),
                        media=tuple(media), evidence=None if evidence is None else tuple(evidence),
                        source=row.get("source") or "question", file=file, row=i)
    answers = need("answers", list)
    if need("n", int) != len(answers):
        raise RecordError(f"n is {row['n']} but {len(answers)} answers are listed", file=file,
                          row=i, field="n")
    settings = {k: need(k, t) for k, t in _SETTINGS.items()}
    return Candidates(question, tuple(answers), **settings)


def _media_of(entries: list, file: str, i: int, name: str) -> list[Media]:
    media = []
    for m in entries:
        if not isinstance(m, dict) or "kind" not in m:
            raise RecordError("a media entry is {kind, path} or {kind, frames}", file=file,
                              row=i, field=name)
        frames = m.get("frames")
        media.append(Media(kind=m["kind"], path=m.get("path"),
                           frames=None if frames is None else tuple(frames),
                           field=m.get("field") or name))
    return media


def parse_samples_row(row, file: str, i: int) -> Samples:
    """The generated samples of one JSON row, a bad field a RecordError naming it."""
    def need(name, types):
        if name not in row or not isinstance(row[name], types) or isinstance(row[name], bool):
            raise RecordError(f"expected {name} as {getattr(types, '__name__', types)}",
                              file=file, row=i, field=name)
        return row[name]

    samples = _media_of(need("samples", list), file, i, "samples")
    if need("n", int) != len(samples):
        raise RecordError(f"n is {row['n']} but {len(samples)} samples are listed", file=file,
                          row=i, field="n")
    seeds = need("seeds", list)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise RecordError("seeds must be integers", file=file, row=i, field="seeds")
    scores = row.get("oracle_scores")
    if scores is not None and not (isinstance(scores, list) and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
        raise RecordError("oracle_scores must be a list of numbers or null", file=file, row=i,
                          field="oracle_scores")
    return Samples(id=need("id", str), task=need("task", str), prompt=need("prompt", str),
                   samples=tuple(samples), seeds=tuple(seeds), model=need("model", str),
                   settings=need("settings", dict),
                   oracle_scores=None if scores is None else tuple(float(s) for s in scores),
                   file=file, row=i)


def parse_row(row, file: str, i: int) -> Candidates | Samples:
    """A candidates file's row: generated samples for a generation task, else answers."""
    if not isinstance(row, dict):
        raise RecordError("expected a JSON object", file=file, row=i)
    if isinstance(row.get("task"), str) and is_generation(row["task"]):
        return parse_samples_row(row, file, i)
    return parse_candidates_row(row, file, i)


def read_candidates(path: str | Path) -> list[Candidates | Samples]:
    """The candidates written by :func:`write_candidates`; a row that cannot be read
    raises :class:`RecordError` naming the file, the row and the field."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"not valid JSON ({e.msg})", file=path, row=i) from None
            try:
                out.append(parse_row(row, str(path), i))
            except RecordError as e:
                raise e.located(file=path, row=i) from None
    return out
