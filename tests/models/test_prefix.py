"""Answers scored on a prompt run once give the log-probabilities, and the gradients, of
each prompt + answer row run in full, for every family, with images and videos and
prompts of different lengths; and the vision tower sees each prompt's media once."""

import numpy as np
import pytest
import torch
from PIL import Image

from ur.align.losses import sequence_logps
from ur.data.collate import Conversation, ConversationCollator
from ur.data.pairs import PairCollator
from ur.data.records import Media, PreferenceRecord
from ur.models import FAMILIES, build_tiny_vlm, load_vlm
from ur.models.prefix import answer_logits

TEXTS = ["A red circle on the left.", "A blue square on the right moves up.",
         "Answer: yes", "Answer: no, it is green", "Is the circle red?"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate([(56, 56), (84, 56)]):
        path = root / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        images.append(Media("image", path=str(path)))
    frames = []
    for i in range(4):
        path = root / f"f{i}.png"
        Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(path)
        frames.append(str(path))
    return images, Media("frames", frames=tuple(frames))


def pairs(media, video: bool) -> list[PreferenceRecord]:
    images, clip = media
    prompts = ["Is the circle red?", "Where is the blue square, and does it move up or down?",
               "What colour?"]
    chosen = ["Answer: yes", "On the right; it moves up.", "Red"]
    rejected = ["Answer: no, it is green", "Left", "It is a blue square on the left, still."]
    task = "video_understanding" if video else "image_understanding"
    return [PreferenceRecord(task=task, form="pairwise", source="test", id=str(i), prompt=p,
                             media=(clip,) if video else (images[i % 2],),
                             responses=(c, r), label="first")
            for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True))]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    path = build_tiny_vlm(tmp_path_factory.mktemp("tiny") / request.param,
                          family=request.param, texts=TEXTS, num_layers=2)
    model, processor = load_vlm(path)
    return request.param, model.eval(), processor


def full_row_logps(model, processor, batch_pairs):
    """Each prompt + answer row on its own, right-padded: the plain way."""
    collate = ConversationCollator(processor, num_frames=4)
    convs = ([Conversation(p.media, p.prompt, p.responses[0], p) for p in batch_pairs]
             + [Conversation(p.media, p.prompt, p.responses[1], p) for p in batch_pairs])
    batch = collate(convs)
    labels = batch.pop("labels")
    batch.pop("records")
    return sequence_logps(model(**batch).logits, labels)


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_a_prompt_run_once_scores_answers_as_full_rows_do(family_model, media, video):
    family, model, processor = family_model
    batch_pairs = pairs(media, video)
    batch = PairCollator(processor, num_frames=4)(batch_pairs)
    assert batch["input_ids"].shape[0] == 3 and batch["answer_ids"].shape[0] == 6
    expected, expected_tokens = full_row_logps(model, processor, batch_pairs)
    for shared in (True, False):
        logps, tokens = sequence_logps(*answer_logits(model, batch, shared=shared))
        assert torch.equal(tokens, expected_tokens)
        torch.testing.assert_close(logps, expected, atol=2e-5, rtol=1e-5)


def test_gradients_match_and_the_vision_tower_sees_each_prompt_once(family_model, media):
    family, model, processor = family_model
    batch = PairCollator(processor, num_frames=4)(pairs(media, video=False))
    tower = next(m for name, m in model.named_modules()
                 if name.rsplit(".", 1)[-1] in ("visual", "vision_tower"))
    seen = []
    hook = tower.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    grads = {}
    try:
        for shared in (True, False):
            model.zero_grad()
            seen.clear()
            logps, _ = sequence_logps(*answer_logits(model, batch, shared=shared))
            (logps[:3] - 0.5 * logps[3:]).sum().backward()
            grads[shared] = {n: p.grad.clone() for n, p in model.named_parameters()
                             if p.grad is not None}
            grads[f"seen_{shared}"] = sum(seen)
    finally:
        hook.remove()
        model.zero_grad()
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name in grads[True]:
        torch.testing.assert_close(grads[True][name], grads[False][name], atol=1e-5,
                                   rtol=1e-4, msg=name)
    # the full rows give the tower every image twice
    assert grads["seen_False"] == 2 * grads["seen_True"] > 0


def test_gradient_checkpointing_runs_the_full_rows_with_the_same_figures(family_model, media):
    """Checkpointed layers drop caches while training, so the shared prompt cannot be
    kept there: the full rows run instead, and the figures stay the same."""
    family, model, processor = family_model
    batch = PairCollator(processor, num_frames=4)(pairs(media, video=False))
    with torch.no_grad():
        expected, _ = sequence_logps(*answer_logits(model, batch))
    on = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    on()
    try:
        model.train()
        # dropout is 0 in the tiny configs, so train mode changes nothing else
        logps, _ = sequence_logps(*answer_logits(model, batch, shared=True))
        logps.sum().backward()
    finally:
        off()
        model.eval()
        model.zero_grad()
    torch.testing.assert_close(logps.detach(), expected, atol=2e-5, rtol=1e-5)
