"""Tiny checkpoints: built from configs, reloaded through the Auto classes, run for real."""

import json
import math
import os

import numpy as np
import pytest
import torch
import transformers

from ur.models import build_tiny_vlm, load_vlm, read_manifest

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
PLACES = ["left", "right", "top", "bottom"]
TEXTS = [f"A {c} {s} on the {p}." for c in COLOURS for s in SHAPES for p in PLACES] + [
    "Which image matches the caption better?",
    "Image 1 is better",
    "Image 2 is better",
    "Both images are equally good",
    "Final Score: 4",
    "The circle moves from the left to the right.",
]


def _image(seed=0, size=84):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _clip(seed=0, frames=4, size=84):
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def _conversation(kind, n=1, answer="Image 1 is better"):
    content = [{"type": kind} for _ in range(n)] + [{"type": "text", "text": "A red circle."}]
    return [{"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    path = build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "qwen2_vl", family="qwen2_vl",
                          texts=TEXTS)
    model, processor = load_vlm(path)
    return path, model, processor


def _finite_forward(model, batch):
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    vocab = model.config.get_text_config().vocab_size
    assert out.logits.shape == (*batch["input_ids"].shape, vocab)
    assert math.isfinite(out.loss.item())
    return out


def test_reload_is_the_family_classes(qwen2_vl):
    path, model, processor = qwen2_vl
    assert type(model) is transformers.Qwen2VLForConditionalGeneration
    assert type(processor) is transformers.Qwen2VLProcessor
    assert (path / "model.safetensors").is_file()
    manifest = read_manifest(path)
    assert manifest["spec"]["family"] == "qwen2_vl"
    assert manifest["tokens_per_image"] == 9 and manifest["tokens_per_video_4_frames"] == 18
    text = model.config.text_config
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    assert text.num_hidden_layers == 4 and text.hidden_size == 128


def test_width_positions_turn_the_rotary_embedding(qwen2_vl):
    # Two visual tokens of one row, two columns apart. M-RoPE gives the width axis the
    # lowest frequencies; with the released base (1e6) their rotations differ by < 1e-3
    # radians and a tiny language model cannot tell left from right.
    _, model, _ = qwen2_vl
    rope = model.model.language_model.rotary_emb
    positions = torch.tensor([[[5, 5]], [[6, 6]], [[5, 7]]])  # (t, h, w) x 1 x 2 tokens
    cos, sin = rope(torch.zeros(1, 2, 1), positions)
    angle = torch.atan2(sin[0], cos[0])  # (2 tokens, head_dim)
    t, h, w = model.config.text_config.rope_parameters["mrope_section"]
    turn = (angle[1] - angle[0]).abs()
    assert turn[:t + h].max() < 1e-6  # same time and row
    assert turn[t + h:t + h + w].min() > 0.5


def test_image_batch_forward(qwen2_vl):
    _, model, processor = qwen2_vl
    texts = [processor.apply_chat_template(_conversation("image")),
             processor.apply_chat_template(_conversation("image", n=2, answer="Image 2 is better"))]
    batch = processor(text=texts, images=[_image(0), _image(1), _image(2)],
                      return_tensors="pt", padding=True)
    assert set(batch) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                          "image_grid_thw"}
    assert batch["image_grid_thw"].tolist() == [[1, 6, 6]] * 3  # 84 px stays 84 px
    image_tokens = (batch["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert image_tokens == [9, 18]
    assert torch.equal(batch["mm_token_type_ids"] == 1, batch["input_ids"] == processor.image_token_id)
    _finite_forward(model, batch)


def test_video_batch_forward(qwen2_vl):
    _, model, processor = qwen2_vl
    texts = [processor.apply_chat_template(_conversation("video"))] * 2
    batch = processor(text=texts, videos=[_clip(0), _clip(1)], return_tensors="pt", padding=True,
                      video_metadata=[{"total_num_frames": 4, "fps": 2.0}] * 2)
    assert set(batch) == {"input_ids", "attention_mask", "mm_token_type_ids",
                          "pixel_values_videos", "video_grid_thw"}
    assert batch["video_grid_thw"].tolist() == [[2, 6, 6]] * 2  # frames go in pairs
    assert (batch["mm_token_type_ids"] == 2).sum(1).tolist() == [18, 18]
    _finite_forward(model, batch)


def test_greedy_generate(qwen2_vl):
    _, model, processor = qwen2_vl
    prompt = processor.apply_chat_template(_conversation("image")[:1], add_generation_prompt=True)
    batch = processor(text=[prompt, prompt], images=[_image(0), _image(1)], return_tensors="pt",
                      padding=True, padding_side="left")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        again = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 5)
    assert torch.equal(out, again)


def test_tokenizer_round_trips_the_words(qwen2_vl):
    _, _, processor = qwen2_vl
    tok = processor.tokenizer
    for text in [*TEXTS, "an unseen wörd, 42 times!\n  indented", " leading space"]:
        assert tok.decode(tok(text)["input_ids"]) == text
    for special in ["<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>",
                    "<|vision_start|>", "<|vision_end|>", "<|endoftext|>"]:
        assert len(tok(special)["input_ids"]) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # the world's words are whole tokens, not bytes
    assert len(tok("A red circle on the left.")["input_ids"]) <= 8


def test_chat_template_renders_like_qwen(qwen2_vl):
    _, _, processor = qwen2_vl
    conversation = [{"role": "user", "content": [
        {"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which is better?"}]}]
    assert processor.apply_chat_template(conversation, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|vision_end|>Which is better?<|im_end|>\n"
        "<|im_start|>assistant\n")
    with_ids = processor.apply_chat_template(conversation, add_vision_id=True)
    assert "Picture 1: <|vision_start|>" in with_ids and "Picture 2: " in with_ids
    system = [{"role": "system", "content": "Judge."}, {"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(system) == (
        "<|im_start|>system\nJudge.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")


def test_cache_hit_and_rebuild(tmp_path):
    out = tmp_path / "ckpt"
    kwargs = dict(family="qwen2_vl", texts=TEXTS, hidden_size=64, num_layers=1, num_heads=2,
                  num_kv_heads=1, vision_depth=1, vision_dim=32, vision_heads=2)
    assert build_tiny_vlm(out, **kwargs) == out
    weights = out / "model.safetensors"
    first = weights.stat().st_mtime_ns
    build_tiny_vlm(out, **kwargs)
    assert weights.stat().st_mtime_ns == first
    build_tiny_vlm(out, **{**kwargs, "seed": 1})
    assert weights.stat().st_mtime_ns != first
    assert json.loads((out / "ur_tiny.json").read_text())["spec"]["seed"] == 1
    rebuilt = weights.stat().st_mtime_ns
    build_tiny_vlm(out, **{**kwargs, "seed": 1, "texts": TEXTS + ["a new word: zebra"]})
    assert weights.stat().st_mtime_ns != rebuilt
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temp or old directories left


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def crash(self, *args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(transformers.ProcessorMixin, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="interrupted"):
        build_tiny_vlm(tmp_path / "ckpt", texts=TEXTS, num_layers=1, vision_depth=1)
    assert os.listdir(tmp_path) == []


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_vlm(tmp_path, texts=TEXTS)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_qwen2_5_vl_video(tmp_path):
    path = build_tiny_vlm(tmp_path / "q25", family="qwen2_5_vl", texts=TEXTS)
    model, processor = load_vlm(path)
    assert type(model) is transformers.Qwen2_5_VLForConditionalGeneration
    text = processor.apply_chat_template(_conversation("video", answer="Video 1 is better"))
    batch = processor(text=[text], videos=[_clip()], return_tensors="pt",
                      video_metadata=[{"total_num_frames": 4, "fps": 2.0}])
    assert batch["second_per_grid_ts"].tolist() == [1.0]  # temporal patch 2 / 2 fps
    assert (batch["mm_token_type_ids"] == 2).sum().item() == 18
    _finite_forward(model, batch)


def test_llava_onevision_image(tmp_path):
    path = build_tiny_vlm(tmp_path / "ov", family="llava_onevision", texts=TEXTS)
    model, processor = load_vlm(path)
    assert type(model) is transformers.LlavaOnevisionForConditionalGeneration
    text = processor.apply_chat_template(_conversation("image"))
    assert text == ("<|im_start|>user\n<image>\nA red circle.<|im_end|>\n"
                    "<|im_start|>assistant\nImage 1 is better<|im_end|>\n")
    batch = processor(text=[text], images=[[_image()]], return_tensors="pt")
    assert (batch["input_ids"] == processor.image_token_id).sum().item() == 78
    _finite_forward(model, batch)


def test_bad_arguments():
    with pytest.raises(ValueError, match="family"):
        build_tiny_vlm("unused", family="gpt", texts=TEXTS)
    with pytest.raises(ValueError, match="empty"):
        build_tiny_vlm("unused", texts=[" "])
    with pytest.raises(ValueError, match="multiple of 28"):
        build_tiny_vlm("unused", texts=TEXTS, image_size=64)


def test_background_is_zero_and_patches_start_as_colour_pools(qwen2_vl):
    """The tiny processor maps the world's grey background to 0, and the first channels of
    the patch embedding start as per-quadrant colour means, then frame changes, then a
    silhouette (the mean over the three colours of each 4 x 4 cell of the first frame)."""
    _, model, processor = qwen2_vl
    grey = np.full((84, 84, 3), 240, dtype=np.uint8)
    out = processor.image_processor(images=[grey], return_tensors="pt")
    assert out["pixel_values"].abs().max() < 1e-5
    img = _image(3)
    pv = processor.image_processor(images=[img], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        emb = model.model.visual.patch_embed(pv)
    x = pv.view(-1, 3, 2, 14, 14)
    # channel k = 3 * quadrant + colour; quadrant 0 is the top-left 7 x 7
    assert torch.allclose(emb[:, 0], x[:, 0, :, :7, :7].mean(dim=(1, 2, 3)), atol=1e-5)
    assert torch.allclose(emb[:, 3 * 3 + 2], x[:, 2, :, 7:, 7:].mean(dim=(1, 2, 3)), atol=1e-5)
    change = x[:, 1, 1, :7, 7:].mean(dim=(1, 2)) - x[:, 1, 0, :7, 7:].mean(dim=(1, 2))
    assert torch.allclose(emb[:, 12 + 3 * 1 + 1], change, atol=1e-5)
    # cell (1, 2) of the 4 x 4 grid spans rows 4-6 and columns 7-9 of a 14-pixel patch
    cell = x[:, :, 0, 4:7, 7:10].mean(dim=(1, 2, 3))
    assert torch.allclose(emb[:, 24 + 4 * 1 + 2], cell, atol=1e-5)
