"""Reworded answers (ur.data.synthetic.restyle): the world's descriptions opened as a
policy opens them, claims and labels unchanged."""

import numpy as np
import pytest

from ur.data.datamodule import WorldSpec, load_records
from ur.data.synthetic.oracle import scene_of, score_answer
from ur.data.synthetic.restyle import OPENERS, restyle, restyled_record
from ur.data.templates import PromptTemplates, embedded_answer


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    spec = WorldSpec(out=str(tmp_path_factory.mktemp("restyle") / "world"), size=160, seed=3)
    per_source, _ = load_records(spec.sources("train"),
                                 tasks=["image_understanding", "video_understanding"])
    return [r for recs in per_source for r in recs]


def answers(record):
    """(question, answers) of a record: its responses, or the answer its verbatim
    instruction embeds."""
    if record.responses:
        return record.prompt, list(record.responses)
    question, answer = embedded_answer(record.instruction)
    return question, [answer]


def test_restyle_opens_a_description_each_way():
    rng = np.random.default_rng(0)
    outs = {restyle("A red circle on the left.", "video", rng) for _ in range(200)}
    assert outs == {"A red circle on the left.", "The video shows a red circle on the left.",
                    "There is a red circle on the left.", "It shows a red circle on the left.",
                    "I see a red circle on the left."}
    assert len(OPENERS) == len(outs)
    assert restyle("An orange square.", "image", np.random.default_rng(1)) in {
        "An orange square.", "The image shows an orange square.", "There is an orange square.",
        "It shows an orange square.", "I see an orange square."}


def test_reworded_descriptions_keep_their_claims_and_labels(records):
    """Every description record is reworded with the oracle's scores and the judge's
    target unchanged; records of other questions are left alone."""
    templates = PromptTemplates(answer_checks=True)
    described = reworded = 0
    for i, r in enumerate(records):
        new = restyled_record(r, np.random.default_rng(i))
        question, old = answers(r)
        if new is None:
            assert not question.startswith("Describe"), r.id
            continue
        described += 1
        _, now = answers(new)
        reworded += now != old
        scene = scene_of(r.evidence[0], "image" if r.task == "image_understanding" else "clip")
        assert [score_answer(scene, question, a) for a in now] == \
            [score_answer(scene, question, a) for a in old], r.id
        assert templates.target(new) == templates.target(r), r.id
        assert (new.label, new.score, new.media, new.evidence) == (r.label, r.score, r.media,
                                                                   r.evidence)
        for a, b in zip(now, old, strict=True):
            assert a == b or a.endswith(b[0].lower() + b[1:]), (a, b)
    assert {r.form for r in records if r.prompt.startswith("Describe")
            or "Describe the" in (r.instruction or "").split("\nAnswer:")[0]} == {
        "pairwise", "pointwise"}
    assert described > 20 and reworded > 0.6 * described


def test_a_verbatim_answer_is_reworded_in_its_instruction(records):
    verbatim = [r for r in records if not r.responses and r.instruction
                and embedded_answer(r.instruction)[0].startswith("Describe")]
    assert verbatim
    for seed in range(20):
        new = restyled_record(verbatim[0], np.random.default_rng(seed))
        q, a = embedded_answer(new.instruction)
        if a != embedded_answer(verbatim[0].instruction)[1]:
            break
    old = verbatim[0].instruction.split("\nAnswer: ")
    now = new.instruction.split("\nAnswer: ")
    assert now[0] == old[0] and now[1].split("\n", 1)[1] == old[1].split("\n", 1)[1]
    assert now[1] != old[1] and new.target == verbatim[0].target
