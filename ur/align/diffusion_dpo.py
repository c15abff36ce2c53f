"""``DiffusionDPOModule``: Diffusion-DPO of a text-to-image or text-to-video generator.

Supports: what :func:`ur.models.generators.load_generator` loads and
:func:`ur.models.generators.denoising_of` gives a training interface for; images
(4-D) and clips (5-D); epsilon, v and flow-matching targets; full fine-tuning of the
denoiser or LoRA on chosen modules (text encoders and VAE stay frozen); the sigmoid,
hinge and IPO losses of :func:`ur.align.losses.diffusion_dpo_loss`.

Assumes: batches from :class:`ur.data.generation_pairs.GenerationPairsDataModule`:
``prompts``, ``chosen`` and ``rejected`` pixels in [-1, 1]. Winner i and loser i are
noised with the same noise and the same timestep (FACTS.md section 4: a known defect
elsewhere gives them different ones), and the error is averaged per sample over every
non-batch dimension.

The reference is the generator as it starts:

- ``adapters_off``: with LoRA, the same denoiser with its adapters disabled (one copy of
  the weights);
- ``copy``: a frozen copy of the starting denoiser (full fine-tuning);
- ``online``: with LoRA, a second adapter ``ref`` that takes the trained adapter's
  weights every ``ref_update_steps`` steps (online DPO, as flow_grpo's DPO does);
- ``auto``: ``adapters_off`` for LoRA, ``copy`` otherwise.

Logged per split: ``loss``, ``implicit_acc``, ``mse/chosen``, ``mse/rejected``,
``ref_mse/chosen``, ``ref_mse/rejected``, ``rewards/margins`` (the margin z of the
loss). Validation and test sample the data module's held-out prompts with fixed seeds
and log the oracle's ``oracle_alignment``, ``oracle_quality`` and ``oracle_score`` of
those samples (synthetic world), with a grid of them to W&B: the figures that say
whether DPO helped, which the loss cannot. With the
:class:`ur.reward.sample_scores.JudgeSampleScores` callback, a judge scores the same
samples (``judge_score``). The test also writes each sample's figures to
``test_samples.jsonl`` in the run folder (caption, seed, alignment, quality, score), so
that two generators can be compared sample by sample on the same captions and noise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning import LightningModule
from torchmetrics import CatMetric

from ur.align.losses import DiffusionKind, diffusion_dpo_loss, per_sample_mse
from ur.align.outputs import write_test_rows
from ur.training import Finetune, OptimizerSpec, adamw_with_schedule, as_spec, plain

Reference = Literal["auto", "adapters_off", "copy", "online"]

ATTENTION_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
"""LoRA targets shared by diffusers' attention blocks (UNet, SD3, FLUX, Wan)."""


@dataclass
class DiffusionLoraSpec:
    """LoRA on the denoiser (peft through diffusers' adapter support)."""

    r: int = 8
    alpha: int = 8
    target_modules: list[str] = field(default_factory=lambda: list(ATTENTION_MODULES))
    """Module names (or suffixes) that get adapters."""
    dropout: float = 0.0

    def config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          init_lora_weights="gaussian", target_modules=self.target_modules)


class DiffusionDPOModule(LightningModule):
    """Diffusion-DPO for a text-to-image or text-to-video generator.

    Args:
        checkpoint: The generator to align: a hub id or a local diffusers folder (the
            tiny generators of ``ur.pretrain.tiny_generator``).
        finetune: ``full`` (every denoiser weight) or ``lora``.
        lora: LoRA settings: ``r``, ``alpha``, ``target_modules``, ``dropout``.
        optimizer: Learning rate and schedule.
        loss: ``sigmoid`` (Diffusion-DPO), ``hinge`` or ``ipo``.
        beta: beta_dpo on the reference scripts' scale (with the 0.5: 5000 for SD1.5 and
            SDXL, 100 for SD3.5 with flow matching); for ``ipo``, IPO's own tau.
        sft_weight: Weight of the winners' plain denoising loss added to the DPO loss
            (keeps the policy near the winners' data; 0 for plain Diffusion-DPO).
        reference: ``auto``, ``adapters_off``, ``copy`` or ``online``.
        ref_update_steps: With ``online``, steps between refreshes of the ``ref`` adapter.
        timesteps: Train only on these DDPM timesteps (the turbo subset
            ``[249, 499, 749, 999]``); None: all.
        cache_text: Encode each prompt once and keep its text embedding in memory (the
            text encoders are frozen): for pair sets with few distinct prompts; a
            corpus of mostly distinct prompts would keep one embedding per pair.
        cache_latents: Encode each pair's media once and keep the latents in memory
            (CPU), keyed by pair id: pays where a VAE encodes every step (SD, SDXL, SD3,
            Wan) and the pair set fits in memory; nothing to gain in pixel space.
        sample_steps: Denoising steps when validation samples held-out prompts.
        guidance: Classifier-free guidance scale of those samples.
        num_frames: Frames per sampled clip (video generators).
        dtype: Weights dtype (``bfloat16`` on GPUs; None keeps float32 on CPU).
        trust_remote_code: Run code shipped with the checkpoint (off unless you opt in).
        export: Save the aligned pipeline as a diffusers folder at the end of fit.
        log_samples: Log a grid of validation samples to the logger (W&B).
    """

    def __init__(
        self,
        checkpoint: str = "checkpoints/tiny/t2i-world",
        finetune: Finetune = "lora",
        lora: DiffusionLoraSpec | None = None,
        optimizer: OptimizerSpec | None = None,
        loss: DiffusionKind = "sigmoid",
        beta: float = 2000.0,
        sft_weight: float = 0.0,
        reference: Reference = "auto",
        ref_update_steps: int = 100,
        timesteps: list[int] | None = None,
        cache_text: bool = False,
        cache_latents: bool = False,
        sample_steps: int = 12,
        guidance: float = 3.0,
        num_frames: int = 4,
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        trust_remote_code: bool = False,
        export: bool = True,
        log_samples: bool = True,
    ):
        super().__init__()
        if reference == "auto":
            reference = "adapters_off" if finetune == "lora" else "copy"
        if reference in ("adapters_off", "online") and finetune != "lora":
            raise ValueError(f"reference: {reference} needs finetune: lora (full fine-tuning "
                             "has no adapters); use reference: copy")
        if ref_update_steps < 1:
            raise ValueError(f"ref_update_steps must be at least 1, got {ref_update_steps}")
        self.save_hyperparameters({
            "checkpoint": str(checkpoint), "finetune": finetune, "lora": plain(lora),
            "optimizer": plain(optimizer), "loss": loss, "beta": beta,
            "sft_weight": sft_weight, "reference": reference,
            "ref_update_steps": ref_update_steps, "timesteps": timesteps,
            "cache_text": cache_text, "cache_latents": cache_latents, "sample_steps": sample_steps, "guidance": guidance,
            "num_frames": num_frames, "dtype": dtype, "trust_remote_code": trust_remote_code,
            "export": export, "log_samples": log_samples}, logger=False)
        self.optim = as_spec(OptimizerSpec, optimizer) or OptimizerSpec(lr=1e-4,
                                                                         warmup_ratio=0.05)
        from ur.models.generators import denoising_of, load_generator

        self.pipe = load_generator(checkpoint, dtype=dtype, trust_remote_code=trust_remote_code)
        self.denoising = denoising_of(self.pipe, timesteps=timesteps)
        for part in self.pipe.components.values():
            if isinstance(part, torch.nn.Module):
                part.requires_grad_(False).eval()
        denoiser = self.denoising.denoiser
        self._reference = None
        if reference == "copy":
            # Outside the module's children: the base itself, so checkpoints need not
            # carry it and the optimizer never sees it.
            self._reference = [copy.deepcopy(denoiser)]
        if finetune == "lora":
            spec = as_spec(DiffusionLoraSpec, lora) or DiffusionLoraSpec()
            denoiser.add_adapter(spec.config())
            if reference == "online":
                denoiser.add_adapter(spec.config(), adapter_name="ref")
                self._copy_adapter("default", "ref")
                denoiser.set_adapter("default")
            for name, p in denoiser.named_parameters():
                p.requires_grad_(".default." in name or name.endswith(".default"))
        else:
            denoiser.requires_grad_(True)
        self.denoiser = denoiser.train()
        self._text_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._latent_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.samples = torch.nn.ModuleDict({
            stage: torch.nn.ModuleDict({k: CatMetric() for k in ("alignment", "quality", "score")})
            for stage in ("val", "test")})
        self._grid: list = []
        self._test_samples: list[dict] = []

    # -- the denoiser and its reference ----------------------------------------------------
    def _copy_adapter(self, source: str, target: str) -> None:
        """Copy LoRA weights of adapter ``source`` into adapter ``target`` (frozen)."""
        params = dict(self.denoising.denoiser.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                parts = name.split(".")
                if source in parts[1:]:  # an adapter's name is a segment after the layer's
                    at = len(parts) - 1 - parts[::-1].index(source)
                    other = params[".".join(parts[:at] + [target] + parts[at + 1:])]
                    other.copy_(p)
                    other.requires_grad_(False)

    def reference_predict(self, noisy, t, cond) -> torch.Tensor:
        d = self.denoising
        with torch.no_grad():
            if self._reference is not None:
                ref = self._reference[0]
                if next(ref.parameters()).device != self.device:
                    ref.to(self.device)
                return d.denoise(ref, noisy, t, cond)
            if self.hparams.reference == "online":
                self.denoiser.set_adapter("ref")
                try:
                    return d.denoise(self.denoiser, noisy, t, cond)
                finally:
                    self.denoiser.set_adapter("default")
                    self._freeze_ref()
            self.denoiser.disable_adapters()
            try:
                return d.denoise(self.denoiser, noisy, t, cond)
            finally:
                self.denoiser.enable_adapters()

    def _freeze_ref(self) -> None:
        for name, p in self.denoiser.named_parameters():
            if ".ref." in name or name.endswith(".ref"):
                p.requires_grad_(False)

    def _place_pipeline(self) -> None:
        """The frozen parts (text encoders, VAE) are not this module's children, so
        Lightning does not move them: they follow the denoiser's device here."""
        for part in self.pipe.components.values():
            if isinstance(part, torch.nn.Module) and part is not self.denoiser:
                part.to(self.device)

    def on_fit_start(self):
        self._place_pipeline()

    def on_validation_start(self):
        self._place_pipeline()

    def on_test_start(self):
        self._place_pipeline()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        hp = self.hparams
        if hp.reference == "online" and self.global_step % hp.ref_update_steps == 0:
            self._copy_adapter("default", "ref")

    # -- text --------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Text inputs of the denoiser, from the cache when ``cache_text``."""
        if not self.hparams.cache_text:
            with torch.no_grad():
                return self.denoising.encode_text(prompts)
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            with torch.no_grad():
                encoded = self.denoising.encode_text(missing)
            for i, p in enumerate(missing):
                self._text_cache[p] = {k: v[i].detach() for k, v in encoded.items()}
        return {k: torch.stack([self._text_cache[p][k] for p in prompts]).to(self.device)
                for k in self._text_cache[prompts[0]]}

    @torch.no_grad()
    def encode_pairs(self, batch: dict) -> torch.Tensor:
        """[winners; losers] in the denoiser's space, from the cache when
        ``cache_latents`` (keyed by pair id)."""
        d = self.denoising
        ids = list(batch.get("ids") or [])
        if not (self.hparams.cache_latents and ids):
            return torch.cat([d.encode_media(batch["chosen"]), d.encode_media(batch["rejected"])])
        missing = [i for i, key in enumerate(ids) if key not in self._latent_cache]
        if missing:
            w = d.encode_media(batch["chosen"][missing])
            lo = d.encode_media(batch["rejected"][missing])
            for k, i in enumerate(missing):
                self._latent_cache[ids[i]] = (w[k].cpu(), lo[k].cpu())
        pairs = [self._latent_cache[key] for key in ids]
        return torch.cat([torch.stack([w for w, _ in pairs]),
                          torch.stack([lo for _, lo in pairs])]).to(self.device)

    # -- the pair step -----------------------------------------------------------------------
    def pair_step(self, batch: dict, stage: str) -> torch.Tensor | None:
        prompts = list(batch["prompts"])
        n = len(prompts)
        if not n:
            return None
        d = self.denoising
        x0 = self.encode_pairs(batch)
        cond = self.encode_text(prompts)
        cond = {k: torch.cat([v, v]) for k, v in cond.items()}
        # One noise and one timestep per pair, shared by its winner and loser.
        noise = torch.randn_like(x0[:n]).repeat((2,) + (1,) * (x0.ndim - 1))
        t = d.sample_t(n, x0.device).repeat(2)
        noisy = d.add_noise(x0, noise, t)
        target = d.target(x0, noise, t)
        pred = d.denoise(self.denoiser, noisy, t, cond)
        ref = self.reference_predict(noisy, t, cond)
        hp = self.hparams
        out = diffusion_dpo_loss(pred, ref, target, hp.beta, hp.loss)
        loss = out.losses.mean()
        if hp.sft_weight:
            loss = loss + hp.sft_weight * per_sample_mse(pred[:n], target[:n]).mean()
        z = -0.5 * ((out.model_mse_w - out.model_mse_l) - (out.ref_mse_w - out.ref_mse_l))
        values = {"implicit_acc": out.implicit_acc,
                  "mse/chosen": out.model_mse_w.mean(), "mse/rejected": out.model_mse_l.mean(),
                  "ref_mse/chosen": out.ref_mse_w.mean(), "ref_mse/rejected": out.ref_mse_l.mean(),
                  "rewards/margins": z.mean()}
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, batch_size=n,
                      sync_dist=stage != "train", add_dataloader_idx=False,
                      prog_bar=False)
        self.log(f"{stage}/loss", loss, batch_size=n, prog_bar=True,
                 sync_dist=stage != "train", add_dataloader_idx=False)
        return loss

    def training_step(self, batch, batch_idx):
        return self.pair_step(batch, "train")

    # -- sampling held-out prompts -------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int]):
        """uint8 samples of the current generator, one per prompt and seed."""
        was = self.denoiser.training
        self.denoiser.eval()
        try:
            return self.denoising.sample(prompts, seeds, num_inference_steps=self.hparams.sample_steps,
                                         guidance_scale=self.hparams.guidance,
                                         num_frames=self.hparams.num_frames)
        finally:
            self.denoiser.train(was)

    def prompt_step(self, batch: dict, stage: str) -> dict | None:
        """Sample the batch's prompts, score the samples by the oracle, and return them
        (``samples``, ``prompts``) for callbacks such as
        :class:`ur.reward.sample_scores.JudgeSampleScores`."""
        from ur.data.synthetic.oracle import score_samples

        prompts, seeds = list(batch["prompts"]), list(batch["seeds"])
        if not prompts:
            return None
        samples = self.sample(prompts, seeds)
        found = score_samples(samples, prompts, "video" if self.denoising.video else "image")
        for k, metric in self.samples[stage].items():
            metric.update(torch.tensor(found["per_sample"][k], dtype=torch.float32))
        if stage == "test":
            per = found["per_sample"]
            self._test_samples += [
                {"prompt": p, "seed": int(s), **{k: float(per[k][i]) for k in
                                                 ("alignment", "quality", "score")}}
                for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))]
        if len(self._grid) < 16:
            self._grid.extend(zip(samples[:16 - len(self._grid)], prompts, found["per_sample"]["score"],
                                  strict=False))
        return {"samples": samples, "prompts": prompts}

    def _is_prompts(self, batch) -> bool:
        return "seeds" in batch

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if self._is_prompts(batch):
            return self.prompt_step(batch, "val")
        self.pair_step(batch, "val")
        return None

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        return self.prompt_step(batch, "test") if self._is_prompts(batch) else None

    def _samples_end(self, stage: str) -> None:
        for name, metric in self.samples[stage].items():
            if metric.update_called or torch.distributed.is_initialized():
                values = metric.compute()
                if values.numel():
                    self.log(f"{stage}/oracle_{name}", values.float().mean(),
                             prog_bar=name == "alignment", sync_dist=True,
                             add_dataloader_idx=False)
            metric.reset()
        if self._grid and self.hparams.log_samples and self.trainer.is_global_zero:
            self._log_grid(stage)
        self._grid = []

    def _log_grid(self, stage: str) -> None:
        """The first samples with their captions and oracle scores, as images (a clip's
        frames side by side: a strip needs no video encoder)."""
        log_image = getattr(self.logger, "log_image", None)
        if log_image is None:
            return
        images = [np.concatenate(list(s), axis=1) if s.ndim == 4 else s
                  for s, _, _ in self._grid]
        log_image(f"{stage}/samples", images=images,
                  caption=[f"{p} ({sc:.2f})" for _, p, sc in self._grid],
                  step=self.global_step)

    def on_validation_epoch_end(self):
        self._samples_end("val")

    def on_test_epoch_start(self):
        self._test_samples = []

    def on_test_epoch_end(self):
        self._samples_end("test")
        write_test_rows(self.trainer, self._test_samples, "test_samples.jsonl",
                        key=lambda r: (r["prompt"], r["seed"]))

    # -- optimisation and export ---------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": self.optim.lr,
                   "weight_decay": self.optim.weight_decay}]
        return adamw_with_schedule(groups, self.optim, self.trainer.estimated_stepping_batches)

    def on_fit_end(self):
        if self.hparams.export and self.trainer.is_global_zero:
            self.export(Path(self.trainer.default_root_dir) / "export", overwrite=True)

    def export(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Save the aligned pipeline as a diffusers folder, LoRA merged into the
        denoiser (on a copy; the module's own denoiser is left as it is)."""
        from ur.models.generators import save_pipeline

        return save_pipeline(self.pipe, out, denoiser=self.denoiser, overwrite=overwrite)
