"""Training interfaces of diffusers' own pipelines (SD, SDXL, SD3, Wan), each built tiny
from diffusers' test configs with a word-level tokenizer made here, saved with
``save_pretrained`` and loaded back through ``load_generator``."""

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

from ur.align.diffusion_dpo import DiffusionLoraSpec
from ur.align.losses import diffusion_dpo_loss
from ur.models.diffusers_families import denoising_for
from ur.models.generators import TOKEN_IDS, _word_tokenizer, load_generator

PROMPTS = ["a red circle on the left", "a blue square at the top"]
MAX_TOKENS = 16
IDS = {f"{k}_token_id": v for k, v in TOKEN_IDS.items()}


def tokenizer():
    return _word_tokenizer(PROMPTS + ["green triangle bottom right"], MAX_TOKENS)


def clip_config(**kw) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer()), hidden_size=32, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, projection_dim=32,
                          max_position_embeddings=MAX_TOKENS, **IDS, **kw)


def t5_kwargs(d_model: int) -> dict:
    return dict(vocab_size=len(tokenizer()), d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                eos_token_id=TOKEN_IDS["eos"], decoder_start_token_id=0)


def latent_vae(blocks=(4, 8), groups=2, **kw) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=list(blocks), in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * len(blocks),
                         up_block_types=["UpDecoderBlock2D"] * len(blocks),
                         latent_channels=4, norm_num_groups=groups, **kw)


def build_sd():
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=latent_vae(), text_encoder=CLIPTextModel(clip_config()), tokenizer=tokenizer(),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def build_sdxl():
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=2, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=1)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=latent_vae(), text_encoder=CLIPTextModel(clip_config()),
        text_encoder_2=CLIPTextModelWithProjection(clip_config()), tokenizer=tokenizer(),
        tokenizer_2=tokenizer(), unet=unet, scheduler=scheduler, add_watermarker=False)


def build_sd3():
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
        pooled_projection_dim=64, out_channels=4)
    vae = latent_vae(blocks=(4,), groups=1, use_quant_conv=False, use_post_quant_conv=False,
                     shift_factor=0.0609, scaling_factor=1.5035)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=CLIPTextModelWithProjection(clip_config()), tokenizer=tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(clip_config()), tokenizer_2=tokenizer(),
        text_encoder_3=T5EncoderModel(T5Config(**t5_kwargs(64))), tokenizer_3=tokenizer())


def build_wan():
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    # The scheduler Wan2.1's diffusers checkpoints ship: UniPC on flow sigmas.
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=3.0)
    return WanPipeline(tokenizer=tokenizer(), text_encoder=UMT5EncoderModel(UMT5Config(**t5_kwargs(32))),
                       vae=vae, scheduler=scheduler, transformer=transformer)


# family -> (builder, media shape (C, [F,] H, W) in pixels, latent shape, sampling kwargs)
FAMILIES = {
    "sd": (build_sd, (3, 32, 32), (4, 16, 16), {}),
    "sdxl": (build_sdxl, (3, 32, 32), (4, 16, 16), {"height": 32, "width": 32}),
    "sd3": (build_sd3, (3, 16, 16), (4, 16, 16), {"height": 16, "width": 16}),
    "wan": (build_wan, (3, 5, 16, 16), (16, 2, 2, 2), {"height": 16, "width": 16, "num_frames": 5}),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and spinning threads on a busy machine
    cost seconds per call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def family_pipes(one_thread, tmp_path_factory):
    """Each family built, saved and loaded back once."""
    root = tmp_path_factory.mktemp("families")
    pipes = {}
    for name, (build, *_) in FAMILIES.items():
        torch.manual_seed(0)
        build().save_pretrained(root / name, safe_serialization=True)
        pipes[name] = load_generator(root / name)
    return pipes


@pytest.fixture(params=list(FAMILIES))
def family(request, family_pipes):
    name = request.param
    _, media, latent, sample_kw = FAMILIES[name]
    return name, denoising_for(family_pipes[name]), media, latent, sample_kw


def pixels(media, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *media), generator=g) * 2 - 1


def test_loaded_pipelines_are_the_diffusers_classes(family_pipes):
    kinds = {name: type(pipe) for name, pipe in family_pipes.items()}
    assert kinds == {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline,
                     "sd3": StableDiffusion3Pipeline, "wan": WanPipeline}


def test_unknown_pipeline_names_the_supported_ones():
    with pytest.raises(ValueError, match="no training interface for Linear; supported: .*WanPipeline"):
        denoising_for(torch.nn.Linear(1, 1))


def test_encode_text_is_one_batch_first_embedding_per_prompt(family):
    name, d, *_ = family
    cond = d.encode_text(PROMPTS)
    expected = {"sd": {"encoder_hidden_states": (MAX_TOKENS, 32)},
                "sdxl": {"encoder_hidden_states": (MAX_TOKENS, 64), "text_embeds": (32,)},
                "sd3": {"encoder_hidden_states": (MAX_TOKENS + 256, 64),
                        "pooled_projections": (64,)},
                "wan": {"encoder_hidden_states": (512, 32)}}[name]
    assert {k: tuple(v.shape) for k, v in cond.items()} == {
        k: (len(PROMPTS), *s) for k, s in expected.items()}
    # Each prompt is encoded on its own: its row does not depend on the batch.
    alone = d.encode_text(PROMPTS[1:])
    for k in cond:
        torch.testing.assert_close(alone[k][0], cond[k][1], atol=1e-5, rtol=1e-5)


def test_encode_media_then_denoise_keeps_the_latent_shape(family):
    name, d, media, latent, _ = family
    x0 = d.encode_media(pixels(media))
    assert x0.shape == (2, *latent)
    assert d.video == (name == "wan")
    t = d.sample_t(2, "cpu", torch.Generator().manual_seed(0))
    noise = torch.randn_like(x0)
    with torch.no_grad():
        out = d.denoise(d.denoiser, d.add_noise(x0, noise, t), t, d.encode_text(PROMPTS))
    assert out.shape == x0.shape and torch.isfinite(out).all()


def test_latents_use_the_pipelines_scaling(family):
    """The pipeline's own decoding rule inverts encode_media: the scaled latents are
    what its __call__ would decode."""
    name, d, media, *_ = family
    vae = d.pipe.vae
    torch.manual_seed(0)
    x0 = d.encode_media(pixels(media))
    torch.manual_seed(0)
    with torch.no_grad():
        raw = vae.encode(pixels(media)).latent_dist.sample()
    config = vae.config
    if name == "wan":  # WanPipeline: latents / (1 / std) + mean
        shape = (1, config.z_dim, 1, 1, 1)
        decoded = x0 / (1.0 / torch.tensor(config.latents_std).view(shape)) + torch.tensor(
            config.latents_mean).view(shape)
    elif name == "sd3":  # StableDiffusion3Pipeline: latents / scaling + shift
        decoded = x0 / config.scaling_factor + config.shift_factor
    else:  # StableDiffusion(XL)Pipeline: latents / scaling
        decoded = x0 / config.scaling_factor
    torch.testing.assert_close(decoded, raw)


def test_sdxl_size_ids_are_the_training_crops(family_pipes):
    """original size, crop corner (0, 0), target size: the pixel size of the latents."""
    d = denoising_for(family_pipes["sdxl"])
    ids = d.time_ids(torch.zeros(2, 4, 16, 24), torch.zeros(2, 32))
    assert ids.tolist() == [[32, 48, 0, 0, 32, 48]] * 2


def test_ddpm_noise_and_targets_match_the_schedulers(family_pipes):
    """epsilon and v on the DDPM process that diffusers' training scripts use."""
    pipe = family_pipes["sd"]
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    d = denoising_for(pipe)
    assert d.prediction == "epsilon"
    torch.testing.assert_close(d.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t))
    torch.testing.assert_close(d.target(x0, noise, t), noise)
    v_pipe = type(pipe)(**{**pipe.components, "scheduler": DDIMScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction")})
    v = denoising_for(v_pipe)
    assert v.prediction == "v"
    torch.testing.assert_close(v.target(x0, noise, t), ddpm.get_velocity(x0, noise, t))


def test_sdxl_trains_on_the_ddpm_process_not_eulers_sigmas(family_pipes):
    pipe = family_pipes["sdxl"]
    d = denoising_for(pipe, timesteps=[249, 499, 749, 999])
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([249, 999])
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    torch.testing.assert_close(d.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t))
    assert set(d.sample_t(64, "cpu").tolist()) == {249, 499, 749, 999}


@pytest.mark.parametrize("name", ["sd3", "wan"])
def test_flow_noise_and_target_match_the_scheduler(family_pipes, name):
    """x_s = (1 - s) x0 + s noise as the flow scheduler's scale_noise gives it at its
    own timestep s * 1000; the target is noise - x0."""
    d = denoising_for(family_pipes[name])
    assert d.prediction == "flow"
    flow = FlowMatchEulerDiscreteScheduler(shift=d.shift)
    k = torch.tensor([10, 500, 990])
    sigma, timestep = flow.sigmas[k], flow.timesteps[k]
    x0, noise = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    torch.testing.assert_close(d.model_timestep(sigma), timestep)
    torch.testing.assert_close(d.add_noise(x0, noise, sigma), flow.scale_noise(x0, timestep, noise))
    torch.testing.assert_close(d.target(x0, noise, sigma), noise - x0)


def test_flow_training_sigmas_take_the_pipelines_shift(family_pipes):
    """Wan2.1 ships a UniPC scheduler with flow_shift 3: a logit-normal(0, 1) draw has
    median 0.5, shifted 3 * 0.5 / (1 + 2 * 0.5) = 0.75."""
    d = denoising_for(family_pipes["wan"])
    assert d.shift == 3.0
    s = d.sample_t(4000, "cpu", torch.Generator().manual_seed(0))
    assert abs(s.median().item() - 0.75) < 0.02 and 0 < s.min() and s.max() < 1


def test_sample_is_uint8_per_prompt_and_seed(family):
    name, d, media, _, kw = family
    out = d.sample(PROMPTS, [0, 1], num_inference_steps=2, guidance_scale=2.0, **kw)
    c, *spatial = media
    assert out.dtype == np.uint8 and out.shape == (2, *spatial, c)
    # Each sample comes from its own seed, whatever else is in the batch.
    alone = d.sample(PROMPTS[1:], [1], num_inference_steps=2, guidance_scale=2.0, **kw)
    np.testing.assert_array_equal(alone[0], out[1])


def test_dpo_pair_step_with_lora_starts_at_ln2(family):
    """A Diffusion-DPO pair step as DiffusionDPOModule takes it (shared noise and
    timestep, LoRA on the denoiser, the reference its adapters switched off): at step 0
    the policy is the reference, so the loss is ln 2, and the LoRA weights get a
    gradient."""
    name, d, media, *_ = family
    d = denoising_for(copy.deepcopy(d.pipe))
    denoiser = d.denoiser
    denoiser.requires_grad_(False)
    denoiser.add_adapter(DiffusionLoraSpec().config())
    x0 = torch.cat([d.encode_media(pixels(media, seed=1)), d.encode_media(pixels(media, seed=2))])
    cond = {k: torch.cat([v, v]) for k, v in d.encode_text(PROMPTS).items()}
    noise = torch.randn_like(x0[:2]).repeat((2,) + (1,) * (x0.ndim - 1))
    t = d.sample_t(2, "cpu").repeat(2)
    noisy, target = d.add_noise(x0, noise, t), d.target(x0, noise, t)
    pred = d.denoise(denoiser, noisy, t, cond)
    denoiser.disable_adapters()
    with torch.no_grad():
        ref = d.denoise(denoiser, noisy, t, cond)
    denoiser.enable_adapters()
    loss = diffusion_dpo_loss(pred, ref, target, beta=5000.0).losses.mean()
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    grads = [p.grad for n, p in denoiser.named_parameters() if "lora_B" in n]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
