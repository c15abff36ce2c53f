"""Scoring the tiny base's descriptions against the world's evidence."""

from ur.reward.tiny_base import attribute_hits


def test_attribute_hits_compare_the_first_object():
    truth = "The image shows a red circle on the left and a blue square at the top."
    assert attribute_hits("The image shows a red square on the left.", truth) == {
        "colour": True, "shape": False, "place": True}
    assert attribute_hits("The image shows a green circle in the center.", truth) == {
        "colour": False, "shape": True, "place": False}


def test_clips_are_scored_on_motion_and_a_blurry_tail_is_ignored():
    truth = "The video shows an orange diamond moving up, flickering."
    assert attribute_hits("The video shows an orange diamond moving up.", truth, "video") == {
        "colour": True, "shape": True, "motion": True}
    said = "The video shows an orange diamond standing still."
    assert attribute_hits(said, truth, "video")["motion"] is False
    still = "The video shows a red circle standing still."
    assert attribute_hits(still, still, "video") == {"colour": True, "shape": True, "motion": True}


def test_a_description_naming_nothing_scores_nothing():
    hits = attribute_hits("The image shows", "The image shows a yellow triangle at the bottom.")
    assert hits == {"colour": False, "shape": False, "place": False}


def test_a_scene_with_no_shape_is_not_scored():
    assert attribute_hits("The image shows no shape.", "The image shows no shape.") == {}
