"""DiffusionDPOModule on tiny random generators (images 4-D, clips 5-D; epsilon, v and
flow targets): the first loss is ln 2 with every reference, winner and loser share
their noise and timestep, the loss is the hand-computed one from the module's own
predictions (per sample over every non-batch dim), the reference is the generator as
it starts, the online reference follows the trained adapter only at its refreshes, and
the export is the trained generator with LoRA merged. Also ``ur fit`` of the
text-to-image experiment under DDP with 2 CPU processes."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, WanTransformer3DModel
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from minirun import REPO, run_ur
from torch.utils.data import DataLoader

from ur.align.diffusion_dpo import DiffusionDPOModule
from ur.models.generators import TinyGeneratorConfig, build_tiny_generator, load_generator
from ur.pretrain.tiny_generator import world_vocabulary
from ur.training import OptimizerSpec

LN2 = math.log(2)
T2I = REPO / "experiments" / "dpo" / "t2i.yaml"
FINETUNE = {"adapters_off": "lora", "copy": "full", "online": "lora"}
GENERATORS = {"image-flow": ("image", "flow"), "image-v": ("image", "v"),
              "video-epsilon": ("video", "epsilon"), "video-flow": ("video", "flow")}
SIZE, FRAMES = 8, 2
PROMPTS = ["a red circle", "a blue square on the left", "a green triangle moving up",
           "two yellow diamonds", "a purple circle and an orange square"]

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def tiny_config(kind: str, prediction: str, size: int = SIZE) -> TinyGeneratorConfig:
    return TinyGeneratorConfig(kind=kind, prediction=prediction, size=size, patch=2, layers=1,
                               heads=2, head_dim=8, text_hidden=16, text_layers=1)


@pytest.fixture(scope="session")
def generators(tmp_path_factory) -> dict[str, str]:
    """``{name: folder}``: a tiny random generator of each of ``GENERATORS`` saved as a
    diffusers folder (no pretraining)."""
    root = tmp_path_factory.mktemp("generators")
    for name, (kind, prediction) in GENERATORS.items():
        pipe = build_tiny_generator(world_vocabulary(), tiny_config(kind, prediction), seed=1)
        pipe.save_pretrained(root / name, safe_serialization=True)
    return {name: str(root / name) for name in GENERATORS}


def pair_batch(name: str, n: int = 3, seed: int = 0) -> dict:
    """``n`` pairs of random pixels in [-1, 1] shaped for generator ``name``."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, *((FRAMES,) if name.startswith("video") else ()), SIZE, SIZE)
    return {"prompts": [PROMPTS[(seed + i) % len(PROMPTS)] for i in range(n)],
            "chosen": torch.rand(shape, generator=g) * 2 - 1,
            "rejected": torch.rand(shape, generator=g) * 2 - 1}


def dpo_module(folder: str, reference: str = "adapters_off", **kwargs):
    return DiffusionDPOModule(checkpoint=folder, finetune=FINETUNE[reference],
                              reference=reference, sample_steps=3, num_frames=FRAMES,
                              **{"export": False, "log_samples": False, **kwargs})


def perturb(module, scale: float = 0.2, seed: int = 0) -> None:
    """Move every trainable weight of the module's denoiser (LoRA or all), so the policy
    no longer equals its reference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.denoiser.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


class DenoiserCalls:
    """Every call of a diffusers denoiser (SD3 or Wan transformer) while open: its tensor
    inputs, its output and whether that output carries gradient (the policy's does, the
    reference's does not)."""

    def __enter__(self):
        self.calls = []
        self._handle = torch.nn.modules.module.register_module_forward_hook(
            self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def _record(self, module, args, kwargs, output):
        if isinstance(module, (SD3Transformer2DModel, WanTransformer3DModel)):
            out = output[0] if isinstance(output, tuple) else output.sample
            self.calls.append({"inputs": {k: v.detach().clone() for k, v in kwargs.items()
                                          if torch.is_tensor(v)},
                               "out": out.detach().clone(), "grad": out.requires_grad})

    def one(self, *, grad: bool) -> dict:
        found = [c for c in self.calls if c["grad"] == grad]
        assert len(found) == 1, f"{len(found)} denoiser calls with grad={grad}"
        return found[0]


def noise_factors(module, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of x_t = a * x0 + b * noise at the timesteps the denoiser was given, from
    the generator's own diffusers scheduler."""
    shape = (-1,) + (1,) * (ndim - 1)
    scheduler = module.pipe.scheduler
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        s = (t.double() / scheduler.config.num_train_timesteps).view(shape)
        return 1 - s, s
    abar = scheduler.alphas_cumprod.double()[t.long()].view(shape)
    return abar.sqrt(), (1 - abar).sqrt()


def hand_target(module, x0, noisy, t) -> torch.Tensor:
    """The regression target for the noise the step drew (recovered from its noisy
    input), by diffusers' definitions."""
    a, b = noise_factors(module, t, x0.ndim)
    x0 = x0.double()
    noise = (noisy.double() - a * x0) / b
    scheduler = module.pipe.scheduler
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return noise - x0
    if scheduler.config.prediction_type == "epsilon":
        return noise
    return scheduler.get_velocity(x0, noise, t.long())


def hand_loss(pred, ref, target, beta: float, kind: str = "sigmoid", dims=None):
    """Diffusion-DPO written out: squared error averaged over ``dims`` (default: every
    non-batch dim), z = -0.5 ((mse_w - mse_l) - (ref_w - ref_l)), then the loss."""
    dims = dims or tuple(range(1, pred.ndim))
    model_w, model_l = ((pred.double() - target) ** 2).mean(dim=dims).chunk(2)
    ref_w, ref_l = ((ref.double() - target) ** 2).mean(dim=dims).chunk(2)
    z = -0.5 * ((model_w - model_l) - (ref_w - ref_l))
    if kind == "sigmoid":
        return (-F.logsigmoid(beta * z)).mean().item()
    if kind == "hinge":
        return torch.relu(1 - beta * z).mean().item()
    return ((z - 1 / (2 * beta)) ** 2).mean().item()


def stepped(module, batch, seed: int = 0):
    """One pair step with the global RNG at ``seed``, its loss and the denoiser calls."""
    torch.manual_seed(seed)
    with DenoiserCalls() as calls:
        loss = module.pair_step(batch, "train")
    return loss, calls


# -- the first loss ------------------------------------------------------------------------

@pytest.mark.parametrize("reference", list(FINETUNE))
@pytest.mark.parametrize("name", list(GENERATORS))
def test_the_first_loss_is_ln2(generators, name, reference):
    module = dpo_module(generators[name], reference, beta=5000.0)
    loss = module.pair_step(pair_batch(name), "train")
    assert loss.item() == pytest.approx(LN2, abs=1e-5)


@pytest.mark.parametrize("beta", [0.25, 2.0])
def test_ipo_uses_its_own_beta(generators, beta):
    # At step 0 z = 0, so IPO's (z - 1 / (2 beta))^2 is 1 / (4 beta^2): 4 and 1/16.
    module = dpo_module(generators["image-flow"], loss="ipo", beta=beta)
    loss = module.pair_step(pair_batch("image-flow"), "train")
    assert loss.item() == pytest.approx(1 / (4 * beta ** 2), rel=1e-6)


def test_implicit_accuracy_is_half_and_the_logged_loss_ln2_at_step_0(generators, tmp_path):
    module = dpo_module(generators["video-epsilon"])
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader([pair_batch("video-epsilon")],
                                                     batch_size=None))
    logged = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert logged["train/implicit_acc"] == 0.5
    assert logged["train/loss"] == pytest.approx(LN2, abs=1e-5)
    assert logged["train/rewards/margins"] == 0.0


# -- noise, timesteps and the loss by hand --------------------------------------------------

@pytest.mark.parametrize("name", list(GENERATORS))
def test_winner_and_loser_share_noise_and_timestep(generators, name):
    """x_t = a_t x0 + b_t noise, so with one noise and one t per pair the winner's noisy
    input minus the loser's is a_t (x0_w - x0_l) exactly; another noise adds
    b_t (noise_w - noise_l), another t changes a_t."""
    module = dpo_module(generators[name])
    batch = pair_batch(name, n=3)
    _, calls = stepped(module, batch)
    policy = calls.one(grad=True)["inputs"]
    reference = calls.one(grad=False)["inputs"]
    noisy, t = policy["hidden_states"], policy["timestep"]
    assert torch.equal(reference["hidden_states"], noisy) and torch.equal(reference["timestep"], t)
    n = len(batch["prompts"])
    assert torch.equal(t[:n], t[n:]), "one timestep per pair"
    assert len(set(t[:n].tolist())) == n, "each pair draws its own timestep"
    x0 = torch.cat([batch["chosen"], batch["rejected"]])
    a, b = noise_factors(module, t, x0.ndim)
    assert (b[:n] > 0.01).all(), "the noise is visible at these timesteps"
    gap = (noisy[:n] - noisy[n:]).double()
    assert torch.allclose(gap, a[:n] * (x0[:n] - x0[n:]).double(), atol=2e-5)
    assert not torch.allclose(noisy.double(), a * x0.double(), atol=1e-2), "noise was added"


@pytest.mark.parametrize(("name", "kind"), [*((g, "sigmoid") for g in GENERATORS),
                                            ("image-v", "hinge"), ("video-epsilon", "ipo")])
def test_the_loss_is_the_hand_computed_one(generators, name, kind):
    module = dpo_module(generators[name], loss=kind, beta=100.0)
    perturb(module)
    batch = pair_batch(name)
    loss, calls = stepped(module, batch)
    policy, reference = calls.one(grad=True), calls.one(grad=False)
    x0 = torch.cat([batch["chosen"], batch["rejected"]])
    target = hand_target(module, x0, policy["inputs"]["hidden_states"],
                         policy["inputs"]["timestep"])
    expected = hand_loss(policy["out"], reference["out"], target, 100.0, kind)
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    at_start = {"sigmoid": LN2, "hinge": 1.0, "ipo": 1 / 40000}[kind]  # policy = reference
    assert abs(expected - at_start) > 0.02 * at_start, "the policy differs from the reference"


def test_the_video_error_is_per_sample_not_per_column(generators):
    """Over a 5-D (B, C, F, H, W) prediction a mean over dims 1-3 leaves one error per
    column (W) that the loss then treats as separate pairs; the module's loss is the
    per-sample one and measurably not that."""
    module = dpo_module(generators["video-flow"], beta=20.0)
    perturb(module, scale=0.5)
    batch = pair_batch("video-flow")
    loss, calls = stepped(module, batch)
    policy, reference = calls.one(grad=True), calls.one(grad=False)
    assert policy["out"].ndim == 5
    x0 = torch.cat([batch["chosen"], batch["rejected"]])
    target = hand_target(module, x0, policy["inputs"]["hidden_states"],
                         policy["inputs"]["timestep"])
    per_sample = hand_loss(policy["out"], reference["out"], target, 20.0)
    per_column = hand_loss(policy["out"], reference["out"], target, 20.0, dims=(1, 2, 3))
    assert loss.item() == pytest.approx(per_sample, rel=1e-4)
    assert abs(per_sample - per_column) > 20 * abs(loss.item() - per_sample) + 1e-3


@pytest.mark.parametrize("reference", list(FINETUNE))
def test_the_reference_is_the_generator_as_it_starts(generators, reference):
    module = dpo_module(generators["image-flow"], reference)
    perturb(module)
    _, calls = stepped(module, pair_batch("image-flow"))
    ref = calls.one(grad=False)
    base = load_generator(generators["image-flow"]).transformer
    with torch.no_grad():
        start = base(**ref["inputs"], return_dict=False)[0]
    assert torch.allclose(ref["out"], start, atol=1e-6)
    assert not torch.allclose(calls.one(grad=True)["out"], start, atol=1e-3)


# -- the online reference ------------------------------------------------------------------

def adapter_weights(module, adapter: str) -> dict[str, torch.Tensor]:
    return {name.replace(f".{adapter}.", "."): p.detach().clone()
            for name, p in module.denoiser.named_parameters() if f".{adapter}." in name}


class AdapterLog(Callback):
    """Both adapters' weights and whether the ref adapter trains, as each step starts
    and when training ends."""

    def __init__(self):
        self.default, self.ref, self.ref_trains = [], [], []

    def _note(self, module):
        self.default.append(adapter_weights(module, "default"))
        self.ref.append(adapter_weights(module, "ref"))
        self.ref_trains.append(any(p.requires_grad or p.grad is not None
                                   for name, p in module.denoiser.named_parameters()
                                   if ".ref." in name))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._note(module)

    def on_train_end(self, trainer, module):
        self._note(module)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_online_reference_takes_the_trained_adapter_at_each_refresh(generators, tmp_path):
    # Refreshes every 2 optimizer steps: after steps 2 and 4; log i is taken as step i
    # starts (i = 0..4), log 5 when training ends after step 5.
    module = dpo_module(generators["image-flow"], "online", ref_update_steps=2, beta=50.0,
                        optimizer=OptimizerSpec(lr=1e-2, warmup_ratio=0.0, min_lr_ratio=1.0))
    log = AdapterLog()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=5, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=tmp_path, callbacks=[log])
    trainer.fit(module, train_dataloaders=DataLoader(
        [pair_batch("image-flow", seed=s) for s in range(5)], batch_size=None))
    d, r = log.default, log.ref
    assert len(d) == 6 and d[0].keys() == r[0].keys() and d[0]
    assert same(r[0], d[0]), "ref starts as the trained adapter"
    assert all(not same(d[i], d[i + 1]) for i in range(5)), "the adapter trains every step"
    assert same(r[1], r[0]) and not same(r[1], d[1]), "no refresh after step 1"
    assert same(r[2], d[2]) and not same(r[2], r[0]), "refreshed after step 2"
    assert same(r[3], r[2]) and not same(r[3], d[3])
    assert same(r[4], d[4]) and not same(r[4], r[2]), "refreshed after step 4"
    assert same(r[5], r[4]) and not same(r[5], d[5])
    assert not any(log.ref_trains), "the ref adapter never trains (nor gets a gradient)"
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not any(id(p) in optimized for name, p in module.denoiser.named_parameters()
                   if ".ref." in name)


# -- export --------------------------------------------------------------------------------

@pytest.mark.parametrize("reference", ["adapters_off", "online"])
def test_the_export_is_the_trained_generator_with_lora_merged(generators, tmp_path, reference):
    module = dpo_module(generators["image-flow"], reference, export=True, beta=50.0,
                        optimizer=OptimizerSpec(lr=1e-2, warmup_ratio=0.0, min_lr_ratio=1.0))
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints",
                                                 save_last=True)],
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader(
        [pair_batch("image-flow", seed=s) for s in range(3)], batch_size=None))
    exported = load_generator(tmp_path / "export")
    keys = list(exported.transformer.state_dict())
    assert keys and not any("lora" in k for k in keys)
    assert not getattr(exported.transformer, "peft_config", None)
    assert keys == list(load_generator(generators["image-flow"]).transformer.state_dict())
    assert module.denoiser.peft_config, "the module keeps its adapters"
    prompts, seeds = PROMPTS[:3], [11, 12, 13]
    ours = module.sample(prompts, seeds)
    theirs = dpo_module(str(tmp_path / "export"), reference).sample(prompts, seeds)
    start = dpo_module(generators["image-flow"], reference).sample(prompts, seeds)
    assert np.array_equal(ours, theirs)
    assert (ours != start).mean() > 0.05, "training moved the samples"
    if reference == "adapters_off":
        # `ur export` of the run's checkpoint writes the same generator.
        from ur.cli import main

        assert main(["export", str(tmp_path / "checkpoints" / "last.ckpt"), "--module",
                     "generator", "--out", str(tmp_path / "exported")]) == 0
        again = dpo_module(str(tmp_path / "exported"), reference).sample(prompts, seeds)
        assert np.array_equal(ours, again)


# -- ur fit and ur test with 2 CPU processes -----------------------------------------------

@pytest.fixture(scope="module")
def oracle_pairs(tmp_path_factory) -> dict[str, Path]:
    """A tiny random 16-pixel text-to-image generator and 4 pairs of its own samples,
    best against worst by the oracle."""
    from ur.construct.oracle_generation import construct_oracle_generation_pairs

    root = tmp_path_factory.mktemp("oracle_pairs")
    pipe = build_tiny_generator(world_vocabulary(), tiny_config("image", "flow", size=16), seed=1)
    pipe.save_pretrained(root / "generator", safe_serialization=True)
    construct_oracle_generation_pairs(root / "generator", root / "pairs", kind="image",
                                      prompts=4, n=2, sample_steps=2, min_gap=0.0)
    return {"generator": root / "generator", "pairs": root / "pairs" / "image_pairs.parquet"}


def t2i_args(oracle_pairs, prompts: int) -> list[str]:
    """experiments/dpo/t2i.yaml on the tiny generator and pairs of ``oracle_pairs``."""
    held_out = f"{{kind: image, count: {prompts}}}"
    return ["--config", str(T2I), "--pretrain_generator", "null",
            "--model.init_args.checkpoint", str(oracle_pairs["generator"]),
            "--model.init_args.sample_steps", "2",
            "--data.init_args.train", f"[{{name: pickapic_v2, path: {oracle_pairs['pairs']}}}]",
            "--data.init_args.prompts", held_out, "--data.init_args.test_prompts", held_out,
            "--data.init_args.resolution", "16", "--data.init_args.batch_size", "2",
            "--trainer.max_steps", "4", "--trainer.val_check_interval", "2"]


DDP = ("--trainer.strategy", "ddp", "--trainer.devices", "2")


@pytest.mark.slow
def test_ddp_fit_makes_one_run_folder_with_the_oracle_figures(oracle_pairs, tmp_path):
    run = run_ur("fit", *t2i_args(oracle_pairs, 4), *DDP, "--run.name", "ddp_t2i",
                 cwd=tmp_path, env={"WANDB_MODE": "offline"}, timeout=600)
    run_dirs = list((tmp_path / "checkpoints" / "ddp_t2i").iterdir())
    assert run_dirs == [Path(run.stdout.strip().splitlines()[-1])]
    metrics = json.loads((run_dirs[0] / "metrics.json").read_text())
    assert 0 <= metrics["fit"]["val/oracle_alignment"] <= 1
    assert 0 <= metrics["test"]["test/oracle_alignment"] <= 1
    assert load_generator(run_dirs[0] / "export").transformer is not None


@pytest.mark.slow
def test_ddp_test_gives_the_single_process_oracle_figures(oracle_pairs, tmp_path):
    # 5 held-out captions: rank 0 samples 3 of them, rank 1 samples 2.
    figures = []
    for devices in ("1", "2"):
        run = run_ur("test", *t2i_args(oracle_pairs, 5), "--trainer.strategy", "ddp",
                     "--trainer.devices", devices, "--run.name", f"test_{devices}",
                     cwd=tmp_path, env={"WANDB_MODE": "offline"}, timeout=600)
        metrics = json.loads((Path(run.stdout.strip().splitlines()[-1]) / "metrics.json")
                             .read_text())
        figures.append(metrics["test"])
        figures.append((Path(run.stdout.strip().splitlines()[-1]) / "test_samples.jsonl")
                       .read_text())
    single, single_rows, ddp, ddp_rows = figures
    assert single_rows == ddp_rows and len(single_rows.splitlines()) == 5
    assert {"test/oracle_alignment", "test/oracle_quality"} <= single.keys() == ddp.keys()
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, abs=1e-6), key


def test_the_test_writes_each_samples_oracle_figures(generators, tmp_path):
    """test_samples.jsonl: one row per caption and seed, the oracle's figures of the very
    sample the seed draws, whose mean is the logged test figure."""
    from ur.data.synthetic.oracle import score_samples

    module = dpo_module(generators["image-flow"])
    prompts = [{"prompts": PROMPTS[:2], "seeds": [0, 1]}, {"prompts": PROMPTS[2:3], "seeds": [2]}]
    trainer = Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      default_root_dir=str(tmp_path))
    metrics = trainer.test(module, dataloaders=DataLoader(prompts, batch_size=None))[0]
    rows = [json.loads(line) for line in (tmp_path / "test_samples.jsonl").read_text().splitlines()]
    assert sorted((r["prompt"], r["seed"]) for r in rows) == sorted(zip(PROMPTS[:3], [0, 1, 2], strict=True))
    for r in rows:
        again = score_samples(module.sample([r["prompt"]], [r["seed"]]), [r["prompt"]], "image")
        assert (r["alignment"], r["quality"]) == pytest.approx(
            (again["alignment"], again["quality"]))
    assert metrics["test/oracle_alignment"] == pytest.approx(
        sum(r["alignment"] for r in rows) / len(rows))


def test_cached_latents_and_text_are_what_encoding_gives(generators):
    """With both caches on, a pair seen again is read back in its own place in the batch:
    the denoiser's space and the text inputs equal fresh encodings, rows in batch order."""
    module = dpo_module(generators["video-epsilon"], cache_latents=True, cache_text=True)
    first = {**pair_batch("video-epsilon", n=3, seed=0), "ids": ["a", "b", "c"]}
    module.encode_pairs(first)
    assert sorted(module._latent_cache) == ["a", "b", "c"]
    again = {"ids": ["c", "a"], "prompts": [first["prompts"][2], first["prompts"][0]],
             "chosen": first["chosen"][[2, 0]], "rejected": first["rejected"][[2, 0]]}
    cached = module.encode_pairs({**again, "chosen": again["chosen"] * 0})  # not re-read
    fresh = torch.cat([again["chosen"], again["rejected"]])
    assert torch.equal(cached, fresh)
    text = module.encode_text(again["prompts"])
    with torch.no_grad():
        direct = module.denoising.encode_text(again["prompts"])
    for key, value in direct.items():
        torch.testing.assert_close(text[key], value)


@pytest.mark.parametrize("name", ["image-flow", "video-epsilon"])
def test_validation_logs_the_oracles_figures_and_a_grid_of_samples(generators, tmp_path,
                                                                    monkeypatch, name):
    """Held-out prompts are sampled and scored; the samples reach W&B as images (a
    clip as a strip of its frames) with their captions."""
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    module = dpo_module(generators[name], log_samples=True)
    prompts = [{"prompts": PROMPTS[:2], "seeds": [0, 1]}, {"prompts": PROMPTS[2:3], "seeds": [2]}]
    trainer = Trainer(accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      logger=WandbLogger(save_dir=str(tmp_path), offline=True))
    try:
        metrics = trainer.validate(module, dataloaders=DataLoader(prompts, batch_size=None))[0]
        trainer.logger.experiment.finish()
    finally:
        # The W&B service this process started must not outlive the test: its address
        # (WANDB_SERVICE) would reach every later `ur` subprocess, and a resumed run
        # would find its killed run's id still held there.
        import wandb

        wandb.teardown()
        os.environ.pop("WANDB_SERVICE", None)
    assert {"val/oracle_alignment", "val/oracle_quality", "val/oracle_score"} <= set(metrics)
    assert 0.0 <= metrics["val/oracle_alignment"] <= 1.0
    pngs = list(tmp_path.rglob("media/images/val/samples_*.png"))
    assert len(pngs) == 3
    from PIL import Image

    width = SIZE * (FRAMES if name.startswith("video") else 1)
    assert all(Image.open(p).size == (width, SIZE) for p in pngs)
