"""The alignment losses: hand-computed values, parity with TRL 1.x's DPOTrainer, the
ln 2 sanity check at step 0, and Diffusion-DPO's per-sample MSE over every dim."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import selective_log_softmax

from ur.align.losses import (
    chosen_nll,
    diffusion_dpo_loss,
    diffusion_target,
    preference_loss,
    rpo_loss,
    sequence_logps,
)

LN2 = math.log(2)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


# One pair: policy_chosen -1, policy_rejected -3, ref_chosen -2, ref_rejected -2.5.
# z = (-1 - -3) - (-2 - -2.5) = 2 - 0.5 = 1.5; with beta 0.5, beta * z = 0.75.
PAIR = [torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.5)]


@pytest.mark.parametrize(
    ("kind", "smoothing", "expected"),
    [
        # -log sigmoid(0.75) = log(1 + e^-0.75)
        ("sigmoid", 0.0, softplus(-0.75)),
        # cDPO: 0.9 * log(1 + e^-0.75) + 0.1 * log(1 + e^0.75)
        ("sigmoid", 0.1, 0.9 * softplus(-0.75) + 0.1 * softplus(0.75)),
        # rDPO: (0.9 * log(1 + e^-0.75) - 0.1 * log(1 + e^0.75)) / (1 - 0.2)
        ("robust", 0.1, (0.9 * softplus(-0.75) - 0.1 * softplus(0.75)) / 0.8),
        # relu(1 - 0.75)
        ("hinge", 0.0, 0.25),
    ],
)
def test_preference_loss_hand_values(kind, smoothing, expected):
    result = preference_loss(kind, *PAIR, beta=0.5, label_smoothing=smoothing)
    assert result.losses.item() == pytest.approx(expected, abs=1e-12)


def test_ipo_with_unit_token_counts_is_the_summed_form():
    # (z - 1 / (2 * 0.5))^2 = (1.5 - 1)^2 = 0.25
    ones = torch.ones(1)
    result = preference_loss("ipo", *PAIR, beta=0.5, chosen_tokens=ones, rejected_tokens=ones)
    assert result.losses.item() == pytest.approx(0.25, abs=1e-12)


def test_ipo_averages_each_log_ratio_over_its_tokens():
    # chosen log-ratio -1 - -2 = 1 over 2 tokens: 0.5; rejected -3 - -2.5 = -0.5 over 4
    # tokens: -0.125; h = 0.625; (0.625 - 1)^2 = 0.140625
    result = preference_loss("ipo", *PAIR, beta=0.5, chosen_tokens=torch.tensor([2]),
                             rejected_tokens=torch.tensor([4]))
    assert result.losses.item() == pytest.approx(0.140625, abs=1e-12)


def test_rewards_are_beta_times_log_ratios():
    # chosen 0.5 * (-1 - -2) = 0.5; rejected 0.5 * (-3 - -2.5) = -0.25; margin 0.75
    result = preference_loss("sigmoid", *PAIR, beta=0.5)
    assert result.chosen_rewards.item() == pytest.approx(0.5)
    assert result.rejected_rewards.item() == pytest.approx(-0.25)
    assert result.margins.item() == pytest.approx(0.75)
    assert result.accuracies.item() == 1.0


def test_preference_losses_are_per_pair():
    # second pair: z = (-2 - -1) - (-1.5 - -1.5) = -1; beta z = -0.5; relu(1 + 0.5) = 1.5
    second = [torch.tensor([v], dtype=torch.float64) for v in (-2.0, -1.0, -1.5, -1.5)]
    batch = [torch.cat([a, b]) for a, b in zip(PAIR, second, strict=True)]
    result = preference_loss("hinge", *batch, beta=0.5)
    assert result.losses.tolist() == pytest.approx([0.25, 1.5])
    assert result.accuracies.tolist() == [1.0, 0.0]


def test_rewards_are_detached_and_the_loss_reaches_the_policy():
    policy = [PAIR[0].clone().requires_grad_(), PAIR[1].clone().requires_grad_()]
    result = preference_loss("sigmoid", *policy, *PAIR[2:], beta=0.5)
    assert not result.chosen_rewards.requires_grad and not result.rejected_rewards.requires_grad
    result.losses.sum().backward()
    assert policy[0].grad.item() < 0 < policy[1].grad.item()


@pytest.mark.parametrize("kind", ["sigmoid", "robust"])
def test_dpo_loss_is_ln2_when_policy_is_reference(kind):
    torch.manual_seed(0)
    chosen, rejected = -10 * torch.rand(8), -10 * torch.rand(8)
    result = preference_loss(kind, chosen, rejected, chosen.clone(), rejected.clone(), beta=0.1)
    assert torch.allclose(result.losses, torch.full((8,), LN2), rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("ipo", {"label_smoothing": 0.1}),
        ("hinge", {"label_smoothing": 0.1}),
        ("ipo", {}),
        ("robust", {"label_smoothing": 0.5}),
        ("sigmoid", {"label_smoothing": -0.1}),
    ],
)
def test_preference_loss_refuses_what_it_cannot_use(kind, options):
    with pytest.raises(ValueError):
        preference_loss(kind, *PAIR, beta=0.5, **options)


def test_chosen_nll_weighs_every_token_the_same():
    # summed log-probs -6 over 1 token and -2 over 3 tokens: (6 + 2) / (1 + 3) = 2
    # (a mean of per-answer means would give (6 + 2/3) / 2)
    nll = chosen_nll(torch.tensor([-6.0, -2.0]), torch.tensor([1, 3]))
    assert nll.item() == pytest.approx(2.0)


def test_rpo_loss_adds_the_weighted_nll_to_the_mean_preference_loss():
    # mean(0.2, 0.4) + 0.5 * 2 = 1.3
    loss = rpo_loss(torch.tensor([0.2, 0.4]), torch.tensor([-6.0, -2.0]), torch.tensor([1, 3]), 0.5)
    assert loss.item() == pytest.approx(1.3)


def test_sequence_logps_shifts_and_skips_ignored_labels():
    # vocabulary of 2. Row 0: uniform logits, labels [-100, 1, 0, -100]: positions 0 and 1
    # score labels 1 and 0, log(1/2) each: sum -2 ln 2, 2 tokens. Row 1: position 0 has
    # logits [0, ln 3], so p(1) = 3/4 and the one scored label 1 gives ln(3/4).
    logits = torch.zeros(2, 4, 2)
    logits[1, 0, 1] = math.log(3)
    labels = torch.tensor([[-100, 1, 0, -100], [-100, 1, -100, -100]])
    sums, counts = sequence_logps(logits, labels)
    assert sums.tolist() == pytest.approx([-2 * LN2, math.log(0.75)])
    assert counts.tolist() == [2, 1]


def test_sequence_logps_matches_trl_selective_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(6, 12, 50, dtype=torch.bfloat16)
    labels = torch.randint(0, 50, (6, 12))
    labels[:, :5] = -100
    labels[2, 9:] = -100
    shifted = labels[:, 1:]
    trl_tokens = selective_log_softmax(logits[:, :-1].float(), shifted.clamp(min=0))
    trl_sums = (trl_tokens * (shifted != -100)).sum(dim=1)
    sums, counts = sequence_logps(logits, labels)
    assert torch.allclose(sums, trl_sums, rtol=0, atol=1e-5)
    assert counts.tolist() == (shifted != -100).sum(dim=1).tolist()


# Parity with TRL 1.x: DPOTrainer keeps its losses inside `_compute_loss`
# (trl/trainer/dpo_trainer.py, the `for loss_type, loss_weight in ...` loop), which reads
# the trainer's fields and calls the model. It is called unbound on a stand-in trainer
# whose fields are set from a DPOConfig the way `DPOTrainer.__init__` sets them, whose
# reference log-probs are precomputed inputs, and whose model returns the per-token
# log-probs of TRL's fused LM head (zero outside the completion) from one random tensor.


class FusedHeadOutput:
    """What a model patched by TRL's `add_fused_lm_head` returns: per-token log-probs
    (and the per-token fields DPOTrainer logs) instead of logits."""

    training = True

    def __init__(self, token_logps: torch.Tensor):
        self.token_logps = token_logps

    def __call__(self, **kwargs):
        zeros = torch.zeros_like(self.token_logps)
        return SimpleNamespace(log_probs=self.token_logps, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())


def trl_loss(args: DPOConfig, token_logps, inputs):
    """TRL's batch loss and its logged metrics for per-token policy log-probs."""
    model = FusedHeadOutput(token_logps)
    trainer = SimpleNamespace(
        model=model, ref_model=None, args=args, beta=args.beta,
        precompute_ref_logps=args.precompute_ref_log_probs,
        loss_types=args.loss_type, loss_weights=args.loss_weights or [1.0] * len(args.loss_type),
        ld_alpha=args.ld_alpha, f_divergence_type=args.f_divergence_type,
        label_smoothing=args.label_smoothing, use_weighting=args.use_weighting,
        aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t,
                                    gather_for_metrics=lambda t: t),
    )
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, {name: values[-1] for name, values in trainer._metrics["train"].items()}


@pytest.fixture(scope="module")
def dpo_batch():
    """Four pairs as TRL batches them: [chosen; rejected], a 3-token prompt, completions
    of 2 to 8 tokens, right padding; per-token log-probs and summed reference log-probs."""
    torch.manual_seed(0)
    pairs, length = 4, 12
    ends = 3 + torch.randint(2, 9, (2 * pairs,))
    positions = torch.arange(length)
    completion_mask = ((positions >= 3) & (positions[None] < ends[:, None])).long()
    token_logps = -3 * torch.rand(2 * pairs, length - 1) * completion_mask[:, 1:]
    ref_logps = token_logps.sum(dim=1) + torch.randn(2 * pairs)
    inputs = {
        "input_ids": torch.randint(0, 50, (2 * pairs, length)),
        "attention_mask": (positions[None] < ends[:, None]).long(),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_logps[:pairs],
        "ref_rejected_logps": ref_logps[pairs:],
    }
    return token_logps, inputs


# DPOConfig's TrainingArguments warn about a field TRL itself sets; not ours to fix.
trl_config_warning = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated")


def dpo_config(tmp_path, **fields) -> DPOConfig:
    return DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                     precompute_ref_log_probs=True, **fields)


def our_loss(kind, token_logps, inputs, beta, label_smoothing=0.0):
    policy_chosen, policy_rejected = token_logps.sum(dim=1).chunk(2)
    chosen_tokens, rejected_tokens = inputs["completion_mask"].sum(dim=1).chunk(2)
    return preference_loss(kind, policy_chosen, policy_rejected, inputs["ref_chosen_logps"],
                           inputs["ref_rejected_logps"], beta, label_smoothing=label_smoothing,
                           chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens)


@trl_config_warning
@pytest.mark.parametrize(
    ("kind", "beta", "smoothing"),
    [("sigmoid", 0.1, 0.0), ("robust", 0.3, 0.2), ("hinge", 0.5, 0.0), ("ipo", 0.1, 0.0)],
)
def test_preference_loss_matches_trl(tmp_path, dpo_batch, kind, beta, smoothing):
    token_logps, inputs = dpo_batch
    args = dpo_config(tmp_path, loss_type=[kind], beta=beta, label_smoothing=smoothing)
    trl, metrics = trl_loss(args, token_logps, inputs)
    result = our_loss(kind, token_logps, inputs, beta, smoothing)
    assert result.losses.mean().item() == pytest.approx(trl.item(), abs=1e-6)
    assert result.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-6)
    assert result.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-6)
    assert result.margins.mean().item() == pytest.approx(metrics["rewards/margins"], abs=1e-6)
    assert result.accuracies.mean().item() == pytest.approx(metrics["rewards/accuracies"], abs=1e-6)


@trl_config_warning
def test_rpo_loss_matches_trl_sigmoid_plus_sft(tmp_path, dpo_batch):
    token_logps, inputs = dpo_batch
    args = dpo_config(tmp_path, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.7], beta=0.1)
    trl, _ = trl_loss(args, token_logps, inputs)
    result = our_loss("sigmoid", token_logps, inputs, beta=0.1)
    chosen_logps = token_logps.sum(dim=1).chunk(2)[0]
    chosen_tokens = inputs["completion_mask"].sum(dim=1).chunk(2)[0]
    loss = rpo_loss(result.losses, chosen_logps, chosen_tokens, sft_weight=0.7)
    assert loss.item() == pytest.approx(trl.item(), abs=1e-6)


# Diffusion-DPO


def one_pair(winner: list[float], loser: list[float]) -> torch.Tensor:
    """A [winner; loser] batch of 4-D samples (1 channel, 1 row, len(values) columns)."""
    return torch.tensor([[[winner]], [[loser]]])


def test_diffusion_dpo_hand_values():
    # target 0. model: winner [1, 1] -> mse 1; loser [2, 0] -> mse (4 + 0) / 2 = 2.
    # reference: both [0, 0] -> mse 0. z = -0.5 * ((1 - 2) - (0 - 0)) = 0.5;
    # beta 0.5: inside 0.25.
    model = one_pair([1.0, 1.0], [2.0, 0.0])
    ref = torch.zeros_like(model)
    expected = {
        "sigmoid": softplus(-0.25),        # -log sigmoid(0.25)
        "hinge": 0.75,                     # relu(1 - 0.25)
        "ipo": (0.5 - 1 / (2 * 0.5)) ** 2,  # (z - 1 / (2 beta))^2 = 0.25
    }
    for kind, value in expected.items():
        result = diffusion_dpo_loss(model, ref, torch.zeros_like(model), beta=0.5, kind=kind)
        assert result.losses.item() == pytest.approx(value, abs=1e-7), kind
    assert [result.model_mse_w.item(), result.model_mse_l.item()] == [1.0, 2.0]
    assert [result.ref_mse_w.item(), result.ref_mse_l.item()] == [0.0, 0.0]
    assert result.implicit_acc.item() == 1.0


def test_diffusion_dpo_beta_has_the_reference_scripts_scale():
    # diffusers' SD1.5 script: -log sigmoid(2500 * (ref_diff - model_diff)); SDXL script
    # and ours: -log sigmoid(-0.5 * 5000 * (model_diff - ref_diff)): the same loss.
    torch.manual_seed(0)
    model, ref, target = torch.randn(3, 8, 4, 8, 8).unbind(0)
    result = diffusion_dpo_loss(model, ref, target, beta=5000)
    model_w, model_l = ((model - target) ** 2).mean(dim=(1, 2, 3)).chunk(2)
    ref_w, ref_l = ((ref - target) ** 2).mean(dim=(1, 2, 3)).chunk(2)
    sd15 = -F.logsigmoid(2500 * ((ref_w - ref_l) - (model_w - model_l)))
    assert torch.allclose(result.losses, sd15, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 3, 2, 8, 8)], ids=["image", "video"])
@pytest.mark.parametrize("target_kind", ["epsilon", "v", "flow"])
def test_diffusion_dpo_loss_is_ln2_when_model_is_reference(shape, target_kind):
    torch.manual_seed(0)
    x0, noise, pred = torch.randn(3, *shape).unbind(0)
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    timesteps = torch.randint(0, 1000, (shape[0] // 2,)).repeat(2)
    target = diffusion_target(target_kind, x0, noise, scheduler=scheduler, timesteps=timesteps)
    result = diffusion_dpo_loss(pred, pred.clone(), target, beta=5000)
    assert torch.allclose(result.losses, torch.full((2,), LN2), rtol=0, atol=1e-7)
    assert result.implicit_acc.item() == 0.5


def test_diffusion_dpo_averages_every_dim_of_a_video():
    # One pair of 5-D video samples (channels 2, frames 3, height 2, width 2), target 0,
    # reference predictions 0; model errors constant over channels, frames and height:
    # winner column 0 -> 0, column 1 -> 2; loser column 0 -> 1, column 1 -> 0.
    # Every dim: mse_w = (0 + 4) / 2 = 2, mse_l = (1 + 0) / 2 = 0.5,
    #   z = -0.5 * (2 - 0.5) = -0.75, beta 1: loss log(1 + e^0.75), accuracy 0.
    # A mean over dims 1-3 only leaves one "pair" per column: column 0 inside
    #   -0.5 * (0 - 1) = 0.5, column 1 -0.5 * (4 - 0) = -2: the mean of log(1 + e^-0.5)
    #   and log(1 + e^2), accuracy 0.5.
    model = torch.zeros(2, 2, 3, 2, 2)
    model[0, ..., 1] = 2.0
    model[1, ..., 0] = 1.0
    ref = target = torch.zeros_like(model)
    result = diffusion_dpo_loss(model, ref, target, beta=1.0)
    assert result.losses.item() == pytest.approx(softplus(0.75), abs=1e-6)
    assert result.implicit_acc.item() == 0.0
    per_column = (softplus(-0.5) + softplus(2.0)) / 2
    assert abs(result.losses.item() - per_column) > 0.1
    columns_w, columns_l = (model ** 2).mean(dim=(1, 2, 3)).chunk(2)
    assert (-F.logsigmoid(-0.5 * (columns_w - columns_l))).mean().item() == pytest.approx(per_column)


def test_implicit_accuracy_counts_a_tie_as_half():
    # [w0 w1 w2; l0 l1 l2], target 0, reference 0. Pair 0: winner 0, loser 1, inside > 0;
    # pair 1: both 0, inside 0 (a tie); pair 2: winner 1, loser 0, inside < 0.
    # Accuracy (1 + 0.5 + 0) / 3 = 0.5.
    model = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0]).view(6, 1, 1, 1)
    result = diffusion_dpo_loss(model, torch.zeros_like(model), torch.zeros_like(model), beta=1.0)
    assert result.implicit_acc.item() == pytest.approx(0.5)


def test_diffusion_dpo_gradient_reaches_the_model_only():
    torch.manual_seed(0)
    model, ref, target = (t.requires_grad_() for t in torch.randn(3, 4, 3, 2, 4, 4).unbind(0))
    result = diffusion_dpo_loss(model, ref, target, beta=1.0)
    result.losses.mean().backward()
    assert model.grad is not None and model.grad.abs().sum() > 0
    assert ref.grad is None and target.grad is None
    assert not result.model_mse_w.requires_grad and not result.implicit_acc.requires_grad


@pytest.mark.parametrize(
    ("model", "ref"),
    [(torch.zeros(3, 4, 2, 2), torch.zeros(3, 4, 2, 2)), (torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2))],
    ids=["odd batch", "shape mismatch"],
)
def test_diffusion_dpo_refuses_a_malformed_batch(model, ref):
    with pytest.raises(ValueError):
        diffusion_dpo_loss(model, ref, torch.zeros_like(model), beta=1.0)


def test_flow_and_epsilon_targets():
    x0, noise = torch.randn(2, 2, 3, 4, 4).unbind(0)
    assert torch.equal(diffusion_target("epsilon", x0, noise), noise)
    assert torch.equal(diffusion_target("flow", x0, noise), noise - x0)


def test_v_target_is_alpha_noise_minus_sigma_x0():
    # per sample t: v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * x0
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 2, 4, 4).unbind(0)
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    timesteps = torch.tensor([0, 250, 500, 999])
    abar = scheduler.alphas_cumprod[timesteps].view(4, 1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    target = diffusion_target("v", x0, noise, scheduler=scheduler, timesteps=timesteps)
    assert torch.allclose(target, expected, atol=1e-6)


def test_v_target_needs_the_scheduler():
    with pytest.raises(ValueError):
        diffusion_target("v", torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))
