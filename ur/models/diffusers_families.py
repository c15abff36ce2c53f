"""Training interfaces (:class:`ur.models.generators.Denoising`) for diffusers' own
latent-diffusion pipelines: Stable Diffusion 1.x/2.x, SDXL and SDXL-Turbo, SD3/SD3.5
and Wan2.1 text-to-video.

Each family reuses its pipeline's conventions rather than restating them: text through
the pipeline's ``encode_prompt`` (one embedding per prompt, no classifier-free guidance
branch), media through its VAE with the pipeline's latent scaling, samples through the
pipeline's ``__call__``. The noise process is :class:`Denoising`'s, on the scheduler
training uses:

- DDPM family (SD, SDXL): ``DDPMScheduler`` built from the pipeline scheduler's config,
  as diffusers' training scripts build it; its ``prediction_type`` (epsilon or v) is
  the target. Inference schedulers such as Euler share its betas but noise by sigma
  rather than by the variance-preserving rule the denoiser is trained on.
- Flow matching (SD3, Wan): ``FlowMatchEulerDiscreteScheduler`` with the pipeline's
  shift (``shift``, or ``flow_shift`` of UniPC flow schedulers as Wan2.1 ships);
  training noise levels are the base draws mapped through that shift, as SD3's training
  scripts pick sigmas from the shifted schedule.

Assumes: pixels in [-1, 1], images (B, 3, H, W) and clips (B, 3, F, H, W) as
:class:`ur.data.generation_pairs.GenerationPairsDataModule` gives them; the text
encoders and VAE stay frozen. Text and media are encoded on the device their encoder
sits on and returned on the caller's device.

:data:`FAMILIES` maps pipeline class names to their interface; :func:`denoising_for`
picks one for a loaded pipeline.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from torch import Tensor

from ur.models.generators import Denoising


def training_scheduler(scheduler):
    """The scheduler whose noise process trains a pipeline's denoiser: flow matching
    for flow schedulers (with their shift), else DDPM on the same betas and
    prediction type."""
    config = scheduler.config
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler
    if config.get("prediction_type") == "flow_prediction" or config.get("use_flow_sigmas"):
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=config.num_train_timesteps,
            shift=config.get("flow_shift") or 1.0)
    return DDPMScheduler.from_config(config)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """A pipeline's ``output_type="np"`` floats in [0, 1] -> uint8."""
    return (np.clip(x, 0.0, 1.0) * 255).round().astype(np.uint8)


def dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class DiffusersDenoising(Denoising):
    """Shared by the latent families: the training noise process, VAE encoding and
    seeded sampling through the pipeline's ``__call__``.

    Subclasses give ``encode_text``, ``denoise`` and :meth:`scale_latents`.
    """

    def __init__(self, pipe, *, timesteps: list[int] | None = None,
                 logit_normal: tuple[float, float] | None = (0.0, 1.0)):
        # Denoising reads only ``pipe.scheduler``: hand it the training scheduler.
        train = training_scheduler(pipe.scheduler)
        super().__init__(SimpleNamespace(scheduler=train), timesteps=timesteps,
                         logit_normal=logit_normal)
        self.pipe = pipe
        self.shift = float(train.config.get("shift", 1.0)) if self.flow else 1.0

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet if "unet" in self.pipe.components else self.pipe.transformer

    @property
    def text_device(self) -> torch.device:
        return self.pipe.text_encoder.device

    def sample_t(self, n: int, device, generator: torch.Generator | None = None) -> Tensor:
        """Base draws; flow sigmas mapped through the scheduler's shift
        s -> shift * s / (1 + (shift - 1) * s)."""
        t = super().sample_t(n, device, generator)
        if self.flow and self.shift != 1.0:
            t = self.shift * t / (1 + (self.shift - 1) * t)
        return t

    def scale_latents(self, latents: Tensor) -> Tensor:
        """VAE latents -> the denoiser's space: ``* scaling_factor``."""
        return latents * self.pipe.vae.config.scaling_factor

    @torch.no_grad()
    def encode_media(self, pixels: Tensor) -> Tensor:
        """Pixels in [-1, 1] -> scaled VAE latents (a draw from the posterior, as the
        reference training scripts take), on the pixels' device."""
        vae = self.pipe.vae
        posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return self.scale_latents(posterior.sample()).to(pixels.device)

    def call_kwargs(self, kwargs: dict) -> dict:
        """``__call__`` options for this family (images drop ``num_frames``)."""
        return {k: v for k, v in kwargs.items() if k != "num_frames"}

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], **kwargs) -> np.ndarray:
        """uint8 samples, one per prompt, each from its own seeded ``torch.Generator``:
        images (B, H, W, 3), clips (B, F, H, W, 3)."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        out = self.pipe(list(prompts), generator=gens, output_type="np",
                        **self.call_kwargs(kwargs))
        return to_uint8(np.asarray(out.frames if self.video else out.images))


class StableDiffusion(DiffusersDenoising):
    """``StableDiffusionPipeline`` (SD1.x, SD2.x): ``UNet2DConditionModel`` conditioned on
    the CLIP text encoder's hidden states."""

    def encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _ = self.pipe.encode_prompt(list(prompts), self.text_device, 1, False)
        return {"encoder_hidden_states": embeds}

    def denoise(self, denoiser, noisy: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        dtype = dtype_of(denoiser)
        return denoiser(sample=noisy.to(dtype), timestep=self.model_timestep(t),
                        encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                        return_dict=False)[0]


class StableDiffusionXL(DiffusersDenoising):
    """``StableDiffusionXLPipeline`` (SDXL, SDXL-Turbo): two CLIP text encoders; the UNet
    also takes the pooled embedding of the second and the size ids (original size, crop
    corner, target size) as ``added_cond_kwargs``.

    The size ids are those of a square training crop at the latents' size: original and
    target the training resolution, crop (0, 0) (pairs are resized and centre-cropped).
    """

    def encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            list(prompts), device=self.text_device, num_images_per_prompt=1,
            do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "text_embeds": pooled}

    def time_ids(self, noisy: Tensor, pooled: Tensor) -> Tensor:
        size = tuple(int(s) * self.pipe.vae_scale_factor for s in noisy.shape[-2:])
        encoder_2 = self.pipe.text_encoder_2
        projection = encoder_2.config.projection_dim if encoder_2 is not None else pooled.shape[-1]
        ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=noisy.dtype,
                                          text_encoder_projection_dim=projection)
        return ids.to(noisy.device).repeat(len(noisy), 1)

    def denoise(self, denoiser, noisy: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        dtype = dtype_of(denoiser)
        pooled = cond["text_embeds"].to(dtype)
        added = {"text_embeds": pooled, "time_ids": self.time_ids(noisy, pooled).to(dtype)}
        return denoiser(sample=noisy.to(dtype), timestep=self.model_timestep(t),
                        encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                        added_cond_kwargs=added, return_dict=False)[0]


class StableDiffusion3(DiffusersDenoising):
    """``StableDiffusion3Pipeline`` (SD3, SD3.5): flow matching; the MMDiT takes the joint
    CLIP + T5 sequence and the pooled CLIP embeddings; latents are
    ``(z - shift_factor) * scaling_factor``."""

    def __init__(self, pipe, *, max_sequence_length: int = 256, **kwargs):
        super().__init__(pipe, **kwargs)
        self.max_sequence_length = max_sequence_length

    def encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            list(prompts), None, None, device=self.text_device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def scale_latents(self, latents: Tensor) -> Tensor:
        config = self.pipe.vae.config
        return (latents - config.shift_factor) * config.scaling_factor

    def denoise(self, denoiser, noisy: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        dtype = dtype_of(denoiser)
        return denoiser(hidden_states=noisy.to(dtype), timestep=self.model_timestep(t),
                        encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                        pooled_projections=cond["pooled_projections"].to(dtype),
                        return_dict=False)[0]

    def call_kwargs(self, kwargs: dict) -> dict:
        return {**super().call_kwargs(kwargs), "max_sequence_length": self.max_sequence_length}


class Wan(DiffusersDenoising):
    """``WanPipeline`` (Wan2.1 text-to-video): flow matching on 5-D latents
    (B, C, F, H, W) of ``AutoencoderKLWan``, normalised per channel by the VAE's
    ``latents_mean`` and ``latents_std``; UMT5 text padded with zeros to
    ``max_sequence_length`` tokens (the pipeline samples with 512, so training does too).
    Clips need 4k + 1 frames (the VAE's temporal compression)."""

    def __init__(self, pipe, *, max_sequence_length: int = 512, **kwargs):
        super().__init__(pipe, **kwargs)
        self.max_sequence_length = max_sequence_length

    def encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _ = self.pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length, device=self.text_device)
        return {"encoder_hidden_states": embeds}

    def scale_latents(self, latents: Tensor) -> Tensor:
        config = self.pipe.vae.config
        shape = (1, config.z_dim) + (1,) * (latents.ndim - 2)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents)
        std = torch.tensor(config.latents_std).view(shape).to(latents)
        return (latents - mean) / std

    def denoise(self, denoiser, noisy: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        dtype = dtype_of(denoiser)
        return denoiser(hidden_states=noisy.to(dtype), timestep=self.model_timestep(t),
                        encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                        return_dict=False)[0]

    def call_kwargs(self, kwargs: dict) -> dict:
        return {**kwargs, "max_sequence_length": self.max_sequence_length}


FAMILIES: dict[str, type[DiffusersDenoising]] = {
    "StableDiffusionPipeline": StableDiffusion,
    "StableDiffusionXLPipeline": StableDiffusionXL,
    "StableDiffusion3Pipeline": StableDiffusion3,
    "WanPipeline": Wan,
}
"""Pipeline class name -> its training interface."""


def denoising_for(pipe, **kwargs) -> DiffusersDenoising:
    """The training interface of a loaded diffusers pipeline (its class or nearest
    ancestor in :data:`FAMILIES`); ``kwargs`` go to :class:`Denoising`
    (``timesteps``, ``logit_normal``) or the family (``max_sequence_length``)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__](pipe, **kwargs)
    raise ValueError(f"no training interface for {type(pipe).__name__}; supported: "
                     f"{', '.join(sorted(FAMILIES))}")


__all__ = ["FAMILIES", "StableDiffusion", "StableDiffusion3", "StableDiffusionXL", "Wan",
           "denoising_for", "training_scheduler"]
