"""Shared-prefix judging: queries about one image or clip run their common start once and
decode as ``generate`` decodes the whole rows."""

from dataclasses import replace

import pytest
import torch

from ur.construct.judged import pair_query, point_query
from ur.data.datamodule import load_records
from ur.data.questions import world_questions
from ur.data.synthetic import write_world
from ur.data.templates import PromptTemplates
from ur.models.tiny import build_tiny_vlm
from ur.pretrain.tiny_vlm import tokenizer_texts
from ur.reward.judge import Judge, _VerdictStop


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    write_world(root / "world", size=120, seed=0, difficulty=1)
    from ur.data.datamodule import WorldSpec

    spec = WorldSpec(out=str(root / "world"), size=120)
    train = [r for recs in load_records(spec.sources("train"))[0] for r in recs]
    texts = tokenizer_texts(train, PromptTemplates())
    return root, train, texts


def _queries(root, train):
    """Four answers to each of two image and two video questions (the pairs and the
    points construction asks), and generation queries, whose media differ."""
    questions = world_questions(root / "world", "val", max_questions=40, seed=0)
    picked = ([q for q in questions if q.task == "image_understanding"][:2]
              + [q for q in questions if q.task == "video_understanding"][:2])
    answers = ("It is red.", "It is a blue circle at the top.", "It moves left.", "A square.")
    out = []
    for q in picked:
        out += [pair_query(q.task, q.prompt, q.media, answers, a, b) for a, b in ((0, 1), (2, 3))]
        out += [point_query(q.task, q.prompt, q.media, answers, i) for i in range(4)]
    generation = [r.query() for r in train if r.task == "image_generation"][:3]
    return out + generation, len(picked)


def _compare(reference, shared):
    """The same tokens, and the same logits while the tokens agree. Where the two decode
    another token, the reference's two best logits must be within rounding of each
    other (a tie that float rounding may break either way)."""
    width = reference.sequences.shape[1] - len(reference.logits)
    assert shared.sequences.shape[0] == reference.sequences.shape[0]
    ties = 0
    for r in range(reference.sequences.shape[0]):
        for t, step in enumerate(reference.logits):
            assert torch.allclose(step[r], shared.logits[t][r], atol=1e-4, rtol=1e-4), (r, t)
            a, b = (int(s.sequences[r, width + t]) for s in (reference, shared))
            if a != b:
                top = step[r].topk(2).values
                assert float(top[0] - top[1]) < 1e-4, f"row {r} parts at step {t}"
                ties += 1
                break
    assert ties <= 1


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_shared_prefix_decodes_as_generate(world, family):
    root, train, texts = world
    base = build_tiny_vlm(root / family, family=family, texts=texts, num_layers=2)
    judge = Judge.from_pretrained(base, batch_size=64, max_new_tokens=24)
    queries, _ = _queries(root, train)
    inputs = judge._inputs(queries)
    width = inputs["input_ids"].shape[1]
    shared = replace(judge, share_prefix=True)
    stop = _VerdictStop(judge.tokenizer, queries, width)
    _compare(judge._greedy(queries, inputs, stop), shared._greedy(queries, inputs, stop))
    for mode in ("fast", "generate"):
        a = replace(judge, mode=mode)(queries)
        b = replace(shared, mode=mode)(queries)
        assert [j.text for j in a] == [j.text for j in b]
        assert [j.label for j in a] == [j.label for j in b]
        assert [j.score or 0 for j in a] == pytest.approx([j.score or 0 for j in b], abs=1e-4)
        assert sum(j.score is not None for j in a) == sum(j.score is not None for j in b)


def test_shared_prefix_runs_each_image_once(world):
    """Decoding encodes each question's image or clip once for its eight judgments, and
    each generation query's images on their own (generate mode: fast mode's forced
    forward passes, for rows whose decoding never reached a verdict, come on top)."""
    root, train, texts = world
    base = build_tiny_vlm(root / "qwen2_vl", family="qwen2_vl", texts=texts, num_layers=2)
    judge = Judge.from_pretrained(base, mode="generate", batch_size=64, max_new_tokens=8)
    queries, n_questions = _queries(root, train)
    encoded = []

    def count(module, args, kwargs):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        encoded.append(grid.shape[0])

    hook = judge.model.model.visual.register_forward_pre_hook(count, with_kwargs=True)
    try:
        judge(queries)
        plain = sum(encoded)
        encoded.clear()
        replace(judge, share_prefix=True)(queries)
        shared = sum(encoded)
    finally:
        hook.remove()
    generation = sum(len(q.media) for q in queries if q.task == "image_generation")
    understanding = len(queries) - sum(q.task == "image_generation" for q in queries)
    assert plain == understanding + generation
    assert shared == n_questions + generation


def test_shared_prefix_applies_the_repetition_penalty(world):
    root, train, texts = world
    base = build_tiny_vlm(root / "qwen2_vl", family="qwen2_vl", texts=texts, num_layers=2)
    judge = Judge.from_pretrained(base, batch_size=64, max_new_tokens=24)
    queries, _ = _queries(root, train)
    inputs = judge._inputs(queries)
    plain = judge._greedy(queries, inputs)
    judge.model.generation_config.repetition_penalty = 3.0
    penalised = judge._greedy(queries, inputs)
    assert not torch.equal(plain.sequences, penalised.sequences), "the penalty should matter"
    _compare(penalised, replace(judge, share_prefix=True)._greedy(queries, inputs))


def test_shared_prefix_refuses_settings_it_does_not_apply(world):
    root, train, texts = world
    base = build_tiny_vlm(root / "qwen2_vl", family="qwen2_vl", texts=texts, num_layers=2)
    judge = Judge.from_pretrained(base, share_prefix=True, max_new_tokens=4)
    judge.model.generation_config.no_repeat_ngram_size = 3
    queries, _ = _queries(root, train)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        judge(queries[:2])
