"""The oracle against the scenes the world renders: clean renders are read back exactly,
every degradation costs score, odd input never crashes, answers are scored right."""

from __future__ import annotations

import numpy as np
import pytest

from ur.data.records import Media
from ur.data.synthetic import degrade, language, oracle
from ur.data.synthetic.render import render_clip, render_image
from ur.data.synthetic.scene import (
    Obj,
    Scene,
    answer,
    make_question,
    parse_text,
    question_kinds,
    sample_scene,
)


def _scenes(kind: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, kind, 1 + (i % 2)) for i in range(n)], rng


def test_clean_images_are_read_back_exactly():
    scenes, _ = _scenes("image", 120)
    same_text = aligned = 0
    attrs = {"colour": 0, "shape": 0, "place": 0}
    for scene in scenes:
        r = oracle.score_image(render_image(scene), scene.caption())
        same_text += r.evidence == scene.caption()
        aligned += r.alignment == 1.0
        for o, d in zip(scene.objects, r.objects, strict=False):
            for a in attrs:
                attrs[a] += getattr(o, a) == getattr(d, a)
    n_obj = sum(len(s.objects) for s in scenes)
    assert same_text / len(scenes) >= 0.95
    assert aligned / len(scenes) >= 0.95
    for a, hits in attrs.items():
        assert hits / n_obj >= 0.95, a


def test_clean_clips_are_read_back_exactly():
    scenes, _ = _scenes("clip", 40)
    results = [oracle.score_video(render_clip(s, 84, 4), s.caption()) for s in scenes]
    assert np.mean([r.evidence == s.caption() for r, s in zip(results, scenes, strict=True)]) \
        >= 0.95
    assert np.mean([r.score for r in results]) >= 0.97
    motions = [(o.motion, d.motion) for s, r in zip(scenes, results, strict=True)
               for o, d in zip(s.objects, r.objects, strict=False)]
    assert np.mean([a == b for a, b in motions]) >= 0.95


@pytest.mark.parametrize("kind", ["image", "clip"])
def test_every_degradation_scores_below_clean(kind):
    rng = np.random.default_rng(7)
    errors = degrade.CONTENT_ERRORS[kind] + degrade.PIXEL_ERRORS[kind]
    words = {"noise": "noisy", "blur": "blurry", "flicker": "flickering",
             "stutter": "stuttering"}
    for error in errors:
        for difficulty in (0, 2):
            tried = 0
            while tried < 4:
                scene = sample_scene(rng, kind, 1)
                if not degrade.applicable(scene, error):
                    continue
                tried += 1
                render = (lambda s: render_image(s)) if kind == "image" else \
                    (lambda s: render_clip(s, 84, 4))
                score = oracle.score_image if kind == "image" else oracle.score_video
                clean = score(render(scene), scene.caption())
                if error in degrade.PIXEL_ERRORS[kind]:
                    bad = degrade.apply_pixels(render(scene), error, rng, difficulty)
                else:
                    bad = render(degrade.apply_content(scene, error, rng,
                                                       subtle=difficulty == 2))
                worse = score(bad, scene.caption())
                assert worse.score < clean.score - 0.04, (error, difficulty, worse.evidence)
                if error in words:
                    assert words[error] in worse.evidence, (error, worse.evidence)


def test_evidence_survives_the_video_codec(tmp_path):
    """What the oracle says of the rendered arrays is what it says of the stored mp4."""
    from ur.data.media import load_media, write_video

    rng = np.random.default_rng(3)
    same = 0
    for i in range(12):
        scene = sample_scene(rng, "clip", 1)
        frames = render_clip(scene, 84, 4)
        if i % 3 == 1:
            frames = degrade.apply_pixels(frames, "noise", rng, 1)
        elif i % 3 == 2:
            frames = degrade.apply_pixels(frames, "flicker", rng, 1)
        path = write_video(tmp_path / f"{i}.mp4", frames, fps=4)
        decoded = load_media(Media(kind="video", path=str(path)), 4)
        same += oracle.describe_video(frames) == oracle.describe_video(decoded)
    assert same >= 11


def test_blank_and_odd_input_never_crash():
    caption = "a red circle on the left"
    blank = np.full((84, 84, 3), 240, np.uint8)
    r = oracle.score_image(blank, caption)
    assert r.score == 0.0 and r.evidence == "no shape"
    odd = [None, "not pixels", [], np.zeros((0, 5, 3)), np.zeros((1, 1, 3), np.uint8),
           np.zeros((84, 84), np.uint8), np.random.default_rng(0).random((84, 84, 3)),
           np.full((84, 84, 4), 255, np.uint8), np.zeros((3, 84, 84), np.float32),
           np.full((84, 84, 3), np.nan), np.full((84, 84, 3), 1e9),
           np.random.default_rng(1).integers(0, 255, (37, 101, 3)).astype(np.uint8),
           np.zeros((2, 90, 3), np.uint8), np.array([[[True]]])]
    for x in odd:
        for fn in (oracle.score_image, oracle.score_video):
            res = fn(x, caption)
            assert 0.0 <= res.score <= 1.0 and isinstance(res.evidence, str)
    # A grey shape the palette cannot name is still found, without a colour word.
    grey = blank.copy()
    grey[30:55, 5:30] = (90, 90, 90)
    assert oracle.describe_image(grey) == "a square on the left"
    # A caption outside the grammar gives neutral alignment; no frames score 0.
    assert oracle.score_image(render_image(_scenes("image", 1)[0][0]), "a cat").alignment == 0.5
    assert oracle.score_video(np.zeros((0, 84, 84, 3), np.uint8), caption).score == 0.0


def test_blotchy_generated_pictures_score_without_error():
    """What an untrained generator draws: blotches the detector finds without a colour
    or a shape. Two such detections in one picture must still order and score."""
    rng = np.random.default_rng(0)
    caption = "a red circle on the left and a blue square at the top"
    for _ in range(40):
        coarse = rng.random((8, 8, 3))
        x = (np.kron(coarse, np.ones((4, 4, 1))) * 255).astype(np.uint8)
        for fn, pixels in ((oracle.score_image, x), (oracle.score_video, np.stack([x, x]))):
            res = fn(pixels, caption)
            assert 0.0 <= res.score <= 1.0


def test_score_any_picture_against_its_caption():
    """An object placed by hand (not by the sampler) is scored by what it shows."""
    scene = Scene((Obj("triangle", "blue", "right", 0.82, 0.5, 0.13),), "image")
    img = render_image(scene, 112)  # another size than the world's default
    assert oracle.score_image(img, "a blue triangle on the right").score == 1.0
    assert oracle.score_image(img, "a blue triangle on the left").alignment == 0.75
    assert oracle.score_image(img, "a red square on the left").alignment == 0.25
    two = oracle.score_image(img, "a blue triangle on the right and a red circle at the top")
    assert two.alignment == 0.5


def test_understanding_answers_correct_beats_wrong():
    from ur.data.synthetic.world import paraphrase, wrong_answer

    rng = np.random.default_rng(11)
    for kind in ("image", "clip"):
        for i in range(40):
            scene = sample_scene(rng, kind, 1 + i % 2)
            for asks in question_kinds(scene):
                q = make_question(scene, asks, scene.objects[i % len(scene.objects)])
                right = answer(scene, q)
                assert oracle.score_answer(scene, q.text, right) == 1.0, (q.text, right)
                assert oracle.score_answer(scene, q.text, paraphrase(right)) == 1.0
                wrong = wrong_answer(scene, q, rng, subtle=bool(i % 2))
                assert oracle.score_answer(scene, q.text, wrong) < 1.0, (q.text, wrong)
                if asks != "describe":
                    assert oracle.score_answer(scene, q.text, wrong) == 0.0


def test_answer_scoring_rules():
    scene = Scene((Obj("circle", "red", "left", 0.18, 0.5, 0.12),
                   Obj("square", "blue", "top", 0.5, 0.18, 0.12)), "image")
    assert oracle.score_answer(scene, "What colour is the circle?", "It is red.") == 1.0
    assert oracle.score_answer(scene, "What colour is the circle?", "Red or blue.") == 0.5
    assert oracle.score_answer(scene, "What colour is the circle?", "It is blue.") == 0.0
    assert oracle.score_answer(scene, "What colour is the circle?", "I do not know.") == 0.0
    assert oracle.score_answer(scene, "Where is the square?", "At the top.") == 1.0
    assert oracle.score_answer(scene, "What shape is the blue one?", "A square.") == 1.0
    assert oracle.score_answer(scene, "How many shapes are there?", "There are 2.") == 1.0
    assert oracle.score_answer(scene, "How many shapes are there?", "Just one.") == 0.0
    full = "A red circle on the left and a blue square at the top."
    assert oracle.score_answer(scene, "Describe the image.", full) == 1.0
    half = "A red square on the left and a blue circle at the bottom."
    assert oracle.score_answer(scene, "Describe the image.", half) == pytest.approx(3 / 6)
    assert oracle.score_answer(scene, "Describe the image.", "A red circle on the left.") == 0.5


def test_caption_grammar_round_trips():
    scenes, _ = _scenes("image", 30, seed=5)
    clips, _ = _scenes("clip", 30, seed=6)
    for s in scenes + clips:
        parsed = parse_text(s.caption())
        assert len(parsed) == len(s.objects)
        for e, o in zip(parsed, s.objects, strict=True):
            assert (e.colour, e.shape) == (o.colour, o.shape)
            assert (e.motion if s.kind == "clip" else e.place) == \
                (o.motion if s.kind == "clip" else o.place)


def test_answer_claims_pair_each_claim_with_the_evidence():
    assert oracle.answer_claims is language.answer_claims  # the oracle's name for it too
    ev = "a blue square at the top and a red circle on the left"
    assert language.answer_claims("What colour is the circle?", "It is blue.", ev) == [
        ("blue", "red")]
    assert language.answer_claims("What shape is the blue one?", "A square.", ev) == [
        ("square", "square")]
    assert language.answer_claims("Where is the square?", "On the left or at the top.", ev) == [
        ("left", "top"), ("top", "top")]
    assert language.answer_claims("How many shapes are there?", "Just one.", ev) == [
        ("one", "two")]
    # Objects are matched as the oracle matches them, whatever order the answer uses.
    said = "A red square on the left and a blue square at the top."
    assert language.answer_claims("Describe the image.", said, ev) == [
        ("red", "red"), ("square", "circle"), ("left", "left"),
        ("blue", "blue"), ("square", "square"), ("top", "top")]
    extra = "A red circle on the left, a blue square at the top and a green diamond."
    assert language.answer_claims("Describe the image.", extra, ev)[-3:] == [
        ("green", "none"), ("diamond", "none"), ("none", "none")]
    clip = "a green triangle moving up"
    assert language.answer_claims("Which way does the triangle move?", "It is still.", clip) == [
        ("still", "up")]
    assert language.answer_claims("Describe the video.", "A green circle moving up.", clip) == [
        ("green", "green"), ("circle", "triangle"), ("up", "up")]
    # An object the answer leaves out is claimed as "none": agreement stays the oracle's.
    assert language.answer_claims("Describe the image.", "A blue square at the top.", ev) == [
        ("blue", "blue"), ("square", "square"), ("top", "top"),
        ("none", "red"), ("none", "circle"), ("none", "left")]
    # Counts are words or digits, never "no" (a verdict word); "no shape" counts zero.
    assert language.answer_claims("How many shapes are there?", "There are 5.", ev) == [
        ("5", "two")]
    assert language.answer_claims("How many shapes are there?", "There is one.", "no shape") == [
        ("one", "zero")]
    assert language.answer_claims("Is the circle red?", "Yes, it is red.", ev) is None
    assert language.answer_claims("What colour is the shape?", "I do not know.", ev) is None
    assert language.answer_claims("Describe the image.", "Nothing.", ev) is None
    assert language.answer_claims("What colour is the shape?", "It is red.", "no shape") is None


def test_answer_claims_agree_with_the_oracles_scores():
    """The fraction of claims that match is the oracle's score of the answer."""
    from ur.data.synthetic.world import paraphrase, wrong_answer

    rng = np.random.default_rng(12)
    for kind in ("image", "clip"):
        for i in range(30):
            scene = sample_scene(rng, kind, 1 + i % 2)
            for asks in question_kinds(scene):
                q = make_question(scene, asks, scene.objects[i % len(scene.objects)])
                for said in (answer(scene, q), paraphrase(answer(scene, q)),
                             wrong_answer(scene, q, rng, subtle=bool(i % 2), errors=1 + i % 3),
                             answer(scene.with_objects(scene.objects[:1]), q)):  # one left out
                    claims = language.answer_claims(q.text, said, scene.caption())
                    held = sum(c == t for c, t in claims) / len(claims)
                    assert held == pytest.approx(oracle.score_answer(scene, q.text, said),
                                                 abs=1e-9), (q.text, said, claims)
