"""Malformed answers: the world's understanding records with one answer garbled.

Every answer in the world's records is well-formed: a wrong one names another value
("It is red." for a blue shape) in the grammar the right one uses. A small policy
sampled at a high temperature also writes answers outside that grammar: a stray word
("It is video."), a fragment ("It isvs."), words run together or left out ("It is at
the."). A judge trained on the world alone has never seen one, scores them by their
shape, and can rank them first. :func:`malformed_record` makes records that hold them:

- a pair: a record's better answer against a garbled copy of it, in a random order;
- a single answer: the record's answer garbled.

Each is labelled as the world labels every answer: the oracle reads the garbled text
against the scene the record's evidence describes (:func:`ur.data.synthetic.oracle.evidence_scene`),
so a garbled answer that still names the right value is still right, a stray word in a
description costs that attribute only, and an answer with no value in it scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from ur.data.answers import pointwise_verdict
from ur.data.records import PreferenceRecord, is_generation
from ur.data.synthetic.language import DEFECT_WORDS
from ur.data.synthetic.oracle import evidence_scene, score_answer
from ur.data.synthetic.world import pair_label, understanding_points
from ur.data.templates import embedded_answer, with_embedded_answer

_WORD = re.compile(r"[A-Za-z]+")


def vocabulary(records: Iterable[PreferenceRecord]) -> list[str]:
    """What a stray word is drawn from, sorted: the words of the records' questions,
    answers and evidence, and those the world's evidence of generated pictures uses
    (defects, "no shape"), which a model pretrained on the world has also read."""
    words = set(DEFECT_WORDS) | {"no", "shape"}
    for r in records:
        for text in (r.prompt, *r.responses, *(r.evidence or ())):
            words.update(_WORD.findall(text))
    return sorted(words)


def garble(text: str, rng: np.random.Generator, words: Sequence[str]) -> str:
    """``text`` with one or two of its words after the first garbled: replaced by a word
    from ``words``, cut to a fragment of one, run into the word before it ("It isue."),
    or left out with the word after it. The result differs from ``text`` whenever it
    can."""
    if not words:
        raise ValueError("garble needs words to draw stray words and fragments from")
    body, end = (text[:-1], ".") if text.endswith(".") else (text, "")
    for _ in range(8):
        tokens = body.split()
        for _ in range(1 + int(rng.random() < 0.3)):
            if len(tokens) < 2:
                break
            i = int(rng.integers(1, len(tokens)))
            op = int(rng.integers(4))
            if op == 0:  # a stray word
                tokens[i] = words[int(rng.integers(len(words)))]
            elif op == 1:  # a fragment of a word
                w = words[int(rng.integers(len(words)))]
                a = int(rng.integers(len(w)))
                tokens[i] = w[a:a + int(rng.integers(1, 4))]
            elif op == 2:  # run into the word before, its start lost
                tokens[i - 1:i + 1] = [tokens[i - 1] + tokens[i][int(rng.integers(len(tokens[i]))):]]
            else:  # left out, with the word after it
                del tokens[i:i + int(rng.integers(1, 3))]
        out = " ".join(tokens) + end
        if out != text:
            return out
    return out


def malformed_record(record: PreferenceRecord, rng: np.random.Generator,
                     words: Sequence[str]) -> PreferenceRecord | None:
    """``record`` with an answer garbled (:func:`garble`) and labelled by the oracle; None
    for a record it cannot be made from (generation, no evidence, no answer to garble).

    A single answer is either the record's response or, in a verbatim record ("Question:
    ...\nAnswer: ...\n..." with the target "The image shows .... Final Score: 3"), the
    answer its instruction embeds; the garbled one takes its place there and the score
    ending the target is the oracle's."""
    if is_generation(record.task) or not record.evidence:
        return None
    scene = evidence_scene(record)
    rid = f"{record.id}-malformed"
    if record.form == "pointwise":
        return _malformed_single(record, scene, rng, words, rid)
    if len(record.responses) != 2:
        return None
    scores = [score_answer(scene, record.prompt, t) for t in record.responses]
    keep = record.responses[int(np.argmax(scores))]
    garbled = garble(keep, rng, words)
    pair = [(keep, max(scores)), (garbled, score_answer(scene, record.prompt, garbled))]
    if rng.random() < 0.5:
        pair.reverse()
    (a, sa), (b, sb) = pair
    return replace(record, id=rid, responses=(a, b), response_scores=(sa, sb),
                   label=pair_label(sa, sb))


def _malformed_single(record, scene, rng, words, rid) -> PreferenceRecord | None:
    if record.responses:
        question, answer = record.prompt, record.responses[0]
    elif record.instruction and (embedded := embedded_answer(record.instruction)):
        question, answer = embedded
    else:
        return None
    garbled = garble(answer, rng, words)
    s = score_answer(scene, question, garbled)
    points = understanding_points(record.task, s, record.scale)
    if record.responses:
        return replace(record, id=rid, responses=(garbled,), response_scores=(s,), score=points)
    old_verdict = pointwise_verdict(record.score)
    if not record.target.endswith(old_verdict):
        return None
    return replace(with_embedded_answer(record, answer, garbled), id=rid, score=points,
                   target=record.target[:-len(old_verdict)] + pointwise_verdict(points))
