"""The judge's scores of generated samples (JudgeSampleScores), on the miniature
quickstart's judge and rendered world scenes."""

import numpy as np
import pytest
from PIL import Image

from ur.data.synthetic.render import render_clip, render_image
from ur.data.synthetic.scene import sample_scene
from ur.reward.sample_scores import JudgeSampleScores


@pytest.fixture(scope="module")
def scorer(mini_fit):
    cb = JudgeSampleScores(str(mini_fit / "export"), size=84, batch_size=8)
    cb._load("cpu")
    return cb


def test_image_scores_are_the_judges_own_on_the_unit_scale(scorer):
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "image", 1) for _ in range(3)]
    images = np.stack([render_image(s, 32) for s in scenes])
    captions = [s.caption() for s in scenes]
    got = scorer.score(images, captions)
    assert len(got) == 3 and all(0.0 <= v <= 1.0 for v in got)
    # The same question asked through the judge's one-off API, the image resized alike.
    for image, caption, value in zip(images, captions, got, strict=True):
        big = Image.fromarray(scorer._resize(image))
        j = scorer.judge.score("image_generation", caption, big, scale=(1, 5))
        assert value == pytest.approx(0.0 if j.score is None else (j.score - 1) / 4)


def test_clips_are_judged_as_frames_at_the_judges_size(scorer):
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, "clip", 1) for _ in range(2)]
    clips = np.stack([render_clip(s, 32, 4) for s in scenes])
    assert scorer._resize(clips[0]).shape == (4, 84, 84, 3)
    got = scorer.score(clips, [s.caption() for s in scenes])
    assert len(got) == 2 and all(0.0 <= v <= 1.0 for v in got)
