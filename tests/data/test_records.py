from dataclasses import replace

import pytest

from ur.data.answers import pairwise_verdict, parse_pairwise, parse_score, pointwise_verdict
from ur.data.records import JudgeQuery, Media, PreferenceRecord, RecordError
from ur.data.templates import PromptTemplates, embedded_answer


def img(name="a.png"):
    return Media(kind="image", path=f"/data/{name}", field="image")


def vid(name="a.mp4"):
    return Media(kind="video", path=f"/data/{name}", field="video")


def test_pairwise_generation_record_and_swap():
    r = PreferenceRecord(task="image_generation", form="pairwise", source="s", id="1",
                         prompt="a red circle", media=(img("a"), img("b")), label="first",
                         evidence=("a red circle", "a blue circle"))
    s = r.swapped()
    assert s.label == "second"
    assert [m.path for m in s.media] == ["/data/b", "/data/a"]
    assert s.evidence == ("a blue circle", "a red circle")
    assert s.swapped() == r
    tie = PreferenceRecord(task="image_generation", form="pairwise", source="s", id="2",
                           prompt="x", media=(img(), img()), label="tie")
    assert tie.swapped().label == "tie"


def test_understanding_swap_moves_responses_not_media():
    r = PreferenceRecord(task="video_understanding", form="pairwise", source="s", id="1",
                         prompt="Which way?", media=(vid(),), responses=("left", "right"),
                         label="second")
    s = r.swapped()
    assert s.responses == ("right", "left") and s.label == "first" and s.media == r.media
    scored = PreferenceRecord(task="video_understanding", form="pairwise", source="s", id="1",
                              prompt="Which way?", media=(vid(),), responses=("left", "right"),
                              label="second", response_scores=(0.0, 1))
    assert scored.swapped().response_scores == (1.0, 0.0)


@pytest.mark.parametrize("scores", [(1.0,), (0.5, 1.5), (0.5, float("nan")), (0.5, "high")])
def test_response_scores_are_one_per_response_in_0_1(scores):
    with pytest.raises(RecordError) as e:
        PreferenceRecord(task="image_understanding", form="pairwise", source="s", id="1",
                         prompt="q?", media=(img(),), responses=("a", "b"), label="first",
                         response_scores=scores, file="f.json", row=3)
    assert e.value.field == "response_scores" and "row 3" in str(e.value)


@pytest.mark.parametrize("kwargs, field", [
    (dict(task="image_gen"), "task"),
    (dict(form="listwise"), "form"),
    (dict(prompt="  "), "prompt"),
    (dict(label="left"), "label"),
    (dict(media=(img(),)), "media"),
    (dict(media=(vid(), vid())), "video"),
])
def test_invalid_pairwise_records_name_the_field(kwargs, field):
    base = dict(task="image_generation", form="pairwise", source="s", id="1", prompt="p",
                media=(img(), img()), label="first", file="f.json", row=7)
    base.update(kwargs)
    with pytest.raises(RecordError) as e:
        PreferenceRecord(**base)
    assert e.value.field == field and e.value.file == "f.json" and e.value.row == 7
    assert "f.json" in str(e.value) and "row 7" in str(e.value)


@pytest.mark.parametrize("score, scale, ok", [
    (3, (1, 5), True), ("4.5", (1, 5), True), (6, (1, 5), False), ("high", (1, 5), False),
    (float("nan"), (1, 5), False), (3, (5, 1), False), (None, (1, 5), False)])
def test_pointwise_score_validation(score, scale, ok):
    kw = dict(task="image_understanding", form="pointwise", source="s", id="1", prompt="q?",
              media=(img(),), responses=("an answer",), score=score, scale=scale)
    if ok:
        r = PreferenceRecord(**kw)
        assert isinstance(r.score, float) and 0 <= r.normalized_score() <= 1
    else:
        with pytest.raises(RecordError) as e:
            PreferenceRecord(**kw)
        assert e.value.field in ("score", "scale")


def test_media_needs_exactly_one_content():
    with pytest.raises(RecordError):
        Media(kind="image")
    with pytest.raises(RecordError):
        Media(kind="video", data=b"xx")
    assert "bytes" in repr(Media(kind="image", data=b"\x00" * 10))


@pytest.mark.parametrize("text, label", [
    ("Image 1 shows a red circle. Image 2 shows a blue one. Image 2 is better", "second"),
    ("Overall Judgment: Answer 1 is better.", "first"),
    ("Both videos are equally good", "tie"),
    ("Video 2 is better.\n", "second"),
    ("I cannot decide.", None),
    ("", None),
])
def test_parse_pairwise_takes_the_last_verdict(text, label):
    assert parse_pairwise(text) == label


def test_parse_score_is_numeric_not_lexicographic():
    assert parse_score("blah Final Score: 10") == 10.0
    assert parse_score("Final Score: 9") < parse_score("Final Score: 10")
    assert parse_score("Final Score: 7.5") == 7.5
    assert parse_score("score is high") is None


@pytest.mark.parametrize("task, label", [
    ("image_generation", "first"), ("video_generation", "second"),
    ("image_understanding", "tie"), ("video_understanding", "first")])
def test_verdicts_round_trip(task, label):
    assert parse_pairwise(pairwise_verdict(task, label)) == label
    assert parse_score(pointwise_verdict(85)) == 85


def test_templates_state_evidence_before_verdict_and_bare_style():
    r = PreferenceRecord(task="image_generation", form="pairwise", source="s", id="1",
                         prompt="a red circle on the left", media=(img("a"), img("b")),
                         label="second", evidence=("a blue circle on the left",
                                                   "a red circle on the left"))
    t = PromptTemplates()
    assert "a red circle on the left" in t.instruction(r)
    target = t.target(r)
    assert target == ("Image 1 shows a blue circle on the left. Image 2 shows a red circle on "
                      "the left. Image 2 is better")
    assert parse_pairwise(target) == "second"
    assert PromptTemplates(answer_style="bare").target(r) == "Image 2 is better"
    p = PreferenceRecord(task="video_understanding", form="pointwise", source="s", id="1",
                         prompt="Which way does it move?", media=(vid(),), responses=("Left.",),
                         score=4, scale=(1, 5), evidence=("a red circle moving left",))
    assert "Left." in t.instruction(p) and "from 1 to 5" in t.instruction(p)
    assert t.target(p) == "The video shows a red circle moving left. Final Score: 4"


def test_understanding_targets_check_each_answer():
    r = PreferenceRecord(task="image_understanding", form="pairwise", source="s", id="1",
                         prompt="Describe the image.", media=(img(),),
                         responses=("A red circle on the left.", "a blue circle on the left"),
                         label="first", evidence=("a red circle on the left",),
                         response_scores=(1.0, 2 / 3))
    t = PromptTemplates(answer_checks=True, check_style="restate")
    assert t.target(r) == ("The image shows a red circle on the left. Answer 1: A red circle "
                           "on the left. Right. Answer 2: a blue circle on the left. Partly "
                           "right. Answer 1 is better")
    assert parse_pairwise(t.target(r)) == "first"
    assert parse_pairwise(t.target(r.swapped())) == "second"
    assert t.target(r.swapped()).index("Answer 1: a blue") > 0  # marks follow the answers
    assert PromptTemplates().target(r) == (  # off by default
        "The image shows a red circle on the left. Answer 1 is better")
    p = PreferenceRecord(task="video_understanding", form="pointwise", source="s", id="1",
                         prompt="Which way does it move?", media=(vid(),), responses=("Up.",),
                         score=1, scale=(1, 5), evidence=("a red circle moving left",),
                         response_scores=(0.0,))
    assert t.target(p) == ("The video shows a red circle moving left. Answer: Up. Wrong. "
                           "Final Score: 1")
    unknown = PreferenceRecord(task="image_understanding", form="pairwise", source="s", id="1",
                               prompt="q?", media=(img(),), responses=("a", "b"), label="tie",
                               evidence=("a red circle on the left",))
    assert t.target(unknown) == ("The image shows a red circle on the left. "
                                 "Both answers are equally good")


def test_claims_checks_put_each_claim_beside_the_evidence():
    r = PreferenceRecord(task="image_understanding", form="pairwise", source="s", id="1",
                         prompt="Describe the image.", media=(img(),),
                         responses=("A red circle on the left.", "a blue circle at the top"),
                         label="first", evidence=("a red circle on the left",),
                         response_scores=(1.0, 1 / 3))
    t = PromptTemplates(answer_checks=True, check_style="claims")
    assert t.target(r) == (
        "The image shows a red circle on the left. "
        "Answer 1: red vs red yes, circle vs circle yes, left vs left yes. Right. "
        "Answer 2: blue vs red no, circle vs circle yes, top vs left no. Partly right. "
        "Answer 1 is better")
    assert parse_pairwise(t.target(r.swapped())) == "second"
    odd = PreferenceRecord(task="image_understanding", form="pairwise", source="s", id="1",
                           prompt="What colour is the shape?", media=(img(),),
                           responses=("It is red.", "No idea."), label="first",
                           evidence=("a red circle on the left",), response_scores=(1.0, 0.0))
    assert t.target(odd) == ("The image shows a red circle on the left. Answer 1: red vs red "
                             "yes. Right. Answer 2: No idea. Wrong. Answer 1 is better")
    with pytest.raises(ValueError, match="check_style"):
        PromptTemplates(check_style="pairs")



def test_generation_checks_put_each_asked_value_beside_what_the_picture_shows():
    r = PreferenceRecord(task="image_generation", form="pairwise", source="s", id="1",
                         prompt="a red circle on the left", media=(img("a"), img("b")),
                         label="second",
                         evidence=("a red square on the left, blurry", "a red circle on the left"))
    t = PromptTemplates(generation_checks=True)
    assert t.target(r) == (
        "Image 1 shows a red square on the left, blurry. Image 1: red vs red yes, circle vs "
        "square no, left vs left yes, blurry; 2 faults. Image 2 shows a red circle on the "
        "left. Image 2: red vs red yes, circle vs circle yes, left vs left yes; 0 faults. "
        "Image 2 is better")
    assert parse_pairwise(t.target(r)) == "second"
    assert t.checked_candidates(r) == 2 and t.checked_candidates(r.query()) == 2
    # a missing object shows nothing of what was asked; an extra one was not asked for
    clip = PreferenceRecord(task="video_generation", form="pointwise", source="s", id="2",
                            prompt="a blue diamond moving up", media=(vid(),), score=1,
                            scale=(1, 10), evidence=("no shape",))
    assert t.target(clip) == ("The video shows no shape. Video: blue vs none no, diamond vs "
                              "none no, up vs none no; 3 faults. Final Score: 1")
    extra = replace(clip, evidence=("a blue diamond moving up and a red circle moving left",))
    assert "up vs up yes, none vs red no, none vs circle no, none vs left no; 3 faults" in \
        t.target(extra)
    # off by default, and not for captions outside the world's grammar or understanding
    assert PromptTemplates().target(r) == ("Image 1 shows a red square on the left, blurry. "
                                           "Image 2 shows a red circle on the left. "
                                           "Image 2 is better")
    odd = replace(r, prompt="something lovely")
    assert t.checked_candidates(odd) == 0 and "vs" not in t.target(odd)
    assert PromptTemplates(generation_checks=True, answer_style="bare").target(r) == \
        "Image 2 is better"


def test_a_verbatim_pointwise_target_gets_its_embedded_answer_checked():
    instruction = ("Question: What colour is the shape?\nAnswer: It is blue.\nRate how "
                   "correct the answer is for the image. Describe the image, then end with "
                   '"Final Score: X" (X from 0 to 100).')
    r = PreferenceRecord(task="image_understanding", form="pointwise", source="s", id="1",
                         prompt=instruction, instruction=instruction, media=(img(),), score=0,
                         scale=(0, 100), evidence=("a red circle on the left",),
                         target="The image shows a red circle on the left. Final Score: 0")
    t = PromptTemplates(answer_checks=True)
    assert t.target(r) == ("The image shows a red circle on the left. Answer: blue vs red no. "
                           "Wrong. Final Score: 0")
    assert t.checked_answers(r) == 1
    assert PromptTemplates().target(r) == r.target  # verbatim without checks
    assert PromptTemplates(answer_checks=True, check_style="restate").target(r) == r.target
    other = replace(r, target="Final Score: 0")  # not led by the evidence: left as it is
    assert t.target(other) == "Final Score: 0" and t.checked_answers(other) == 0
    # an answer whose claims cannot be read is restated, marked by the record's score
    unread = replace(r, instruction=instruction.replace("It is blue.", "It is equally."))
    assert t.target(unread) == ("The image shows a red circle on the left. Answer: It is "
                                "equally. Wrong. Final Score: 0")
    assert t.checked_answers(unread) == 1
    assert "Answer: It is equally. Partly right. Final Score: 50" in t.target(
        replace(unread, score=50, target="The image shows a red circle on the left. "
                                         "Final Score: 50"))
    assert t.checked_answers(replace(r, evidence=None)) == 1  # at inference: the judge checks
    pair = replace(r, form="pairwise", score=None, scale=None, label="first",
                   responses=("It is blue.", "It is red."), target="Answer 2 is better")
    assert t.target(pair) == "Answer 2 is better" and t.checked_answers(pair) == 0
    free = replace(r, instruction="How good is this answer?", prompt="How good?")
    assert t.target(free) == r.target and t.checked_answers(free) == 0
    assert embedded_answer(instruction) == ("What colour is the shape?", "It is blue.")


@pytest.mark.parametrize("score, mark", [(1.0, "Right."), (0.0, "Wrong."), (0.5, "Partly right."),
                                         (1 / 3, "Partly right.")])
def test_answer_marks(score, mark):
    from ur.data.templates import answer_mark

    assert answer_mark(score) == mark


def test_verbatim_conversation_is_used_as_is():
    r = PreferenceRecord(task="image_understanding", form="pointwise", source="llava_critic",
                         id="1", prompt="Rate it", media=(img(),), score=70, scale=(0, 100),
                         instruction="Rate it", target="Good. Final Score: 70")
    t = PromptTemplates()
    assert t.instruction(r) == "Rate it" and t.target(r) == "Good. Final Score: 70"
    with pytest.raises(ValueError):
        PromptTemplates(answer_style="terse")


def test_a_text_view_writes_the_evidence_before_the_instruction():
    from ur.data.collate import Conversation, TextView

    r = PreferenceRecord(task="image_understanding", form="pairwise", source="s", id="7",
                         prompt="What colour is the shape?", media=(img(),),
                         responses=("It is red.", "It is blue."), label="first",
                         evidence=("a red circle on the left",), response_scores=(1.0, 0.0))
    t = PromptTemplates(answer_checks=True)
    c = Conversation.of(TextView(r), t)
    assert c.media == () and c.record is r and c.target == t.target(r)
    assert c.instruction == "Text: a red circle on the left.\n" + t.instruction(r)
    assert Conversation.of(TextView(r), PromptTemplates(text_view="Seen: {evidence}. ")
                           ).instruction.startswith("Seen: a red circle on the left. Question:")
    with pytest.raises(RecordError, match="text view needs the record's evidence") as e:
        Conversation.of(TextView(replace(r, evidence=None)), t)
    assert e.value.row == "7" and e.value.field == "evidence"


def test_a_query_is_the_record_without_its_answer():
    from ur.data.collate import Conversation

    r = PreferenceRecord(task="image_understanding", form="pairwise", source="s", id="1",
                         prompt="What colour is the shape?", media=(img(),),
                         responses=("It is red.", "It is blue."), label="first",
                         evidence=("a red circle on the left",), response_scores=(1.0, 0.0),
                         file="f.json", row=3)
    q = r.query()
    assert isinstance(q, JudgeQuery) and q.target is None and not hasattr(q, "label")
    assert (q.source, q.id, q.responses, q.media, q.file, q.row) == ("s", "1", r.responses,
                                                                    r.media, "f.json", 3)
    t = PromptTemplates(answer_checks=True)
    assert t.instruction(q) == t.instruction(r)
    assert t.checked_answers(q) == t.checked_answers(r) == 2
    c = Conversation.of(q, t)
    assert c.target == "" and c.record is q and c.instruction == t.instruction(r)
    assert q.swapped().responses == ("It is blue.", "It is red.")
    assert q.swapped() == r.swapped().query()


def test_a_one_off_query_needs_no_label_and_is_validated():
    q = JudgeQuery(task="image_generation", form="pointwise", prompt="a red circle",
                   media=(img(),), scale=(1, 5))
    assert q.scale == (1.0, 5.0) and (q.source, q.id) == ("query", "0")
    assert PromptTemplates().instruction(q).startswith('Caption: "a red circle"')
    with pytest.raises(ValueError, match="only pairwise"):
        q.swapped()
    pair = JudgeQuery(task="image_generation", form="pairwise", prompt="x",
                      media=(img("a"), img("b")), evidence=("a", "b"))
    assert pair.swapped().media == (img("b"), img("a")) and pair.swapped().evidence == ("b", "a")
    for kwargs, field in ((dict(scale=None), "scale"), (dict(media=(img(), img())), "media"),
                          (dict(task="image_understanding", media=(img(),)), "responses"),
                          (dict(media=(vid(),)), "video")):
        with pytest.raises(RecordError) as e:
            JudgeQuery(**{**dict(task="image_generation", form="pointwise", prompt="p",
                                 media=(img(),), scale=(1, 5)), **kwargs})
        assert e.value.field == field


@pytest.mark.parametrize("form, missing", [("pairwise", dict(label=None)),
                                           ("pointwise", dict(score=None))])
def test_a_labelled_row_without_its_label_is_still_an_error(form, missing):
    kw = dict(task="image_generation", form=form, source="s", id="1", prompt="p",
              media=(img(), img()) if form == "pairwise" else (img(),), file="f.json", row=2,
              **(dict(label="first") if form == "pairwise" else dict(score=3, scale=(1, 5))))
    kw.update(missing)
    with pytest.raises(RecordError) as e:
        PreferenceRecord(**kw)
    assert e.value.field in ("label", "score") and "row 2" in str(e.value)


def _understanding(**kwargs):
    kw = dict(task="image_understanding", form="pairwise", source="s", id="1",
              prompt="What colour is the shape?", media=(img(),), responses=("red", "blue"),
              label="first", file="f.json", row=4)
    return PreferenceRecord(**{**kw, **kwargs})


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt="What colour\ud800?"), "prompt"),
    (dict(responses=("red", "blue\udfff")), "responses"),
    (dict(id="a\udc80"), "id"),
    (dict(evidence=("a red \ud83d circle",)), "evidence"),
    (dict(responses=(), instruction="Which\ud800?", target="Answer 1 is better."),
     "instruction"),
    (dict(responses=(), instruction="Which?", target="Answer 1\ud800 is better."), "target"),
])
def test_a_lone_surrogate_in_any_text_is_a_record_error(kwargs, field):
    """JSON's "\\ud800" escape reads as text that UTF-8 and tokenizers refuse."""
    with pytest.raises(RecordError) as e:
        _understanding(**kwargs)
    assert (e.value.file, e.value.row, e.value.field) == ("f.json", 4, field)
    assert "lone surrogate" in e.value.message
    with pytest.raises(RecordError, match="lone surrogate"):
        JudgeQuery(task="image_understanding", form="pairwise", prompt="x\ud800",
                   media=(img(),), responses=("a", "b"))


def test_a_character_outside_the_basic_plane_is_text():
    assert _understanding(prompt="Is it \U0001F600?").prompt == "Is it \U0001F600?"


BLANKS = ["\u200b", "\u200c\u200d", "\u2060", "\ufeff", "   ", " \u200b\t\ufeff\u200d "]


@pytest.mark.parametrize("text", BLANKS)
def test_a_prompt_of_invisible_characters_only_is_empty(text):
    with pytest.raises(RecordError, match="empty prompt") as e:
        _understanding(prompt=text)
    assert (e.value.row, e.value.field) == (4, "prompt")
    with pytest.raises(RecordError, match="empty prompt"):
        PreferenceRecord(task="image_generation", form="pairwise", source="s", id="1",
                         prompt=text, media=(img(), img()), label="first")


@pytest.mark.parametrize("text", BLANKS)
def test_an_answer_of_invisible_characters_only_is_empty(text):
    with pytest.raises(RecordError, match="empty answer") as e:
        _understanding(responses=("red", text))
    assert (e.value.row, e.value.field) == (4, "responses")


def test_invisible_characters_beside_visible_text_are_kept():
    r = _understanding(prompt="\u200bWhat colour?\ufeff", responses=("re\u200dd", "blue"))
    assert r.prompt == "\u200bWhat colour?\ufeff" and r.responses[0] == "re\u200dd"
