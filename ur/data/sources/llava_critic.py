"""LLaVA-Critic-113k (image understanding, pairwise and pointwise, as judge conversations).

Configurations ``pairwise`` and ``pointwise``, rows ``{id, source, image, conversations:
[{from: human, value: "<image>\\n..."}, {from: gpt, value: ...}]}``. The human turn is
the judge instruction (question and candidate answer(s) embedded in it), the gpt turn
the judgment. The record keeps both verbatim: ``instruction`` is the human turn with
the ``<image>`` placeholder (and the newline after it) removed, ``target`` the gpt turn
unchanged; ``prompt`` is the instruction too (the question is not a separate field),
and ``responses`` is empty, since the candidates live inside the instruction.

The form is the option ``form=`` if given (it also picks the hub configuration), else
detected per row: a "Final Score: X" makes it pointwise, else a pairwise verdict
("Answer/Response N is better", "Both ... are equally good", "It is a tie") makes it
pairwise. Pairwise labels are read from the last verdict sentence by
:func:`ur.data.answers.parse_pairwise` (so "Answer 1 is better; this is not a tie" is
``first``), scores with
:func:`ur.data.answers.parse_score`, on the option ``scale=`` (default (0, 100)). A
target with no verdict, or a score off the scale, is an error on ``conversations``:
nothing is ever defaulted to candidate 1. ``source`` (the originating data set) is kept
in ``meta["origin"]``.
"""

from __future__ import annotations

from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources.common import (
    evidence_of,
    judge_turns,
    judgment,
    load_rows,
    map_rows,
    media_ref,
    require,
    row_id,
    scale_option,
    source_root,
    strip_placeholders,
)

NAME = "llava_critic"
TASKS = ("image_understanding",)
DEFAULT_SCALE = (0.0, 100.0)


def read(path, *, split=None, media_root=None, form: str | None = None,
         scale=DEFAULT_SCALE, config: str | None = None):
    root = source_root(path, media_root)
    if form not in (None, "pairwise", "pointwise"):
        raise RecordError(f"form must be pairwise or pointwise, got {form!r}", field="form")
    scale = scale_option(scale)

    def build(row, file, i):
        human, target = judge_turns(row)
        instruction = strip_placeholders(human)
        if not instruction.strip():
            raise RecordError("the human turn holds nothing but placeholders",
                              field="conversations")
        kind, label, score = judgment(target, form, scale)
        image = media_ref(require(row, "image"), kind="image", root=root, field="image")
        meta = {"origin": row["source"]} if row.get("source") is not None else {}
        return PreferenceRecord(
            task="image_understanding", form=kind, source=NAME, id=row_id(row, file, i),
            prompt=instruction, media=(image,), responses=(), label=label, score=score,
            scale=scale if kind == "pointwise" else None, instruction=instruction,
            target=target, evidence=evidence_of(row), meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split, hub_config=config or form), build)
