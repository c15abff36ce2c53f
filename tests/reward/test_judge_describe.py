"""Describing first: each image or clip is described on its own, then the question is asked
with the descriptions as text, so what the judge says a picture shows cannot be copied
from the caption or the answers."""

from dataclasses import replace

import pytest

from ur.construct.judged import pair_query, point_query
from ur.data.datamodule import WorldSpec, load_records
from ur.data.records import TASKS
from ur.data.synthetic import write_world
from ur.data.templates import PromptTemplates, description
from ur.models.tiny import build_tiny_vlm
from ur.pretrain.tiny_vlm import tokenizer_texts
from ur.reward.judge import Judge, media_token_ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("describe")
    write_world(root / "world", size=120, seed=0, difficulty=1)
    spec = WorldSpec(out=str(root / "world"), size=120)
    train = [r for recs in load_records(spec.sources("train"))[0] for r in recs]
    base = build_tiny_vlm(root / "qwen2_vl", family="qwen2_vl",
                          texts=tokenizer_texts(train, PromptTemplates()), num_layers=2)
    return base, train


def _queries(train):
    """Generation pairs and points, and two answers to one understanding question asked
    as a pair and one by one (three questions about the same image)."""
    gen = [r.query() for r in train if r.task == "image_generation" and r.form == "pairwise"][:2]
    gen += [r.query() for r in train if r.task == "video_generation" and r.form == "pointwise"][:1]
    und = next(r for r in train if r.task == "image_understanding" and r.evidence)
    answers = ("It is red.", "A blue circle at the top.")
    return gen + [pair_query(und.task, und.prompt, und.media, answers, 0, 1),
                  point_query(und.task, und.prompt, und.media, answers, 0),
                  point_query(und.task, und.prompt, und.media, answers, 1)]


class Seen:
    """What a model is given: its prompts (decoded) and whether they hold media tokens."""

    def __init__(self, judge: Judge):
        self.judge, self.calls = judge, []
        self.media = set(media_token_ids(judge.processor))
        judge.model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:  # a prompt, not one decoding step
            for row in ids.tolist():
                self.calls.append((bool(self.media & set(row)),
                                   self.judge.tokenizer.decode(row, skip_special_tokens=True)))

    def prompts(self, with_media: bool) -> list[str]:
        return [p for media, p in self.calls if media == with_media]


def test_questions_are_asked_from_descriptions_written_alone(tiny):
    base, train = tiny
    describer = Judge.from_pretrained(base, mode="generate", max_new_tokens=16, batch_size=4)
    judge = Judge.from_pretrained(base, max_new_tokens=16, batch_size=8, both_orders=True,
                                  describe_first=TASKS, describer=describer)
    described, judged = Seen(describer), Seen(judge)
    # Evidence a query may carry (the world's truth) must never reach the judge.
    queries = [replace(q, evidence=tuple(f"hidden truth {k}" for k in range(len(q.media))))
               for q in _queries(train)]
    memo = {}
    out = judge(queries, memo=memo)
    assert len(out) == len(queries)
    assert all(j.label is not None for j in out if j.form == "pairwise")
    media = {m for q in queries for m in q.media}
    known = memo[("descriptions",)]
    assert set(known) == media
    # The describer sees each image or clip once, with the describe instruction alone.
    asked = described.prompts(with_media=True)
    assert len(asked) == len(media)
    assert all(("Describe the image." in p or "Describe the video." in p) for p in asked)
    assert not any(q.prompt in p for q in queries for p in asked)
    # The judge never sees media; each question carries its media's descriptions.
    assert judged.calls and not judged.prompts(with_media=True)
    prompts = judged.prompts(with_media=False)
    for q in queries:
        text = "Text: " + "; ".join(known[m] for m in q.media) + "."
        assert any(text in p and q.prompt in p for p in prompts), q
    assert not any("hidden truth" in p for p in prompts + described.prompts(with_media=True))
    # Asked again with the same memo, nothing is described twice.
    judge(queries, memo=memo)
    assert len(described.prompts(with_media=True)) == len(media)


def test_only_the_named_tasks_are_described(tiny):
    base, train = tiny
    judge = Judge.from_pretrained(base, max_new_tokens=8, describe_first=("image_generation",))
    seen = Seen(judge)
    queries = _queries(train)
    judge(queries)
    with_media = seen.prompts(with_media=True)
    # The judge describes the generation images itself, then reads them as text, and
    # looks at the understanding question's image and the clip directly.
    assert any("Describe the image." in p for p in with_media)
    assert any(queries[-1].prompt in p and "Text: " not in p for p in with_media)
    assert any(q.prompt in p and "Text: " in p for q in queries[:2]
               for p in seen.prompts(with_media=False))


def test_describe_first_refuses_what_it_cannot_do(tiny):
    base, _ = tiny
    with pytest.raises(ValueError, match="unknown tasks"):
        Judge.from_pretrained(base, describe_first=("image_captioning",))
    with pytest.raises(ValueError, match="share_prefix and describe_first"):
        Judge.from_pretrained(base, describe_first=("image_generation",), share_prefix=True)


@pytest.mark.parametrize("text, shown", [
    ("The image shows a red circle on the left. Image 1: red vs red yes.",
     "a red circle on the left"),
    ("The video shows a blue square moving up, flickering.", "a blue square moving up, flickering"),
    ("this clip shows two shapes", "two shapes"),
    ("A green triangle at the top", "A green triangle at the top"),
    ("  ", ""),
])
def test_description_is_the_first_sentence_without_its_lead(text, shown):
    assert description(text) == shown
