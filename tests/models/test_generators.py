"""The tiny pixel-space generators and load_generator: a saved pipeline loads back and
samples the same for fixed seeds, no code shipped with a folder runs unless asked for,
a missing local folder is not looked up on the hub, the tokenizer knows every caption
word of the world, and the training interface's noising and targets are diffusers' own."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from ur.data.synthetic.captions import HELD_OUT_POOL, held_out_captions, training_captions
from ur.models.generators import (
    TOKEN_IDS,
    Denoising,
    PixelDiffusionPipeline,
    TinyGeneratorConfig,
    build_tiny_generator,
    load_generator,
    save_pipeline,
)
from ur.pretrain.tiny_generator import world_vocabulary

PIPES = {"image-flow": ("image", "flow"), "image-v": ("image", "v"),
         "video-epsilon": ("video", "epsilon")}
PROMPTS = ["a red circle on the left", "a blue square and a yellow diamond", "a green triangle"]


@pytest.fixture(scope="module")
def pipes() -> dict[str, PixelDiffusionPipeline]:
    """Tiny random generators (8 pixels, one block), built in memory."""
    return {name: build_tiny_generator(world_vocabulary(), TinyGeneratorConfig(
        kind=kind, prediction=prediction, size=8, patch=2, layers=1, heads=2, head_dim=8,
        text_hidden=16, text_layers=1), seed=1) for name, (kind, prediction) in PIPES.items()}


def samples(pipe, seeds=(3, 5, 7)) -> np.ndarray:
    return Denoising(pipe).sample(PROMPTS, list(seeds), num_inference_steps=3, num_frames=2)


# -- saving and loading ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PIPES))
def test_a_saved_generator_loads_back_and_samples_the_same(pipes, name, tmp_path):
    pipe = pipes[name]
    folder = save_pipeline(pipe, tmp_path / name)
    loaded = load_generator(folder)
    assert type(loaded) is PixelDiffusionPipeline
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert loaded.scheduler.config.get("prediction_type") == pipe.scheduler.config.get(
        "prediction_type")
    assert list(folder.glob("*/*.safetensors")) and not list(folder.glob("*/*.bin"))
    before = samples(pipe)
    assert np.array_equal(samples(loaded), before)
    assert not np.array_equal(samples(loaded, seeds=(4, 5, 7)), before), "seeds matter"


SHIPPED_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from diffusers import DiffusionPipeline, ModelMixin


class ShippedPipeline(DiffusionPipeline):
    pass


class ShippedModel(ModelMixin):
    pass
"""


def with_shipped_code(pipe, folder, layout: str, marker) -> None:
    """Save ``pipe`` to ``folder`` with a module of code that writes ``marker`` when
    imported, named by model_index.json as the pipeline class (``pipeline``) or as the
    transformer's class (``component``)."""
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    code = SHIPPED_CODE.format(marker=str(marker))
    if layout == "pipeline":
        (folder / "pipeline.py").write_text(code)
        index["_class_name"] = ["pipeline", "ShippedPipeline"]
    else:
        (folder / "transformer" / "shipped.py").write_text(code)
        index["transformer"] = ["shipped", "ShippedModel"]
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("layout", ["pipeline", "component"])
def test_code_shipped_with_a_folder_runs_only_when_asked_for(pipes, tmp_path, layout):
    marker = tmp_path / "code_ran"
    with_shipped_code(pipes["image-flow"], tmp_path / "g", layout, marker)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_generator(tmp_path / "g")
    assert not marker.exists(), "refused without importing the shipped code"
    # The same folder with the opt-in does run it: the refusal above is the default's.
    with pytest.raises((AttributeError, TypeError, ValueError)):
        load_generator(tmp_path / "g", trust_remote_code=True)
    assert marker.exists()


def test_a_pipeline_class_outside_diffusers_is_refused_not_imported(pipes, tmp_path):
    marker = tmp_path / "code_ran"
    folder = tmp_path / "g"
    with_shipped_code(pipes["image-flow"], folder, "pipeline", marker)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index,
                                                         "_class_name": "ShippedPipeline"}))
    with pytest.raises(ValueError, match="'ShippedPipeline'.*trust_remote_code"):
        load_generator(folder)
    assert not marker.exists()


@pytest.mark.parametrize("path", ["./t2i-absent", "checkpoints/tiny/t2i-absent", "{tmp}/absent"])
def test_a_missing_local_folder_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_generator(path.format(tmp=tmp_path))


def test_a_folder_without_a_pipeline_is_refused(pipes, tmp_path):
    pipes["image-flow"].save_pretrained(tmp_path / "g")
    shutil.rmtree(tmp_path / "g" / "transformer")
    with pytest.raises((OSError, ValueError)):
        load_generator(tmp_path / "g")


# -- the tokenizer ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["image", "video"])
def test_the_tokenizer_knows_every_caption_word_of_the_world(pipes, kind):
    tokenizer = pipes["image-flow"].tokenizer
    captions = held_out_captions(kind, HELD_OUT_POOL) + training_captions(
        kind, 300, np.random.default_rng(0))
    for caption in captions:
        ids = tokenizer(caption)["input_ids"]
        assert TOKEN_IDS["unk"] not in ids, caption
        assert len(ids) == len(caption.split()) + 2 <= tokenizer.model_max_length, caption
    assert TOKEN_IDS["unk"] in tokenizer("a magenta circle")["input_ids"]


def test_the_pooled_text_is_read_at_the_end_of_the_caption(pipes):
    """CLIPTextModel pools at the first [EOS]: two captions that differ only in their last
    word get different pooled outputs."""
    pipe = pipes["image-flow"]
    with torch.no_grad():
        pooled = pipe.encode_prompt(["a red circle", "a red square"])["pooled_projections"]
    assert not torch.allclose(pooled[0], pooled[1])


# -- the noise process -----------------------------------------------------------------------

def draws(shape=(4, 3, 2, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("name", ["image-v", "video-epsilon"])
def test_ddpm_noising_and_targets_are_the_schedulers(pipes, name):
    d = Denoising(pipes[name])
    assert isinstance(d.scheduler, DDIMScheduler)
    x0, noise = draws()
    t = torch.tensor([0, 249, 500, 999])
    assert torch.allclose(d.add_noise(x0, noise, t), d.scheduler.add_noise(x0, noise, t),
                          atol=1e-6)
    expected = d.scheduler.get_velocity(x0, noise, t) if d.prediction == "v" else noise
    assert torch.allclose(d.target(x0, noise, t), expected, atol=1e-6)
    assert not torch.allclose(d.target(x0, noise, t), noise if d.prediction == "v" else
                              d.scheduler.get_velocity(x0, noise, t), atol=1e-3)
    assert torch.equal(d.model_timestep(t), t)


def test_flow_noising_and_target_are_the_schedulers(pipes):
    d = Denoising(pipes["image-flow"])
    scheduler = d.scheduler
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and d.prediction == "flow"
    x0, noise = draws((1, 3, 8, 8))
    scheduler.set_timesteps(5)
    for timestep in scheduler.timesteps:
        s = timestep.view(1) / scheduler.config.num_train_timesteps
        assert torch.allclose(d.model_timestep(s), timestep.view(1))
        assert torch.allclose(d.add_noise(x0, noise, s),
                              scheduler.scale_noise(x0, timestep.view(1), noise), atol=1e-6)
    assert torch.equal(d.target(x0, noise, s), noise - x0)


def test_training_timesteps(pipes):
    g = torch.Generator().manual_seed(0)
    sigmas = Denoising(pipes["image-flow"]).sample_t(500, "cpu", g)
    assert ((sigmas > 0) & (sigmas < 1)).all() and 0.4 < sigmas.mean() < 0.6
    turbo = [249, 499, 749, 999]
    t = Denoising(pipes["image-v"], timesteps=turbo).sample_t(200, "cpu", g)
    assert set(t.tolist()) == set(turbo)
    with pytest.raises(ValueError, match="flow"):
        Denoising(pipes["image-flow"], timesteps=turbo)


def test_an_epsilon_generator_starts_sampling_where_noise_still_tells_the_image():
    """An epsilon prediction gives the image estimate (x - sqrt(1 - a) eps) / sqrt(a): at
    a schedule's first sampling step a must keep some signal, or the estimate divides
    by about 0 and a trained model samples noise (the cosine schedule's a is 5e-5)."""
    pipe = build_tiny_generator(["a red circle"], TinyGeneratorConfig(kind="video",
                                                                      prediction="epsilon"))
    scheduler = pipe.scheduler
    scheduler.set_timesteps(12)
    first = scheduler.alphas_cumprod[scheduler.timesteps[0]]
    assert first > 1e-3
