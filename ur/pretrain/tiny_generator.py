"""The tiny generators: a text-to-image and a text-to-video pipeline pretrained on the
synthetic world's captions before they sample candidates or are aligned.

:func:`ensure_tiny_generator` builds a :class:`ur.models.generators.PixelDiffusionPipeline`
(tokenizer made from the world's caption vocabulary) and pretrains its denoiser and text
encoder together on scenes rendered on the fly from the world's training stream
(:func:`ur.data.synthetic.captions.training_scenes`: the held-out captions never
appear), with caption dropout so that sampling can use classifier-free guidance and an
exponential moving average of the weights, which is what is saved. Every ``eval_every``
steps and at the end, the averaged model samples the held-out captions with fixed seeds
and the oracle scores them: caption alignment, visual quality and how often each check
(presence, colour, shape, place, motion) held. The pipeline is saved with
``save_pretrained``, cached under a lock (rebuilt only when its spec changes) and
recorded as a run (``<checkpoint>/pretrain_run/``: the loss curve and ``metrics.json``).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning import Callback, LightningModule
from torch.utils.data import IterableDataset, get_worker_info

from ur.data.synthetic.captions import held_out_captions, training_scenes
from ur.data.synthetic.oracle import score_samples
from ur.data.synthetic.render import render_clip, render_image
from ur.data.synthetic.scene import (
    COLOURS,
    MOTION_PHRASES,
    NUMBER_WORDS,
    PLACE_PHRASES,
    SHAPES,
)
from ur.models.generators import (
    Denoising,
    Prediction,
    TinyGeneratorConfig,
    build_tiny_generator,
    parameter_count,
)
from ur.pretrain.cache import SPEC_FILE, needs_build
from ur.training import OptimizerSpec, warmup_cosine

FORMAT = 2
"""Bumped when what a spec builds changes, so cached generators are rebuilt."""


@dataclass
class TinyGeneratorSpec:
    """A tiny pixel-space generator: its shape and its pretraining on the world."""

    kind: Literal["image", "video"] = "image"
    prediction: Prediction = "flow"
    """What the denoiser predicts: ``flow`` (noise - data), ``epsilon`` or ``v``."""
    size: int = 32
    num_frames: int = 4
    """Frames per clip (video)."""
    layers: int = 4
    heads: int = 2
    head_dim: int = 32
    patch: int = 2
    steps: int = 1500
    lr: float = 1e-3
    batch_size: int = 32
    caption_dropout: float = 0.1
    """Share of captions replaced by the empty caption (for classifier-free guidance)."""
    ema: float = 0.995
    """Decay of the moving average of the weights that is saved."""
    eval_captions: int = 32
    """Held-out captions the oracle judges samples of (one sample each)."""
    eval_every: int = 500
    sample_steps: int = 12
    guidance: float = 3.0
    held_out_seed: int = 0
    """Which captions are held out (:mod:`ur.data.synthetic.captions`)."""
    seed: int = 0

    def config(self) -> TinyGeneratorConfig:
        return TinyGeneratorConfig(kind=self.kind, prediction=self.prediction, size=self.size,
                                   patch=self.patch, layers=self.layers, heads=self.heads,
                                   head_dim=self.head_dim)


def world_vocabulary() -> list[str]:
    """Every word a world caption can use, as one text per phrase."""
    words = [*COLOURS, *SHAPES, *PLACE_PHRASES.values(), *MOTION_PHRASES.values(),
             *NUMBER_WORDS, "a an and"]
    return list(words)


class RenderedScenes(IterableDataset):
    """An endless stream of (pixels in [-1, 1], caption) rendered from the world's
    training scenes; each DataLoader worker draws its own stream."""

    def __init__(self, kind: str, size: int, num_frames: int, seed: int, held_out_seed: int):
        self.kind, self.size, self.num_frames = kind, size, num_frames
        self.seed, self.held_out_seed = seed, held_out_seed

    def __iter__(self):
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0, 104729])
        for scene in training_scenes(self.kind, rng, self.held_out_seed):
            if self.kind == "image":
                pixels = torch.from_numpy(render_image(scene, self.size)).permute(2, 0, 1)
            else:  # (F, H, W, 3) -> (3, F, H, W)
                pixels = torch.from_numpy(render_clip(scene, self.size, self.num_frames)
                                          ).permute(3, 0, 1, 2)
            yield pixels.float() / 127.5 - 1, scene.caption()


class GeneratorPretrainModule(LightningModule):
    """Denoising loss on the pipeline's own target (flow, epsilon or v) for the
    transformer and the text encoder together; AdamW, warmup and cosine; an EMA copy."""

    def __init__(self, pipe, spec: TinyGeneratorSpec):
        super().__init__()
        self.pipe, self.spec = pipe, spec
        self.transformer, self.text_encoder = pipe.transformer.train(), pipe.text_encoder.train()
        self.denoising = Denoising(pipe)
        self.ema = torch.optim.swa_utils.AveragedModel(
            torch.nn.ModuleDict({"transformer": self.transformer, "text": self.text_encoder}),
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(spec.ema))
        self.ema.requires_grad_(False)
        self.noise = torch.Generator().manual_seed(spec.seed + 1)

    def training_step(self, batch, batch_idx):
        x0, captions = batch
        keep = torch.rand(len(captions), generator=self.noise) >= self.spec.caption_dropout
        captions = [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]
        d = self.denoising
        cond = d.encode_text(captions)
        noise = torch.randn(x0.shape, generator=self.noise).to(x0)
        t = d.sample_t(len(x0), x0.device, self.noise)
        pred = d.denoise(self.transformer, d.add_noise(x0, noise, t), t, cond)
        loss = torch.nn.functional.mse_loss(pred.float(), d.target(x0, noise, t).float())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x0))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.ema.update_parameters(
            torch.nn.ModuleDict({"transformer": self.transformer, "text": self.text_encoder}))

    def configure_optimizers(self):
        spec = OptimizerSpec(lr=self.spec.lr, warmup_ratio=0.03, min_lr_ratio=0.1)
        params = [*self.transformer.parameters(), *self.text_encoder.parameters()]
        opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(self.spec.steps, spec.warmup_ratio, spec.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def averaged_pipeline(self):
        """A copy of the pipeline holding the averaged weights, in eval mode."""
        pipe = copy.deepcopy(self.pipe)
        pipe.transformer.load_state_dict(self.ema.module["transformer"].state_dict())
        pipe.text_encoder.load_state_dict(self.ema.module["text"].state_dict())
        pipe.transformer.eval()
        pipe.text_encoder.eval()
        return pipe


def oracle_eval(pipe, spec: TinyGeneratorSpec, *, captions: list[str] | None = None,
                seeds: list[int] | None = None, batch_size: int = 32) -> dict:
    """Sample each held-out caption once with a fixed seed and score the samples by the
    oracle (:func:`ur.data.synthetic.oracle.score_samples`)."""
    captions = captions or held_out_captions(spec.kind, spec.eval_captions, spec.held_out_seed)
    seeds = seeds if seeds is not None else list(range(len(captions)))
    d = Denoising(pipe)
    samples = []
    for i in range(0, len(captions), batch_size):
        samples.append(d.sample(captions[i:i + batch_size], seeds[i:i + batch_size],
                                num_inference_steps=spec.sample_steps,
                                guidance_scale=spec.guidance, num_frames=spec.num_frames))
    samples = np.concatenate(samples)
    return {**score_samples(samples, captions, spec.kind), "samples": samples}


class OracleCurve(Callback):
    """Every ``every`` steps, the oracle's verdict on the averaged model's samples."""

    def __init__(self, spec: TinyGeneratorSpec):
        self.spec, self.points, self.start = spec, [], None

    def on_train_start(self, trainer, module):
        self.start = time.time()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.spec.eval_every == 0 and step < self.spec.steps:
            self.record(step, module)

    def record(self, step: int, module) -> dict:
        found = oracle_eval(module.averaged_pipeline(), self.spec)
        point = {"step": step, "minutes": round((time.time() - self.start) / 60, 2),
                 **{k: round(found[k], 4) for k in ("alignment", "quality", "score")},
                 "checks": {k: round(v, 3) for k, v in found["checks"].items()}}
        self.points.append(point)
        print(f"step {step}: held-out alignment {point['alignment']:.3f}, quality "
              f"{point['quality']:.3f} {point['checks']}", file=sys.stderr, flush=True)
        return found


def ensure_tiny_generator(checkpoint: str | Path, spec: TinyGeneratorSpec) -> Path:
    """Return ``checkpoint``, building and pretraining it first if it is missing or was
    built from another spec. Processes that ask at once build it once."""
    from ur.io import exclusive

    checkpoint = Path(checkpoint)
    wanted = json.loads(json.dumps({**asdict(spec), "format": FORMAT}))
    with exclusive(checkpoint):
        if needs_build(checkpoint, wanted, option="pretrain_generator"):
            _build(checkpoint, spec, wanted)
    return checkpoint


def _build(checkpoint: Path, spec: TinyGeneratorSpec, wanted: dict) -> None:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from ur.callbacks import ProgressLines
    from ur.io import atomic_dir, write_json_atomic

    L.seed_everything(spec.seed, workers=True)
    pipe = build_tiny_generator(world_vocabulary(), spec.config(), seed=spec.seed)
    module = GeneratorPretrainModule(pipe, spec)
    data = RenderedScenes(spec.kind, spec.size, spec.num_frames, spec.seed, spec.held_out_seed)
    loader = torch.utils.data.DataLoader(data, batch_size=spec.batch_size, num_workers=1,
                                         persistent_workers=True)
    curve = OracleCurve(spec)
    with atomic_dir(checkpoint) as tmp:
        run_dir = tmp / "pretrain_run"
        run_dir.mkdir(parents=True)
        print(f"pretraining the tiny {spec.kind} generator: {spec.steps} steps",
              file=sys.stderr)
        trainer = L.Trainer(max_steps=spec.steps, accelerator="cpu", devices=1,
                            logger=CSVLogger(str(run_dir), name="", version=""),
                            enable_checkpointing=False, enable_model_summary=False,
                            log_every_n_steps=10, default_root_dir=str(run_dir),
                            enable_progress_bar=sys.stderr.isatty(),
                            callbacks=[curve, ProgressLines(every=100)])
        trainer.fit(module, train_dataloaders=loader)
        final = curve.record(trainer.global_step, module)
        pipe = module.averaged_pipeline()
        pipe.save_pretrained(tmp)
        _save_grid(final["samples"], run_dir / "samples.png")
        metrics = {"steps": trainer.global_step,
                   "train/loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
                   "minutes": round((time.time() - curve.start) / 60, 2),
                   "parameters": {"transformer": parameter_count(pipe.transformer),
                                  "text_encoder": parameter_count(pipe.text_encoder)},
                   "oracle": curve.points[-1], "curve": curve.points,
                   "eval_captions": held_out_captions(spec.kind, spec.eval_captions,
                                                      spec.held_out_seed)}
        write_json_atomic(run_dir / "metrics.json", {"pretrain": metrics})
        write_json_atomic(tmp / SPEC_FILE, {"spec": wanted, "metrics": metrics})


def _save_grid(samples: np.ndarray, path: Path, columns: int = 8) -> None:
    """The samples as one PNG grid (a clip shows its frames side by side)."""
    from PIL import Image

    if samples.ndim == 5:  # (N, F, H, W, 3): frames left to right
        samples = np.concatenate(list(samples.transpose(1, 0, 2, 3, 4)), axis=2)
    n, h, w, _ = samples.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for i, s in enumerate(samples):
        r, c = divmod(i, columns)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = s
    Image.fromarray(grid).save(path)
