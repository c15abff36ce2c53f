"""Pairs by the oracle from a policy's samples: the world's questions, seeded sampling from
a tiny base, oracle scores checked by hand and against the world's own, best-vs-worst
pairs, counted drops, the samples and pairs on disk, and `ur construct oracle-pairs`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ur.cli import main
from ur.construct.candidates import (
    candidates_of,
    read_candidates,
    sample_answers,
    write_candidates,
)
from ur.construct.oracle_pairs import oracle_pairs
from ur.data.datamodule import WorldSpec, load_records
from ur.data.questions import Question, question_of, world_questions
from ur.data.records import Media, RecordError
from ur.data.sources import PAIR_SCHEMAS, read_source, write_pairs
from ur.data.synthetic.oracle import oracle_accuracy, oracle_score
from ur.data.synthetic.world import build_item
from ur.models.loading import load_vlm
from ur.pretrain import TinyVLMSpec, ensure_tiny_vlm

WORLD = {"size": 48, "seed": 0, "difficulty": 1, "splits": [0.8, 0.1, 0.1]}


@pytest.fixture(scope="module")
def world(mini) -> Path:
    """The session's miniature world (built here if no test has built it yet)."""
    WorldSpec(out=str(mini["world"]), **WORLD).manifest()
    return mini["world"]


@pytest.fixture(scope="module")
def base(world, tmp_path_factory) -> Path:
    """A tiny policy pretrained for two steps: it answers, mostly nonsense."""
    spec = TinyVLMSpec(hidden_size=32, num_layers=1, pretrain_steps=2, batch_size=4,
                       num_workers=0, world={"out": str(world), **WORLD})
    return ensure_tiny_vlm(tmp_path_factory.mktemp("policy") / "base", spec)


@pytest.fixture(scope="module")
def policy(base):
    return load_vlm(base)


@pytest.fixture(scope="module")
def questions(world) -> list[Question]:
    return world_questions(world, "train")


def image_question(prompt: str, evidence: str) -> Question:
    return Question(id="q", task="image_understanding", prompt=prompt,
                    media=(Media(kind="image", path="/nowhere/q.png"),), evidence=(evidence,))


def video_question(prompt: str, evidence: str) -> Question:
    return Question(id="v", task="video_understanding", prompt=prompt,
                    media=(Media(kind="video", path="/nowhere/v.mp4"),), evidence=(evidence,))


COLOUR = image_question("What colour is the shape?", "an orange diamond at the bottom")


# ---------------------------------------------------------------------------- questions

def test_world_questions_come_from_both_forms_once_each(questions):
    sources = {q.source for q in questions}
    assert {"llava_critic", "llava_sft"} & sources and {"vl_rewardbench"} & sources
    assert all(q.evidence and "Answer" not in q.prompt for q in questions)
    keys = [(q.media[0].path, q.prompt) for q in questions]
    assert len(set(keys)) == len(keys)
    assert {q.task for q in questions} == {"image_understanding", "video_understanding"}


def test_a_subset_of_questions_is_seeded(world, questions):
    a = world_questions(world, "train", max_questions=5, seed=1)
    assert a == world_questions(world, "train", max_questions=5, seed=1)
    assert len(a) == 5 and all(q in questions for q in a)


# ----------------------------------------------------------------------------- sampling

def test_sampling_gives_n_answers_per_question(policy, questions):
    model, processor = policy
    qs = questions[:2] + [q for q in questions if q.task == "video_understanding"][:1]
    answers = sample_answers(model, processor, qs, n=3, max_new_tokens=8, batch_size=2)
    assert len(answers) == 3 and all(len(a) == 3 for a in answers)
    assert all(isinstance(t, str) and t == t.strip() for a in answers for t in a)


def test_sampling_is_reproducible_with_a_seed(policy, questions):
    model, processor = policy
    qs = questions[:3]
    first = sample_answers(model, processor, qs, n=2, max_new_tokens=8, seed=5)
    assert sample_answers(model, processor, qs, n=2, max_new_tokens=8, seed=5) == first
    assert sample_answers(model, processor, qs, n=2, max_new_tokens=8, seed=6) != first


def test_sampling_leaves_the_global_random_state_alone(policy, questions):
    model, processor = policy
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample_answers(model, processor, questions[:1], n=2, max_new_tokens=4, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_greedy_decoding_gives_one_answer(policy, questions):
    model, processor = policy
    with pytest.raises(ValueError, match="n=1"):
        sample_answers(model, processor, questions[:1], n=2, temperature=0.0)
    greedy = sample_answers(model, processor, questions[:2], n=1, temperature=0.0,
                            max_new_tokens=6, seed=0)
    assert greedy == sample_answers(model, processor, questions[:2], n=1, temperature=0.0,
                                    max_new_tokens=6, seed=1)


# ------------------------------------------------------------------------------- oracle

@pytest.mark.parametrize("question, answer, score", [
    (COLOUR, "It is orange.", 1.0),
    (COLOUR, "It is purple.", 0.0),
    (COLOUR, "It is orange or purple.", 0.5),
    (COLOUR, "banana", 0.0),
    (image_question("Describe the image.", "an orange diamond at the bottom"),
     "An orange circle at the bottom.", 2 / 3),
    (image_question("Where is the diamond?", "an orange diamond at the bottom"),
     "It is at the bottom.", 1.0),
    (image_question("How many shapes are there?",
                    "a red circle on the left and a blue square at the top"),
     "There are two shapes.", 1.0),
    (image_question("What colour is the square?",
                    "a red circle on the left and a blue square at the top"),
     "It is red.", 0.0),
    (video_question("Which way does the triangle move?", "a red triangle moving down"),
     "It is moving down.", 1.0),
    (video_question("Which way does the triangle move?", "a red triangle moving down"),
     "It is moving up.", 0.0),
])
def test_oracle_scores_by_hand(question, answer, score):
    assert oracle_score(question, answer) == pytest.approx(score)


def test_oracle_scores_agree_with_the_worlds_own():
    """The world scores its answers against the scene itself; scoring them against the
    scene's description (the evidence) gives the same, one and two objects alike."""
    for task in ("image_understanding", "video_understanding"):
        for form in ("pairwise", "pointwise"):
            for i in range(40):
                item = build_item(task, form, i, seed=2, difficulty=2, image_size=24,
                                  num_frames=2)
                q = (image_question if task == "image_understanding" else video_question)(
                    item.prompt, item.evidence[0])
                for answer, score in zip(item.responses, item.oracle_scores, strict=True):
                    assert oracle_score(q, answer) == pytest.approx(score), (q, answer)


def test_oracle_accuracy_is_the_mean_score_of_one_answer_each():
    qs = [COLOUR] * 3
    assert oracle_accuracy(qs, ["It is orange.", "It is red.", "It is orange or red."]) == 0.5


def test_questions_without_evidence_are_refused():
    bare = Question(id="b", task="image_understanding", prompt="What colour is the shape?",
                    media=(Media(kind="image", path="/nowhere/b.png"),))
    with pytest.raises(ValueError, match="evidence"):
        oracle_pairs([COLOUR, bare], [["It is orange.", "It is red."]] * 2)
    with pytest.raises(ValueError, match="evidence"):
        oracle_accuracy([bare], ["It is orange."])


# -------------------------------------------------------------------------------- pairs

def test_pairs_take_the_best_and_the_worst():
    answers = ["It is purple.", "It is orange or purple.", "It is orange.", "It is green."]
    (pair,), stats = oracle_pairs([COLOUR], [answers])
    assert pair.form == "pairwise" and pair.task == "image_understanding"
    assert pair.label == "first" and pair.prompt == COLOUR.prompt and pair.media == COLOUR.media
    assert pair.responses == ("It is orange.", "It is purple.")  # the first of the worst
    assert pair.response_scores == (1.0, 0.0)
    assert pair.meta["chosen_index"] == 2 and pair.meta["rejected_index"] == 0
    assert pair.id == "q-c2-r0" and stats.pairs == 1


def test_ties_small_gaps_and_empty_answers_are_dropped_and_counted():
    answers = [["It is orange.", "Orange."],                   # both right: a tie
               ["It is orange.", "It is orange or purple."],   # 1 vs 0.5: under min_gap
               ["", "It is orange."],                          # one usable answer
               ["It is orange.", "It is red."]]                # a pair
    pairs, stats = oracle_pairs([COLOUR] * 4, answers, min_gap=0.6)
    assert [p.responses for p in pairs] == [("It is orange.", "It is red.")]
    assert stats.dropped == {"too_few_answers": 1, "tie": 1, "small_gap": 1}
    assert stats.questions == 4 and stats.pairs == 1 and stats.pairs_by_task == {
        "image_understanding": 1}
    assert stats.samples == 8 and stats.empty_samples == 1
    assert stats.mean_sample_score == pytest.approx(5.5 / 8)
    assert stats.share_right_and_wrong == 0.75


def test_pairs_agree_with_the_worlds_labels_and_round_trip(world, tmp_path):
    """The world's own pairwise answers, paired by the oracle, choose what the world
    prefers; written with the pair writers and read back, they are the same pairs."""
    records = [r for recs in load_records(WorldSpec(out=str(world), **WORLD).sources("train"))[0]
               for r in recs if r.task.endswith("understanding") and r.form == "pairwise"
               and r.label != "tie"]
    pairs, stats = oracle_pairs([question_of(r) for r in records],
                                [list(r.responses) for r in records])
    assert stats.pairs == len(records) > 0
    for r, p in zip(records, pairs, strict=True):
        assert p.responses[0] == r.responses[0 if r.label == "first" else 1]
    for task in ("image_understanding", "video_understanding"):
        written = [p for p in pairs if p.task == task]
        assert written, task
        path = write_pairs(PAIR_SCHEMAS[task], tmp_path / f"{task}.jsonl", written,
                           media_root=world)
        back = list(read_source(PAIR_SCHEMAS[task], path, media_root=world))
        assert [(b.prompt, b.media[0].path, b.responses, b.response_scores) for b in back] == \
            [(p.prompt, p.media[0].path, p.responses, p.response_scores) for p in written]


# --------------------------------------------------------------------------- candidates

def test_candidates_round_trip(questions, tmp_path):
    qs = questions[:3]
    made = candidates_of(qs, [["It is red.", "A blue circle."]] * 3, model="some/policy",
                         seed=3, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=16)
    path = write_candidates(tmp_path / "candidates.jsonl", made)
    back = read_candidates(path)
    assert back == made
    assert [c.n for c in back] == [2, 2, 2] and back[0].question.evidence == qs[0].evidence


def test_a_broken_candidates_row_names_its_row_and_field(questions, tmp_path):
    made = candidates_of(questions[:2], [["a"], ["b"]], model="m", seed=0, temperature=1.0,
                         top_p=1.0, max_new_tokens=8)
    path = write_candidates(tmp_path / "c.jsonl", made)
    rows = path.read_text().splitlines()
    bad = json.loads(rows[1])
    bad["n"] = 3
    path.write_text(rows[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError) as e:
        read_candidates(path)
    assert e.value.row == 1 and e.value.field == "n"


def test_construction_from_candidates_stops_before_any_work_when_media_lie_outside_its_root(
        world, questions, tmp_path):
    from ur.construct.predict import PromptsDataModule

    made = candidates_of(questions[:2], [["a", "b"], ["c", "d"]], model="m", seed=0,
                         temperature=1.0, top_p=1.0, max_new_tokens=8)
    path = write_candidates(tmp_path / "c.jsonl", made)
    out = tmp_path / "pairs"
    dm = PromptsDataModule(out=str(out), candidates=str(path))  # root: the file's folder
    with pytest.raises(ValueError, match=r"c\.jsonl: row 0: .*outside the media root.*media_root"):
        dm.setup("predict")
    assert not out.exists()
    dm = PromptsDataModule(out=str(out), candidates=str(path), media_root=str(world))
    dm.setup("predict")
    assert dm.total == 2 and len(dm.items) == 2


# ---------------------------------------------------------------------------------- CLI

def test_cli_builds_candidates_pairs_and_a_summary(world, base, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["construct", "oracle-pairs", "--policy", str(base), "--world", str(world),
                 "--out", str(out), "--n", "2", "--max-questions", "4",
                 "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    candidates = read_candidates(out / "candidates.jsonl")
    assert len(candidates) == 4 and all(c.n == 2 and c.model == str(base) for c in candidates)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == 4 and summary["samples"] == 8
    assert summary["pairs"] + sum(summary["dropped"].values()) == 4
    assert summary["media_root"] == str(world.resolve())
    assert 0 <= summary["mean_sample_score"] <= 1 and 0 <= summary["share_right_and_wrong"] <= 1
    for task, name in (("image_understanding", "image_pairs.jsonl"),
                       ("video_understanding", "video_pairs.jsonl")):
        back = list(read_source(PAIR_SCHEMAS[task], out / name, media_root=world))
        assert len(back) == summary["pairs_by_task"].get(task, 0)


def test_cli_without_a_world_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no synthetic world"):
        main(["construct", "oracle-pairs", "--policy", "unused", "--world",
              str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("prompt", ["", "   ", "\u200b\u200d", "\ufeff \u2060"])
def test_a_question_of_invisible_characters_only_is_refused(prompt):
    with pytest.raises(RecordError, match="empty") as err:
        image_question(prompt, "a red circle on the left")
    assert err.value.field == "prompt"
