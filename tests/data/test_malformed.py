"""Malformed answers (ur.data.synthetic.malformed): garbled, and labelled by the oracle
as the world labels its own answers."""

import numpy as np
import pytest

from ur.data.datamodule import WorldSpec, load_records
from ur.data.synthetic.malformed import garble, malformed_record, vocabulary
from ur.data.synthetic.oracle import scene_of, score_answer
from ur.data.synthetic.world import understanding_points
from ur.data.templates import PromptTemplates, embedded_answer


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    spec = WorldSpec(out=str(tmp_path_factory.mktemp("malformed") / "world"), size=160, seed=2)
    per_source, _ = load_records(spec.sources("train"),
                                 tasks=["image_understanding", "video_understanding"])
    return [r for recs in per_source for r in recs]


def answer_of(record):
    """(question, answer) of a record with one answer: its response, or the answer its
    verbatim instruction embeds."""
    return (record.prompt, record.responses[0]) if record.responses else \
        embedded_answer(record.instruction)


def scene(record):
    return scene_of(record.evidence[0], "image" if record.task == "image_understanding" else "clip")


def test_the_scene_of_the_evidence_gives_the_worlds_own_labels(records):
    """The labels of garbled answers come from the scene the evidence names: on the
    world's own answers that reproduces every label the world wrote."""
    assert {r.form for r in records} == {"pairwise", "pointwise"}
    for r in records:
        if r.form == "pairwise":
            scores = [score_answer(scene(r), r.prompt, t) for t in r.responses]
            assert scores == pytest.approx(r.response_scores, abs=1e-4), r.id
        else:
            q, a = answer_of(r)
            assert understanding_points(r.task, score_answer(scene(r), q, a), r.scale) == r.score


def test_garble_changes_a_word_but_the_first():
    words = ["video", "equally", "Question"]
    rng = np.random.default_rng(0)
    outs = [garble(text, rng, words) for text in ["It is blue.", "A red circle on the left."]
            for _ in range(50)]
    assert all(o not in ("It is blue.", "A red circle on the left.") for o in outs)
    assert all(o.split()[0] in ("It", "A") or o.startswith(("It", "A")) for o in outs)
    assert all(o.endswith(".") for o in outs)
    assert any("video" in o or "equally" in o or "Question" in o for o in outs)
    assert any(len(o.split()) < 3 for o in outs[:50])  # "It is blue." lost a word
    with pytest.raises(ValueError, match="words"):
        garble("It is blue.", rng, [])


def test_malformed_records_are_labelled_by_the_oracle(records):
    words = vocabulary(records)
    assert {"blurry", "no", "shape", "left", "What"} <= set(words)  # evidence words too
    rng = np.random.default_rng(0)
    labels, zero = set(), 0
    templates = PromptTemplates(answer_checks=True)
    for r in records:
        m = malformed_record(r, rng, words)
        assert m.id == f"{r.id}-malformed" and m.media == r.media and m.evidence == r.evidence
        if r.form == "pairwise":
            best = [t for t, v in zip(r.responses, r.response_scores, strict=True)
                    if v == max(r.response_scores)]
            assert any(t in m.responses for t in best)  # the better answer, beside its garble
            assert m.responses != r.responses
            scores = [score_answer(scene(r), m.prompt, t) for t in m.responses]
            assert m.response_scores == tuple(scores)
            assert m.label == ("tie" if abs(scores[0] - scores[1]) <= 0.04 else
                               "first" if scores[0] > scores[1] else "second")
            labels.add(m.label)
        else:
            (q, a), (q2, a2) = answer_of(r), answer_of(m)
            assert q2 == q and a2 != a
            assert m.instruction.replace(a2, a, 1) == r.instruction
            s = score_answer(scene(r), q, a2)
            assert m.score == understanding_points(r.task, s, r.scale)
            assert m.target.removesuffix(f"Final Score: {m.score:g}") == \
                r.target.removesuffix(f"Final Score: {r.score:g}")
            if s == 0:
                zero += 1
                assert "Wrong." in templates.target(m)
    assert labels == {"first", "second", "tie"} and zero > 0


def test_generation_records_and_records_without_evidence_are_left(records, tmp_path):
    from dataclasses import replace

    spec = WorldSpec(out=str(tmp_path / "world"), size=24, seed=3)
    per_source, _ = load_records(spec.sources("train"), tasks=["image_generation"])
    rng = np.random.default_rng(0)
    assert malformed_record(per_source[0][0], rng, ["x"]) is None
    assert malformed_record(replace(records[0], evidence=None), rng, ["x"]) is None
