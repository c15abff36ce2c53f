"""Scoring the tiny base's descriptions against the world's evidence."""

from pathlib import Path

import pytest

from ur.cli import main
from ur.data.records import Media, PreferenceRecord
from ur.pretrain.tiny_vlm import attribute_hits, dense_conversations, last_mark

ROOT = Path(__file__).resolve().parents[2]


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


def _pair(**kw):
    base = dict(task="image_understanding", form="pairwise", source="s", id="1",
                prompt="What colour is the shape?", media=(Media("image", path="/x/a.png"),),
                responses=("It is red.", "It is blue."), label="first",
                evidence=("a red circle on the left",), response_scores=(1.0, 0.0))
    return PreferenceRecord(**{**base, **kw})


def test_dense_supervision_describes_answers_and_checks():
    convs = dense_conversations([_pair(), _pair(id="2", label="tie", response_scores=None)],
                                checks=True)
    targets = [c.target for c in convs]
    # the image once, the right answer of the non-tie pair once, both answers checked
    assert targets == ["The image shows a red circle on the left.", "It is red.",
                       "The image shows a red circle on the left. Answer: red vs red yes. Right.",
                       "The image shows a red circle on the left. Answer: blue vs red no. Wrong."]
    assert convs[3].instruction == ("Question: What colour is the shape?\nAnswer: It is blue.\n"
                                    "Check the answer.")
    assert len(dense_conversations([_pair()], answers=False)) == 1  # checks are opt-in
    assert [c.target for c in dense_conversations([_pair()], descriptions=False, answers=False,
                                                  checks=True)] == targets[2:]
    restated = dense_conversations([_pair()], descriptions=False, answers=False, checks=True,
                                   check_style="restate")
    assert restated[1].target == ("The image shows a red circle on the left. Answer: It is "
                                  "blue. Wrong.")


def test_the_last_mark_is_read():
    assert last_mark("The image shows x. Answer: It is red. Partly right.") == "Partly right"
    assert last_mark("Answer: Right. Wrong.") == "Wrong"
    assert last_mark("The image shows x. Answer: It is red") is None


def test_a_base_built_by_an_older_tiny_builder_is_rebuilt(tmp_path):
    """The cache marker holds the spec, the world format and the tiny build format: the
    same call returns the cached base, and a base whose marker names another tiny format
    is pretrained again."""
    import json

    from ur.models.tiny import VERSION
    from ur.pretrain.tiny_vlm import SPEC_FILE, TinyVLMSpec, ensure_tiny_vlm

    spec = TinyVLMSpec(hidden_size=32, num_layers=1, pretrain_steps=1, batch_size=4,
                        num_workers=0,
                        world={"out": str(tmp_path / "world"), "size": 48, "seed": 0})
    base = ensure_tiny_vlm(tmp_path / "base", spec)
    marker = base / SPEC_FILE
    wanted = json.loads(marker.read_text())["spec"]
    assert wanted["tiny_format"] == VERSION
    weights = (base / "model.safetensors").stat().st_mtime_ns
    ensure_tiny_vlm(tmp_path / "base", spec)
    assert (base / "model.safetensors").stat().st_mtime_ns == weights
    marker.write_text(json.dumps({"spec": {**wanted, "tiny_format": VERSION - 1}}))
    ensure_tiny_vlm(tmp_path / "base", spec)
    assert json.loads(marker.read_text())["spec"] == wanted
    assert (base / "model.safetensors").stat().st_mtime_ns != weights


def test_a_folder_pretrain_did_not_build_is_never_replaced(tmp_path, monkeypatch):
    """A trained judge named as the checkpoint of a config that also builds a base (the
    quickstart's, used to test that judge) stays as it is: building there would replace
    it with a fresh base. The command stops with a message naming the folder."""
    from ur.pretrain import TinyGeneratorSpec, ensure_tiny_generator
    from ur.pretrain.cache import NotABuiltBase
    from ur.pretrain.tiny_vlm import TinyVLMSpec, ensure_tiny_vlm

    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "model.safetensors").write_bytes(b"trained weights")
    (judge / "config.json").write_text("{}")
    spec = TinyVLMSpec(hidden_size=32, num_layers=1, pretrain_steps=1, batch_size=4,
                       num_workers=0, world={"out": str(tmp_path / "world"), "size": 48})
    with pytest.raises(NotABuiltBase, match="did not build"):
        ensure_tiny_vlm(judge, spec)
    with pytest.raises(NotABuiltBase, match="pretrain_generator"):
        ensure_tiny_generator(judge, TinyGeneratorSpec(steps=1))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # the stage stops with a message, no traceback
        main(["test", "--config", str(ROOT / "experiments" / "quickstart.yaml"),
              "--model.init_args.checkpoint", str(judge)])
    assert f"{judge} holds files that pretrain: did not build" in str(stop.value)
    assert (judge / "model.safetensors").read_bytes() == b"trained weights"
    assert sorted(p.name for p in judge.iterdir()) == ["config.json", "model.safetensors"]
    assert not (tmp_path / "world").exists() and not (tmp_path / "data").exists()
