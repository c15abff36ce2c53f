"""load_vlm, the three parts of a VLM, and LoRA wrapping, on tiny real checkpoints."""

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from ur.models import (
    build_tiny_vlm,
    load_vlm,
    lora_wrap,
    parameter_counts,
    part_of,
    trainable_parts,
)

TEXTS = ["A red circle on the left.", "A blue square on the right.", "Image 1 is better",
         "Final Score: 3"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_vlm(root / family, family=family, texts=TEXTS, num_layers=2)
            for family in ("qwen2_vl", "llava_onevision")}


def _batch(processor, family, n=2):
    conversation = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": "A red circle."}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    images = [np.full((84, 84, 3), 40 * i, np.uint8) for i in range(n)]
    if family == "llava_onevision":
        images = [[im] for im in images]
    return processor(text=[text] * n, images=images, return_tensors="pt", padding=True)


def test_trust_remote_code_is_opt_in(checkpoints, monkeypatch):
    seen = []
    for cls in (transformers.AutoProcessor, transformers.AutoModelForImageTextToText):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_vlm(checkpoints["qwen2_vl"])
    assert seen == [False, False]
    load_vlm(checkpoints["qwen2_vl"], trust_remote_code=True)
    assert seen[2:] == [True, True]


def test_dtype_and_attention_pass_through(checkpoints):
    model, _ = load_vlm(checkpoints["qwen2_vl"], dtype="bfloat16", attn_implementation="eager")
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="dtype"):
        load_vlm(checkpoints["qwen2_vl"], dtype="bf17")


@pytest.mark.parametrize("family, expected", [
    ("qwen2_vl", {"model.visual.blocks.0.attn.qkv.weight": "vision",
                  "model.visual.patch_embed.proj.weight": "vision",
                  "model.visual.merger.mlp.0.weight": "projector",
                  "model.language_model.layers.0.mlp.up_proj.weight": "language",
                  "model.language_model.embed_tokens.weight": "language",
                  "lm_head.weight": "language"}),
    ("llava_onevision", {"model.vision_tower.encoder.layers.0.self_attn.q_proj.weight": "vision",
                         "model.multi_modal_projector.linear_1.weight": "projector",
                         "model.image_newline": "projector",
                         "model.language_model.layers.0.self_attn.q_proj.weight": "language",
                         "lm_head.weight": "language"}),
])
def test_every_parameter_has_a_part(checkpoints, family, expected):
    model, _ = load_vlm(checkpoints[family])
    names = dict(model.named_parameters())
    for name, part in expected.items():
        assert name in names and part_of(name) == part
    counts = parameter_counts(model)
    assert counts["total"] == counts["trainable"] > 0
    assert all(counts[p] > 0 for p in ("vision", "projector", "language"))
    assert part_of("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A."
                   "default.weight") == "language"
    assert part_of("model.some_new_tower.weight") is None


@pytest.mark.parametrize("vision, projector, language", [
    (False, True, False), (True, False, True), (False, False, True)])
def test_trainable_parts(checkpoints, vision, projector, language):
    model, _ = load_vlm(checkpoints["qwen2_vl"])
    counts = trainable_parts(model, vision=vision, projector=projector, language=language)
    wanted = {"vision": vision, "projector": projector, "language": language}
    for name, p in model.named_parameters():
        assert p.requires_grad == wanted[part_of(name)], name
    totals = parameter_counts(model)
    for part, on in wanted.items():
        assert counts[part] == (totals[part] if on else 0)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_lora_trains_adapters_and_disable_restores_base(checkpoints, family):
    model, processor = load_vlm(checkpoints[family])
    batch = _batch(processor, family)
    with torch.no_grad():
        base = model(**batch).logits
    peft_model = lora_wrap(model, r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and part_of(n) == "language" for n in trainable)

    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    peft_model.train()
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        tuned = peft_model(**batch).logits
        with peft_model.disable_adapter():
            reference = peft_model(**batch).logits
    assert not torch.allclose(tuned, base, atol=1e-4)
    torch.testing.assert_close(reference, base)


def test_lora_vision_and_projector(checkpoints):
    model, processor = load_vlm(checkpoints["qwen2_vl"])
    batch = _batch(processor, "qwen2_vl")
    with torch.no_grad():
        base = model(**batch).logits
    peft_model = lora_wrap(model, r=2, alpha=4, dropout=0.0, target_modules=["qkv", "q_proj"],
                           train_vision=True, train_projector=True)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert {part_of(n) for n in lora} == {"vision", "language"}
    assert all(".qkv." in n or ".q_proj." in n for n in lora)
    assert trainable - lora and all(
        "merger.modules_to_save" in n for n in trainable - lora)  # the projector, in full

    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    with torch.no_grad(), peft_model.disable_adapter():
        torch.testing.assert_close(peft_model(**batch).logits, base)


def test_lora_refuses_nothing_to_do(checkpoints):
    model, _ = load_vlm(checkpoints["qwen2_vl"])
    with pytest.raises(ValueError, match="trainable_parts"):
        lora_wrap(model, r=2, alpha=4, dropout=0.0, train_language=False, train_projector=True)
    with pytest.raises(ValueError, match="no linear layer"):
        lora_wrap(model, r=2, alpha=4, dropout=0.0, target_modules=["not_a_layer"])


def test_export_merges_lora_into_a_plain_checkpoint(checkpoints, tmp_path):
    from ur.models.export import save_hf

    model, processor = load_vlm(checkpoints["qwen2_vl"])
    batch = _batch(processor, "qwen2_vl")
    peft_model = lora_wrap(model, r=4, alpha=8, dropout=0.0)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        tuned = peft_model(**batch).logits

    merged = save_hf(peft_model, processor, tmp_path / "merged")
    assert not (merged / "adapter_config.json").exists()
    reloaded = transformers.AutoModelForImageTextToText.from_pretrained(merged).eval()
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, tuned, atol=1e-5, rtol=1e-5)
    # The model being trained is left wrapped: the merge happened on a copy.
    assert any("lora_" in n for n, _ in peft_model.named_parameters())

    adapter = save_hf(peft_model, processor, tmp_path / "adapter", merge_lora=False)
    assert (adapter / "adapter_config.json").exists()
    assert not (adapter / "model.safetensors").exists()
    from peft import PeftModel

    again = PeftModel.from_pretrained(load_vlm(checkpoints["qwen2_vl"])[0], adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, tuned, atol=1e-5, rtol=1e-5)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (any connection attempt fails the test), run from a folder holding
    ``checkpoints/``, as a user's project folder would."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "judge.ckpt").write_bytes(b"not a folder")
    return tmp_path


@pytest.mark.parametrize("given", [
    "./judge", "../judge", "/no/such/ur/checkpoint", "~/no-such-ur-checkpoint",
    "runs/judge/export", "checkpoints/judge", "export/model.safetensors", "judge.ckpt.bak.ckpt",
    "my judge", "C:\\runs\\judge"])
def test_a_missing_local_looking_path_is_an_error_not_a_download(offline, given):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder") as info:
        load_vlm(given)
    assert given in str(info.value) and "hf://" in str(info.value)


def test_a_checkpoint_file_is_not_a_checkpoint_folder(offline):
    with pytest.raises(NotADirectoryError, match="judge.ckpt is a file"):
        load_vlm("judge.ckpt")


def test_hub_ids_only_where_the_string_cannot_be_local(offline):
    from ur.models.loading import resolve_pretrained

    for repo in ("Qwen/Qwen2.5-VL-7B-Instruct", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
                 "gpt2"):
        assert resolve_pretrained(repo) == repo
    assert resolve_pretrained("hf://checkpoints/judge") == "checkpoints/judge"
    with pytest.raises(ValueError, match="not a hub id"):
        resolve_pretrained("hf://../judge")
    assert resolve_pretrained("checkpoints") == "checkpoints"  # an existing folder
    assert resolve_pretrained("~") == str(Path.home())
