"""Text-to-image and text-to-video generators: loading, the denoising interface that
training uses, and the tiny pixel-space pipeline built for CPU.

:func:`load_generator` loads a diffusers pipeline by hub id or local folder, as a user
does (``DiffusionPipeline.from_pretrained``), with remote code off unless asked for and
safetensors weights. :class:`Denoising` is what pretraining and Diffusion-DPO see of a
generator, whatever its family: the trainable denoiser, how text is encoded, how media
become the denoiser's space (VAE latents, or the pixels themselves), the noise process
(DDPM-style epsilon or v prediction, or flow matching) and one denoiser call.

The tiny generators (:func:`build_tiny_generator`) are real diffusers pipelines:
:class:`PixelDiffusionPipeline` holds a diffusers transformer (``SD3Transformer2DModel``
for images, ``WanTransformer3DModel`` for clips) working on pixels, a ``CLIPTextModel``
with a word-level tokenizer trained here on the caller's captions, and a diffusers
scheduler (``FlowMatchEulerDiscreteScheduler`` for flow matching, ``DDIMScheduler`` for
epsilon or v prediction). It is saved with ``save_pretrained`` and loaded with
``from_pretrained`` through diffusers' own loader; ``load_generator`` picks this class
when a folder's ``model_index.json`` names it (diffusers resolves only its own class
names from that file).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import diffusers
import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    WanTransformer3DModel,
)
from diffusers.utils import BaseOutput
from torch import Tensor

from ur.models.loading import resolve_pretrained

Prediction = Literal["epsilon", "v", "flow"]

TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[BOS]", "eos": "[EOS]"}
# CLIPTextModel pools at the first eos token unless eos_token_id == 2 (its legacy
# "highest id" pooling), so [EOS] takes id 3.
TOKEN_IDS = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}


# ------------------------------------------------------------------ the pixel pipeline

@dataclass
class PixelDiffusionOutput(BaseOutput):
    """Samples as uint8 arrays: images (B, H, W, 3) or clips (B, F, H, W, 3)."""

    samples: np.ndarray


def is_video_denoiser(denoiser) -> bool:
    return isinstance(denoiser, WanTransformer3DModel)


class PixelDiffusionPipeline(DiffusionPipeline):
    """Text-to-image or text-to-video diffusion on pixels in [-1, 1].

    Components: ``transformer`` (``SD3Transformer2DModel``: images (B, 3, H, W);
    ``WanTransformer3DModel``: clips (B, 3, F, H, W)), ``text_encoder``
    (``CLIPTextModel``: its hidden states condition every block, its pooled output the
    SD3 transformer's adaptive norms), ``tokenizer`` and ``scheduler``.
    """

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, transformer, text_encoder, tokenizer, scheduler, sample_size: int = 32):
        super().__init__()
        self.register_modules(transformer=transformer, text_encoder=text_encoder,
                              tokenizer=tokenizer, scheduler=scheduler)
        self.register_to_config(sample_size=sample_size)

    @property
    def is_video(self) -> bool:
        return is_video_denoiser(self.transformer)

    def tokenize(self, prompts: list[str]) -> dict[str, Tensor]:
        return self.tokenizer(list(prompts), padding="max_length", truncation=True,
                              max_length=self.tokenizer.model_max_length, return_tensors="pt")

    def encode_prompt(self, prompts: list[str]) -> dict[str, Tensor]:
        """The denoiser's text inputs for ``prompts`` (with gradient if the encoder
        trains)."""
        tokens = self.tokenize(prompts).to(self.text_encoder.device)
        out = self.text_encoder(input_ids=tokens["input_ids"],
                                attention_mask=tokens["attention_mask"])
        cond = {"encoder_hidden_states": out.last_hidden_state}
        if not self.is_video:
            cond["pooled_projections"] = out.pooler_output
        return cond

    def denoise(self, x: Tensor, timestep: Tensor, cond: dict[str, Tensor],
                transformer=None) -> Tensor:
        """One call of ``transformer`` (default: the pipeline's) on ``x`` at ``timestep``
        (the scheduler's scale, 0-1000)."""
        transformer = transformer or self.transformer
        dtype = next(transformer.parameters()).dtype
        cond = {k: v.to(dtype) for k, v in cond.items()}
        return transformer(hidden_states=x.to(dtype), timestep=timestep, return_dict=False,
                           **cond)[0]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 12,
                 guidance_scale: float = 3.0, generator=None, num_frames: int = 4,
                 size: int | None = None, output_type: Literal["np", "pt"] = "np"):
        """Sample one image or clip per prompt. ``generator``: one ``torch.Generator``,
        or a list with one per prompt (fixed noise per prompt, whatever the batch)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        size = size or self.config.sample_size
        device = self.transformer.device
        shape = (3, num_frames, size, size) if self.is_video else (3, size, size)
        gens = generator if isinstance(generator, list) else [generator] * len(prompts)
        if len(gens) != len(prompts):
            raise ValueError(f"{len(gens)} generators for {len(prompts)} prompts")
        x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
        cond = self.encode_prompt(prompts)
        guided = guidance_scale != 1.0
        if guided:
            empty = self.encode_prompt([""] * len(prompts))
            cond = {k: torch.cat([empty[k], v]) for k, v in cond.items()}
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.scheduler.timesteps:
            inp = torch.cat([x, x]) if guided else x
            out = self.denoise(inp, t.expand(len(inp)).to(device), cond).float()
            if guided:
                uncond, text = out.chunk(2)
                out = uncond + guidance_scale * (text - uncond)
            x = self.scheduler.step(out, t, x, return_dict=False)[0]
        x = x.clamp(-1, 1)
        if output_type == "pt":
            return PixelDiffusionOutput(samples=x)
        channels_last = (0, 2, 3, 4, 1) if self.is_video else (0, 2, 3, 1)
        pixels = ((x + 1) * 127.5).round().to(torch.uint8).permute(*channels_last)
        return PixelDiffusionOutput(samples=pixels.cpu().numpy())


# -------------------------------------------------------------------------- loading

def _index_class(path: Path) -> str | None:
    index = path / "model_index.json"
    if not index.is_file():
        return None
    return json.loads(index.read_text()).get("_class_name")


def load_generator(path_or_id: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
                   trust_remote_code: bool = False, variant: str | None = None):
    """A diffusers pipeline from a hub id (``stabilityai/sdxl-turbo``,
    ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) or a local folder, eval mode, safetensors only.

    Remote code runs only when the caller passes ``trust_remote_code=True``; nothing
    read from the folder switches it on.
    """
    source = resolve_pretrained(path_or_id)
    kwargs = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["torch_dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if variant:
        kwargs["variant"] = variant
    cls = DiffusionPipeline
    named = _index_class(Path(source)) if os.path.isdir(source) else None
    if named == PixelDiffusionPipeline.__name__:
        cls = PixelDiffusionPipeline
    elif (named is not None and not (isinstance(named, str) and hasattr(diffusers, named))
          and not trust_remote_code):
        raise ValueError(f"{source}: model_index.json names the pipeline class {named!r}, "
                         "which diffusers does not have; code shipped with a checkpoint runs "
                         "only with trust_remote_code=True")
    pipe = cls.from_pretrained(source, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, out: str | Path, *, denoiser=None, overwrite: bool = False) -> Path:
    """Write ``pipe`` to ``out`` with ``save_pretrained`` (safetensors), its denoiser
    replaced by ``denoiser`` with any LoRA adapters merged (on a copy). The folder is
    written under a temporary name and renamed; an ``out`` that holds anything is
    replaced only with ``overwrite``."""
    import copy

    from ur.io import atomic_dir
    from ur.models.export import refuse_to_replace

    out = Path(out)
    if not overwrite:
        refuse_to_replace(out)
    name = "transformer" if "transformer" in pipe.components else "unet"
    denoiser = copy.deepcopy(denoiser if denoiser is not None else pipe.components[name])
    if getattr(denoiser, "peft_config", None):
        for adapter in [a for a in denoiser.peft_config if a != "default"]:
            denoiser.delete_adapters(adapter)
        denoiser.fuse_lora(adapter_names=["default"])
        denoiser.unload_lora()
    copied = type(pipe)(**{**pipe.components, name: denoiser.eval()},
                        **{k: v for k, v in pipe.config.items()
                           if not k.startswith("_") and k not in pipe.components})
    with atomic_dir(out, overwrite=overwrite) as tmp:
        copied.save_pretrained(tmp, safe_serialization=True)
    return out


# -------------------------------------------------------------- the denoising interface

class Denoising:
    """What training sees of a generator: the trainable denoiser, text and media
    encoding, the noise process, and one denoiser call.

    - ``prediction``: ``flow`` (x_s = (1 - s) x0 + s noise, target noise - x0, the
      denoiser given s * 1000), else the scheduler's ``prediction_type`` (``epsilon`` or
      ``v``) on its DDPM alphas with integer timesteps.
    - ``timesteps``: restrict training timesteps to this subset (DDPM family), e.g. the
      turbo subset ``[249, 499, 749, 999]``.
    - ``logit_normal``: flow sigmas drawn as sigmoid(N(m, s)) (SD3's training), else
      uniform.

    This class serves :class:`PixelDiffusionPipeline`; other families subclass it and
    override ``encode_text``, ``encode_media`` and ``denoise``.
    """

    def __init__(self, pipe, *, timesteps: list[int] | None = None,
                 logit_normal: tuple[float, float] | None = (0.0, 1.0)):
        self.pipe = pipe
        self.scheduler = pipe.scheduler
        self.flow = isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler)
        if self.flow:
            self.prediction: Prediction = "flow"
            if timesteps:
                raise ValueError("a timestep subset applies to DDPM-family schedulers, "
                                 "not flow matching")
        else:
            kind = self.scheduler.config.prediction_type
            if kind not in ("epsilon", "v_prediction"):
                raise ValueError(f"unsupported prediction_type {kind!r}")
            self.prediction = "v" if kind == "v_prediction" else "epsilon"
            self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.timesteps = list(timesteps) if timesteps else None
        self.logit_normal = logit_normal

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def video(self) -> bool:
        return is_video_denoiser(self.denoiser)

    def encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        return self.pipe.encode_prompt(prompts)

    def encode_media(self, pixels: Tensor) -> Tensor:
        """Pixels in [-1, 1] -> the denoiser's space (here the pixels)."""
        return pixels

    def sample_t(self, n: int, device, generator: torch.Generator | None = None) -> Tensor:
        """Training noise levels: flow sigmas in (0, 1), or integer DDPM timesteps."""
        if self.flow:
            if self.logit_normal:
                m, s = self.logit_normal
                u = torch.randn(n, generator=generator) * s + m
                return torch.sigmoid(u).to(device)
            return torch.rand(n, generator=generator).to(device)
        if self.timesteps:
            idx = torch.randint(len(self.timesteps), (n,), generator=generator)
            return torch.tensor(self.timesteps)[idx].to(device)
        total = self.scheduler.config.num_train_timesteps
        return torch.randint(0, total, (n,), generator=generator).to(device)

    def _alphas(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alphas_cumprod.to(like.device)[t.long()]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.sqrt().view(shape).to(like.dtype), (1 - a).sqrt().view(shape).to(like.dtype)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.flow:
            s = t.view((-1,) + (1,) * (x0.ndim - 1)).to(x0.dtype)
            return (1 - s) * x0 + s * noise
        a, b = self._alphas(t, x0)
        return a * x0 + b * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction == "flow":
            return noise - x0
        if self.prediction == "epsilon":
            return noise
        a, b = self._alphas(t, x0)
        return a * noise - b * x0

    def model_timestep(self, t: Tensor) -> Tensor:
        return t * 1000 if self.flow else t

    def denoise(self, denoiser, noisy: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        return self.pipe.denoise(noisy, self.model_timestep(t), cond, transformer=denoiser)

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], **kwargs) -> np.ndarray:
        """uint8 samples, one per prompt, each from its own seeded noise."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return self.pipe(prompts, generator=gens, **kwargs).samples


def denoising_of(pipe, **kwargs) -> Denoising:
    """The :class:`Denoising` view of a loaded pipeline."""
    if isinstance(pipe, PixelDiffusionPipeline):
        return Denoising(pipe, **kwargs)
    raise ValueError(f"no training interface for {type(pipe).__name__} yet")


# ----------------------------------------------------------------- tiny generators

@dataclass
class TinyGeneratorConfig:
    """The shape of a tiny pixel-space generator."""

    kind: Literal["image", "video"] = "image"
    prediction: Prediction = "flow"
    size: int = 32
    patch: int = 2
    layers: int = 4
    heads: int = 2
    head_dim: int = 32
    text_hidden: int = 64
    text_layers: int = 2
    max_tokens: int = 20
    train_timesteps: int = 1000

    def check(self) -> None:
        if self.kind not in ("image", "video"):
            raise ValueError(f"kind must be image or video, got {self.kind!r}")
        if self.prediction not in ("epsilon", "v", "flow"):
            raise ValueError(f"prediction must be epsilon, v or flow, got {self.prediction!r}")
        if self.size % self.patch:
            raise ValueError(f"size {self.size} is not a multiple of patch {self.patch}")


def _word_tokenizer(texts: list[str], max_tokens: int):
    """A word-level tokenizer over every word of ``texts``, adding [BOS] ... [EOS] and
    padding with [PAD]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.lower().split()})
    vocab = {TOKENS[k]: i for k, i in TOKEN_IDS.items()}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import normalizers

    tok.normalizer = normalizers.Lowercase()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{TOKENS['bos']} $A {TOKENS['eos']}",
        special_tokens=[(TOKENS["bos"], TOKEN_IDS["bos"]), (TOKENS["eos"], TOKEN_IDS["eos"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=max_tokens, pad_token=TOKENS["pad"],
        unk_token=TOKENS["unk"], bos_token=TOKENS["bos"], eos_token=TOKENS["eos"])


def _scheduler(config: TinyGeneratorConfig):
    if config.prediction == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.train_timesteps,
                                               shift=1.0)
    if config.prediction == "epsilon":
        # Stable Diffusion's schedule: its last step keeps a little signal (alpha_bar
        # about 0.005), so a noise prediction gives an image estimate at every sampling
        # step. Where alpha_bar reaches 0 (the cosine schedule), the first step's
        # estimate divides by about 0 and sampling returns noise.
        return DDIMScheduler(num_train_timesteps=config.train_timesteps,
                             beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                             clip_sample=True, prediction_type="epsilon",
                             set_alpha_to_one=False, timestep_spacing="leading", steps_offset=1)
    return DDIMScheduler(num_train_timesteps=config.train_timesteps,
                         beta_schedule="squaredcos_cap_v2", clip_sample=True,
                         prediction_type="v_prediction", set_alpha_to_one=True,
                         timestep_spacing="trailing")


def _transformer(config: TinyGeneratorConfig, text_dim: int):
    width = config.heads * config.head_dim
    if config.kind == "image":
        return SD3Transformer2DModel(
            sample_size=config.size, patch_size=config.patch, in_channels=3, out_channels=3,
            num_layers=config.layers, attention_head_dim=config.head_dim,
            num_attention_heads=config.heads, joint_attention_dim=text_dim,
            caption_projection_dim=width, pooled_projection_dim=text_dim,
            pos_embed_max_size=config.size // config.patch)
    return WanTransformer3DModel(
        patch_size=(1, config.patch, config.patch), num_attention_heads=config.heads,
        attention_head_dim=config.head_dim, in_channels=3, out_channels=3,
        text_dim=text_dim, freq_dim=64, ffn_dim=2 * width, num_layers=config.layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64)


def build_tiny_generator(texts: list[str], config: TinyGeneratorConfig | None = None,
                         seed: int = 0) -> PixelDiffusionPipeline:
    """A randomly initialised tiny pixel-space pipeline whose tokenizer knows every word
    of ``texts`` (the world's captions)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = config or TinyGeneratorConfig()
    config.check()
    torch.manual_seed(seed)
    tokenizer = _word_tokenizer(texts, config.max_tokens)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden,
        intermediate_size=2 * config.text_hidden, num_hidden_layers=config.text_layers,
        num_attention_heads=2, max_position_embeddings=config.max_tokens,
        pad_token_id=TOKEN_IDS["pad"], bos_token_id=TOKEN_IDS["bos"],
        eos_token_id=TOKEN_IDS["eos"], projection_dim=config.text_hidden)
    text_encoder = CLIPTextModel(text_config)
    pipe = PixelDiffusionPipeline(transformer=_transformer(config, config.text_hidden),
                                  text_encoder=text_encoder, tokenizer=tokenizer,
                                  scheduler=_scheduler(config), sample_size=config.size)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "Denoising",
    "PixelDiffusionPipeline",
    "TinyGeneratorConfig",
    "build_tiny_generator",
    "denoising_of",
    "load_generator",
]
