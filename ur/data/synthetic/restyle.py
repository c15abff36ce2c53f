"""Reworded answers: the world's descriptions in the phrasings a policy writes.

The world words every description one way, as a noun phrase: "A red circle on the left."
A policy pretrained on dense captions describes in sentences ("The image shows a red
circle on the left."), the same words a judge's own evidence begins with. A judge that
has only read noun phrases loses the picture when an answer opens like its evidence: it
writes what the image shows wrong (docs/alignment.md, "Answers worded like the
judge's evidence"). :func:`restyled_record` rewords the descriptions of a record with
openers drawn from :data:`OPENERS` (the noun phrase itself among them), claims
unchanged: the oracle reads each reworded answer and must score it as it scored the
original, or the original is kept.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ur.data.records import PreferenceRecord, is_generation, task_modality
from ur.data.synthetic.oracle import evidence_scene, score_answer
from ur.data.synthetic.scene import parse_question
from ur.data.templates import embedded_answer, with_embedded_answer

OPENERS: tuple[str, ...] = ("{}", "The {medium} shows {}", "There is {}", "It shows {}",
                            "I see {}")
"""Ways to open a description; ``{}`` takes the noun phrase (its first letter lowered
unless it is the whole answer), ``{medium}`` "image" or "video"."""


def restyle(answer: str, medium: str, rng: np.random.Generator) -> str:
    """``answer`` (a noun-phrase description, "A red circle on the left.") opened by one
    of :data:`OPENERS`, drawn with ``rng``."""
    opener = OPENERS[int(rng.integers(len(OPENERS)))]
    if opener == "{}" or not answer:
        return answer
    return opener.format(answer[0].lower() + answer[1:], medium=medium)


def _describes(question: str) -> bool:
    return parse_question(question).asks == "describe"


def restyled_record(record: PreferenceRecord,
                    rng: np.random.Generator) -> PreferenceRecord | None:
    """``record`` with its description answers reworded (each drawn on its own), or None
    for a record that holds none (generation, another kind of question, no evidence).

    A single answer embedded in a verbatim instruction ("Question: ...\\nAnswer: ...")
    is reworded in place; the target stands, the claims being the same. An answer the
    oracle would score differently once reworded is kept as it was."""
    if is_generation(record.task) or not record.evidence:
        return None
    medium = task_modality(record.task)
    scene = evidence_scene(record)

    def reworded(question: str, answer: str) -> str:
        new = restyle(answer, medium, rng)
        same = score_answer(scene, question, new) == score_answer(scene, question, answer)
        return new if same else answer

    if record.responses:
        if not _describes(record.prompt):
            return None
        return replace(record, responses=tuple(reworded(record.prompt, a)
                                               for a in record.responses))
    embedded = record.instruction and embedded_answer(record.instruction)
    if not embedded or not _describes(embedded[0]):
        return None
    question, answer = embedded
    return with_embedded_answer(record, answer, reworded(question, answer))
