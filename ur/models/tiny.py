"""Tiny vision-language checkpoints built from small configs, for CPU experiments and tests.

A tiny checkpoint is a real Hugging Face checkpoint: a byte-level BPE tokenizer trained
here on text the caller hands in (the synthetic world's captions, questions and answers;
``ur.models`` does not import ``ur.data``), the family's own image processor, video
processor and processor class, a chat template shaped like the family's released one, and
a randomly initialised model of the family's own class, all written with
``save_pretrained`` (safetensors). It loads through the same code as
``Qwen/Qwen2.5-VL-7B-Instruct``: ``AutoProcessor`` / ``AutoModelForImageTextToText``
(:func:`ur.models.loading.load_vlm`). Nothing downstream knows it is tiny.

Families and what one 84 px image or one 4-frame 84 px clip costs in the sequence:

==================  ===========================  ==============  ======================
family              classes                      image (84 px)   video (4 x 84 px)
==================  ===========================  ==============  ======================
``qwen2_vl``        Qwen2VLProcessor,            9 tokens        18 tokens (2 x 9:
                    Qwen2VLForConditional...     (3x3 merged)    frames go in pairs)
``qwen2_5_vl``      Qwen2_5_VLProcessor,         9               18
                    Qwen2_5_VLForConditional...
``llava_onevision`` LlavaOnevisionProcessor,     78 alone (base  37 (4 x 3x3 pooled
                    LlavaOnevisionForCond...     36 + anyres     + 1 newline)
                                                 36 + 6 rows);
                                                 37 each when a
                                                 prompt has
                                                 several images
==================  ===========================  ==============  ======================

Qwen processors get ``size = {"shortest_edge": 28*28, "longest_edge": image_size**2}``
for images and video frames, so an 84x84 input stays 84x84 (the released defaults would
upscale a small video frame to ~100k pixels, i.e. hundreds of tokens). Larger inputs are
shrunk to at most ``image_size**2`` pixels.

How to call the processor (transformers 5.23, checked on these checkpoints)
--------------------------------------------------------------------------
Text comes from the chat template; media placeholders are expanded by the processor::

    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    # messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
    #             "text": "..."}]}]; one {"type": "image"} / {"type": "video"} per item

Images: one (H, W, 3) uint8 array or PIL image per placeholder, flat over the batch, in
order (LLaVA-OneVision: nest them per sample, ``images=[[a, b], [c, d]]``, so it knows
which prompts hold several images)::

    batch = processor(text=texts, images=[img_0, img_1, ...], return_tensors="pt",
                      padding=True)

Qwen2-VL / Qwen2.5-VL keys: ``input_ids``, ``attention_mask``, ``mm_token_type_ids``
(0 text, 1 image, 2 video; the model needs it for M-RoPE whenever a grid is passed),
``pixel_values`` (sum of patches, 1176 = 3*2*14*14), ``image_grid_thw`` (n_images, 3) =
[1, 6, 6] per 84 px image. LLaVA-OneVision: ``input_ids``, ``attention_mask``,
``pixel_values`` (n_images, n_crops, 3, 84, 84), ``image_sizes``, ``batch_num_images``.

Videos: one (T, H, W, 3) uint8 array per placeholder, frames already chosen by us. Frame
sampling inside the processor is off (``do_sample_frames=False`` is saved in the video
processor), so every frame passed is used::

    batch = processor(text=texts, videos=[clip_0, clip_1, ...], return_tensors="pt",
                      padding=True,
                      video_metadata=[{"total_num_frames": 4, "fps": 2.0}, ...])

``video_metadata`` matters for Qwen2.5-VL only: ``fps`` is the rate of the frames
passed (frames given / seconds covered); it becomes ``second_per_grid_ts`` = 2 / fps,
the temporal M-RoPE step. Without it 24 fps is assumed. Qwen keys: ``input_ids``,
``attention_mask``, ``mm_token_type_ids``, ``pixel_values_videos``, ``video_grid_thw``
= [2, 6, 6] per 4-frame clip (an odd frame count is padded by repeating the last frame),
and for Qwen2.5-VL ``second_per_grid_ts``. LLaVA-OneVision: ``pixel_values_videos``
(n_videos, T, 3, 84, 84). Every key goes to the model as ``model(**batch)``.

Batched generation needs left padding: pass ``padding_side="left"`` in the processor
call (the saved tokenizers pad on the right, as the released ones do, for training).

Cache: :func:`build_tiny_vlm` writes ``ur_tiny.json`` (its arguments, a hash of the
texts, versions, file list, parameter counts) last; an existing directory whose
``ur_tiny.json`` has the same spec and whose files are all present is returned as is.
Builds go to a temporary sibling directory and are renamed into place, so an interrupted
build never leaves a half checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from ur.models.loading import parameter_counts

FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "llava_onevision")

MANIFEST = "ur_tiny.json"
VERSION = 2  # 2: silhouette channels in the pooling patch embedding

# Qwen2 / Qwen2-VL pre-tokenizer split (as in the released tokenizer.json): contractions,
# letter runs with one leading non-letter, single digits, punctuation runs, newlines,
# spaces.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)
_LLAVA_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")

_DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2-VL / Qwen2.5-VL instruct template: a default system turn, ChatML turns, each image
# or video as <|vision_start|><pad><|vision_end|> in content order, optional
# "Picture N: " / "Video N: " labels (add_vision_id). Renders the same strings as the
# released template.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + _DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# LLaVA-OneVision (Qwen2 text model) template, as its conversation format writes turns:
# "<|im_start|>user\n<image>\nquestion<|im_end|>\n<|im_start|>assistant\n". All images of a
# turn first, then videos, then the text; no default system turn; assistant text wrapped in
# {% generation %} so return_assistant_tokens_mask works, as in the released template.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% set media = namespace(seen=false) %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "<image>{% set media.seen = true %}"
    "{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "<video>{% set media.seen = true %}"
    "{% endfor %}"
    "{% if media.seen %}{{ '\\n' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}"
    "{% else %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# Text the template itself writes, so the tokenizer learns compact tokens for it too.
_SCAFFOLD_TEXTS = (
    "system\n" + _DEFAULT_SYSTEM,
    "user\n", "assistant\n",
    "Picture 1: ", "Picture 2: ", "Video 1: ", "Video 2: ",
)


def build_tiny_vlm(
    out_dir: str | os.PathLike,
    *,
    family: str = "qwen2_vl",
    texts: Iterable[str],
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    vision_depth: int = 2,
    vision_dim: int = 64,
    vision_heads: int = 4,
    image_size: int = 84,
    pixel_center: float = 240 / 255,
    pixel_scale: float = 0.25,
    pooling_patches: bool = True,
    rope_theta: float = 4.0,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """Build (or reuse) a tiny checkpoint of ``family`` in ``out_dir`` and return its path.

    ``texts`` trains the tokenizer (BPE up to ``vocab_size`` entries; the model's
    embedding is padded to a multiple of 64, as released Qwen vocabularies are). The text
    model has ``num_layers`` layers of width ``hidden_size`` with ``num_heads`` query and
    ``num_kv_heads`` key/value heads; the vision tower has ``vision_depth`` blocks of
    width ``vision_dim``; ``image_size`` is the largest image side the processors keep
    (Qwen: a multiple of 28; LLaVA-OneVision: the SigLIP input size, a multiple of 14).
    The processors normalise pixels as ``(x - pixel_center) / pixel_scale`` (x in 0..1),
    every channel alike; the default maps the synthetic world's grey background to zero.
    With CLIP's statistics instead, every patch embedding of a from-scratch tower is
    dominated by the background, and the image features of all images differ by about
    a tenth of their size (measured at initialisation: spread 0.004 against 0.045; 0.033
    against 0.038 with the background at zero), which keeps a tiny model's perception at
    chance for hundreds of steps. ``pooling_patches`` starts part of the patch embedding
    as colour-pooling, frame-change and silhouette filters for the same reason.

    ``rope_theta`` is the text model's RoPE base. Qwen's M-RoPE hands the temporal, height
    and width sections of each head the highest, middle and lowest rotary frequencies in
    that order; with the released base (1e6) and a 32-wide head the width section turns by
    under 2e-4 radians per visual token, so the language model cannot tell the left of an
    image from its right by position at all (the tower has no absolute positions). A
    tiny model sees at most a few hundred tokens, so the default base is 4: every
    frequency turns by 0.27-1 radian per position. Measured on the world's descriptions
    (1000 pretraining steps, one thread): place named right 0.23 -> 0.88, colour 0.35 ->
    1.0, motion 0.42 -> 0.71, loss 0.46 -> 0.20 (docs/tiny_base.md).
    Weights are initialised from ``seed``; the global RNG is left untouched.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    texts = [str(t) for t in texts]
    if not any(t.strip() for t in texts):
        raise ValueError("texts is empty: the tokenizer needs the text it will see")
    _check_shapes(family, hidden_size, num_heads, num_kv_heads, vision_dim, vision_heads,
                  image_size)
    specials = _QWEN_SPECIALS if family != "llava_onevision" else _LLAVA_SPECIALS
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(specials)} special tokens")

    out_dir = Path(out_dir)
    spec = {
        "format": VERSION,
        "family": family,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "vision_depth": vision_depth,
        "vision_dim": vision_dim,
        "vision_heads": vision_heads,
        "image_size": image_size,
        "pixel_center": pixel_center,
        "pixel_scale": pixel_scale,
        "pooling_patches": pooling_patches,
        "rope_theta": rope_theta,
        "tie_word_embeddings": tie_word_embeddings,
        "seed": seed,
        "texts_sha256": _texts_digest(texts),
        "n_texts": len(texts),
    }
    if _is_complete(out_dir, spec):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
        raise FileExistsError(
            f"{out_dir} exists, is not empty and holds no {MANIFEST}: not a tiny checkpoint, "
            "refusing to replace it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _build_into(tmp, spec, texts)
        _move_into_place(tmp, out_dir, spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The ``ur_tiny.json`` of a tiny checkpoint, or None for any other directory."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


# -- building -------------------------------------------------------------------------


def _check_shapes(family, hidden_size, num_heads, num_kv_heads, vision_dim, vision_heads,
                  image_size):
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(f"hidden_size {hidden_size}, num_heads {num_heads}, num_kv_heads "
                         f"{num_kv_heads}: heads must divide the width and kv heads the heads")
    head_dim = hidden_size // num_heads
    if head_dim % 8:
        raise ValueError(f"head_dim {head_dim} must be a multiple of 8 (M-RoPE sections)")
    if vision_dim % vision_heads or (vision_dim // vision_heads) % 4:
        raise ValueError(f"vision_dim {vision_dim} / vision_heads {vision_heads} must give a "
                         "head size that is a multiple of 4 (2-D rotary)")
    factor = 14 if family == "llava_onevision" else 28
    if image_size % factor:
        raise ValueError(f"image_size {image_size} must be a multiple of {factor} for {family}")


def _texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _is_complete(out_dir: Path, spec: dict) -> bool:
    manifest = read_manifest(out_dir)
    if not manifest or manifest.get("spec") != spec:
        return False
    return all((out_dir / name).is_file() for name in manifest.get("files", ()))


def _move_into_place(tmp: Path, out_dir: Path, spec: dict) -> None:
    if _is_complete(out_dir, spec):
        return  # another process built the same checkpoint meanwhile; leave it to its readers
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        # Another process finished the same build first: keep theirs if it is what we want.
        if not _is_complete(out_dir, spec):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_into(tmp: Path, spec: dict, texts: list[str]) -> None:
    import tokenizers
    import torch
    import transformers

    family = spec["family"]
    tokenizer = _train_tokenizer(texts, spec["vocab_size"], family)
    processor = _make_processor(family, tokenizer, spec["image_size"],
                                spec.get("pixel_center", 0.5), spec.get("pixel_scale", 0.5))
    config = _make_config(family, tokenizer, spec)
    model_class = {
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "llava_onevision": transformers.LlavaOnevisionForConditionalGeneration,
    }[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        model = model_class(config)
    if spec.get("pooling_patches"):
        _pooling_patch_embedding(model, family)
    model.generation_config = _generation_config(tokenizer)

    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)

    manifest = {
        "spec": spec,
        "built_with": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__.split("+")[0],
        },
        "model_class": model_class.__name__,
        "processor_class": type(processor).__name__,
        "tokenizer_vocab": len(tokenizer),
        "model_vocab": config.get_text_config().vocab_size,
        "tokens_per_image": _count_placeholders(processor, "image", spec["image_size"]),
        "tokens_per_video_4_frames": _count_placeholders(processor, "video", spec["image_size"]),
        "parameters": parameter_counts(model),
        "files": sorted(p.name for p in tmp.iterdir() if p.is_file()),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _pooling_patch_embedding(model, family: str, cells: int = 4) -> None:
    """Start the first channels of the patch embedding as pooling filters: the mean of
    each colour channel over each quadrant of the patch (12 channels per frame pair), for
    Qwen's two-frame patches the change between the frames (12 more, motion), then a
    silhouette: the mean of all three channels over each cell of a ``cells`` x ``cells``
    grid of the patch (16 more; of the first frame of a pair, so a moving object is not
    smeared). The background is 0 after the processor, so a silhouette cell says how much
    of it an object covers: a 14-pixel patch in cells of 3-4 pixels outlines the world's
    20-pixel shapes and shows a blurred edge. The other channels keep their random start.
    A tower trained from scratch otherwise spends hundreds of steps finding colour at all
    (MEASURED.md), and in 1000 steps never found shape (named right 0.23, chance 0.25;
    0.69 with the silhouette; docs/tiny_base.md)."""
    import torch

    tower = model.model.vision_tower if family == "llava_onevision" else model.model.visual
    conv = next(m for m in tower.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    w = conv.weight  # qwen: (dim, 3, t, p, p); siglip: (dim, 3, p, p)
    p = w.shape[-1]
    half = p // 2
    quads = [(slice(0, half), slice(0, half)), (slice(0, half), slice(half, p)),
             (slice(half, p), slice(0, half)), (slice(half, p), slice(half, p))]
    edges = [round(i * p / cells) for i in range(cells + 1)]
    grid = [(slice(edges[i], edges[i + 1]), slice(edges[j], edges[j + 1]))
            for i in range(cells) for j in range(cells)]
    filters = [("mean", q, c) for q in quads for c in range(3)]
    if w.dim() == 5:
        filters += [("change", q, c) for q in quads for c in range(3)]
    filters += [("silhouette", g, None) for g in grid]
    first = () if w.dim() == 4 else (0,)  # qwen: the first frame of a pair
    with torch.no_grad():
        for k, (kind, (rows, cols), c) in enumerate(filters[:w.shape[0]]):
            w[k].zero_()
            area = (rows.stop - rows.start) * (cols.stop - cols.start)
            if kind == "silhouette":
                w[(k, slice(None), *first, rows, cols)] = 1.0 / (3 * area)
            elif w.dim() == 4:
                w[k, c, rows, cols] = 1.0 / area
            elif kind == "mean":
                w[k, c, :, rows, cols] = 1.0 / (area * w.shape[2])
            else:
                w[k, c, 0, rows, cols] = -1.0 / area
                w[k, c, -1, rows, cols] = 1.0 / area


def _train_tokenizer(texts: list[str], vocab_size: int, family: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _QWEN_SPECIALS if family != "llava_onevision" else _LLAVA_SPECIALS
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*texts, *_SCAFFOLD_TEXTS], trainer)
    extra = {}
    if family == "llava_onevision":
        extra = {"image_token": "<image>", "video_token": "<video>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,  # decode(encode(x)) == x
        chat_template=QWEN_CHAT_TEMPLATE if family != "llava_onevision" else LLAVA_CHAT_TEMPLATE,
        extra_special_tokens=extra,
    )


def _make_processor(family: str, tokenizer, image_size: int, center: float = 0.5,
                    scale: float = 0.5):
    import transformers

    norm = {"image_mean": [center] * 3, "image_std": [scale] * 3}

    if family == "llava_onevision":
        # The released grid is 384 px x {1..6} per side; here multiples of image_size.
        pinpoints = [[image_size * i, image_size * j] for i in (1, 2, 3) for j in (1, 2, 3)]
        side = {"height": image_size, "width": image_size}
        return transformers.LlavaOnevisionProcessor(
            image_processor=transformers.LlavaOnevisionImageProcessor(
                size=side, image_grid_pinpoints=pinpoints, **norm),
            tokenizer=tokenizer,
            video_processor=transformers.LlavaOnevisionVideoProcessor(size=side, **norm),
            num_image_tokens=(image_size // 14) ** 2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
    size = {"shortest_edge": 28 * 28, "longest_edge": image_size * image_size}
    processor_class = {
        "qwen2_vl": transformers.Qwen2VLProcessor,
        "qwen2_5_vl": transformers.Qwen2_5_VLProcessor,
    }[family]
    return processor_class(
        image_processor=transformers.Qwen2VLImageProcessor(size=size, **norm),
        tokenizer=tokenizer,
        video_processor=transformers.Qwen2VLVideoProcessor(
            size=size, do_sample_frames=False, cap_pixels_per_frame=True, **norm),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _mrope_section(head_dim: int) -> list[int]:
    # Released Qwen2-VL: head_dim 128 -> [16, 24, 24] (time, height, width); same ratios.
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _make_config(family: str, tokenizer, spec: dict):
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    vocab = -(-len(tokenizer) // 64) * 64
    text = dict(
        vocab_size=vocab,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"],
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=spec["tie_word_embeddings"],
    )
    head_dim = spec["hidden_size"] // spec["num_heads"]
    if family == "llava_onevision":
        s = spec["image_size"]
        return transformers.LlavaOnevisionConfig(
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=spec["vision_dim"],
                intermediate_size=4 * spec["vision_dim"],
                num_hidden_layers=spec["vision_depth"],
                num_attention_heads=spec["vision_heads"],
                image_size=s,
                patch_size=14,
                vision_use_head=False,
            ),
            text_config=dict(model_type="qwen2", rope_parameters={
                "rope_type": "default", "rope_theta": spec["rope_theta"]}, **text),
            image_token_index=ids("<image>"),
            video_token_index=ids("<video>"),
            image_grid_pinpoints=[[s * i, s * j] for i in (1, 2, 3) for j in (1, 2, 3)],
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            vision_aspect_ratio="anyres_max_9",
            tie_word_embeddings=spec["tie_word_embeddings"],
        )
    text["rope_parameters"] = {
        "rope_type": "default", "rope_theta": spec["rope_theta"],
        "mrope_section": _mrope_section(head_dim)}
    vision = dict(
        depth=spec["vision_depth"],
        num_heads=spec["vision_heads"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    if family == "qwen2_vl":
        config_class = transformers.Qwen2VLConfig
        vision.update(embed_dim=spec["vision_dim"], hidden_size=spec["hidden_size"], mlp_ratio=4)
    else:
        config_class = transformers.Qwen2_5_VLConfig
        vision.update(
            hidden_size=spec["vision_dim"],
            intermediate_size=4 * spec["vision_dim"],
            out_hidden_size=spec["hidden_size"],
            window_size=112,  # 8x8 patches per attention window, as released
            fullatt_block_indexes=[spec["vision_depth"] - 1],
            tokens_per_second=2,
        )
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=spec["tie_word_embeddings"],
    )


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    # Instruct checkpoints stop at <|im_end|> or <|endoftext|>; greedy unless asked.
    return GenerationConfig(
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        pad_token_id=ids("<|endoftext|>"),
    )


def _count_placeholders(processor, kind: str, image_size: int) -> int:
    import numpy as np

    if kind == "image":
        content, media = {"type": "image"}, {"images": [np.zeros((image_size, image_size, 3),
                                                                  np.uint8)]}
        token_id = processor.image_token_id
    else:
        content, media = {"type": "video"}, {"videos": [np.zeros((4, image_size, image_size, 3),
                                                                  np.uint8)]}
        token_id = processor.video_token_id
    text = processor.apply_chat_template([{"role": "user", "content": [content]}])
    ids = processor(text=[text], **media)["input_ids"][0]
    return sum(1 for i in ids if i == token_id)
