"""Preference losses for alignment, as pure functions of tensors (no state, no modules).

Two families:

- DPO and its variants for vision-language models. They take summed completion
  log-probabilities of shape (batch,), the policy's and the frozen reference's, for the
  chosen and the rejected answer of each pair. :func:`sequence_logps` makes those sums
  from logits, for one forward over [chosen; rejected].
- Diffusion-DPO for text-to-image and text-to-video denoisers. It takes the model's and
  the reference's predictions and the regression target for a batch stacked as
  [winners; losers] along dim 0, of any rank >= 2 (4-D images, 5-D videos).
  :func:`diffusion_target` gives the target for epsilon, v and flow models.

Every loss returns per-pair losses (the caller takes the mean) with the detached
quantities the DPO metrics are logged from (``rewards/*``, ``implicit_acc``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

PreferenceKind = Literal["sigmoid", "robust", "ipo", "hinge"]
DiffusionKind = Literal["sigmoid", "ipo", "hinge"]
TargetKind = Literal["epsilon", "v", "flow"]


class PreferenceLoss(NamedTuple):
    """Per-pair losses and the implicit rewards beta * (policy - reference) log-prob of
    each answer, detached, from which rewards/chosen, rewards/rejected, rewards/margins
    and rewards/accuracies are logged."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def margins(self) -> Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> Tensor:
        """1 where the chosen reward is strictly higher (TRL's definition: a tie is 0)."""
        return (self.chosen_rewards > self.rejected_rewards).float()


def dpo_margin(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor
) -> Tensor:
    """z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected): how much more
    than the reference the policy prefers the chosen answer, in nats. beta * z is the
    DPO logit; z is 0 while the policy is the reference."""
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def _with_rewards(
    losses: Tensor,
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> PreferenceLoss:
    chosen = beta * (policy_chosen - ref_chosen).detach()
    rejected = beta * (policy_rejected - ref_rejected).detach()
    return PreferenceLoss(losses, chosen, rejected)


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")


def sigmoid_dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290): -log sigmoid(beta * z).

    With ``label_smoothing`` eps > 0 it is conservative DPO (cDPO, Mitchell 2023): each
    label is taken as flipped with probability eps and the loss is the expected one,
    (1 - eps) * -log sigmoid(beta z) + eps * -log sigmoid(-beta z), whose minimum lies at a
    finite margin, so confident pairs stop pulling. This is the sigmoid loss of TRL 0.x
    and of the vendored TRL in UnifiedReward's LLaVA-NeXT fork; TRL 1.x's ``sigmoid``
    reads no label smoothing, so eps = 0 is TRL 1.x's ``sigmoid``.
    """
    _check_smoothing(label_smoothing)
    logits = beta * dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return _with_rewards(losses, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


def robust_dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float,
) -> PreferenceLoss:
    """Robust DPO (rDPO, Chowdhury et al. 2024, arXiv 2403.00409), TRL's ``robust``:
    ((1 - eps) * -log sigmoid(beta z) - eps * -log sigmoid(-beta z)) / (1 - 2 eps).

    eps (``label_smoothing``, in [0, 0.5)) is the probability that a preference label is
    flipped. The loss is an unbiased estimate of the clean-label loss, so, unlike cDPO,
    it keeps widening the margin; eps = 0 is plain DPO.
    """
    _check_smoothing(label_smoothing)
    logits = beta * dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    clean = -(1 - label_smoothing) * F.logsigmoid(logits)
    flipped = -label_smoothing * F.logsigmoid(-logits)
    losses = (clean - flipped) / (1 - 2 * label_smoothing)
    return _with_rewards(losses, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


def ipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    chosen_tokens: Tensor,
    rejected_tokens: Tensor,
) -> PreferenceLoss:
    """IPO (Azar et al. 2023, arXiv 2310.12036, Eq. 17): (h - 1/(2 tau))^2 with tau = beta.

    A squared regression of the margin onto a finite target, so deterministic preferences
    cannot drive it to infinity. h is made of per-token log-ratios,
    (policy_chosen - ref_chosen) / chosen_tokens - (policy_rejected - ref_rejected) /
    rejected_tokens, as in TRL 1.x's ``ipo`` and the old TRL of UnifiedReward's fork
    (``average_log_prob`` for ipo): with summed log-probs the square grows with the
    answer's length and tau has no fixed meaning. Token counts of ones give the summed
    form. The rewards stay beta times the summed log-ratios, as TRL logs them.
    """
    chosen_ratio = (policy_chosen - ref_chosen) / chosen_tokens.clamp(min=1)
    rejected_ratio = (policy_rejected - ref_rejected) / rejected_tokens.clamp(min=1)
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return _with_rewards(losses, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


def hinge_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> PreferenceLoss:
    """SLiC's hinge (Zhao et al. 2023, arXiv 2305.10425), TRL's ``hinge``:
    relu(1 - beta * z). A pair stops contributing once z exceeds the margin 1 / beta."""
    z = dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = torch.relu(1 - beta * z)
    return _with_rewards(losses, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


def preference_loss(
    kind: PreferenceKind,
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    *,
    label_smoothing: float = 0.0,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> PreferenceLoss:
    """The preference loss named by ``kind`` (a YAML option), on summed log-probs.

    ``label_smoothing`` is read by ``sigmoid`` (cDPO) and ``robust``; the token counts by
    ``ipo``, which needs them. A setting the chosen loss cannot use is an error, not
    silently dropped.
    """
    logps = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if kind in ("ipo", "hinge") and label_smoothing != 0.0:
        raise ValueError(f"{kind} takes no label_smoothing, got {label_smoothing}")
    if kind == "sigmoid":
        return sigmoid_dpo_loss(*logps, beta, label_smoothing)
    if kind == "robust":
        return robust_dpo_loss(*logps, beta, label_smoothing)
    if kind == "hinge":
        return hinge_loss(*logps, beta)
    if kind == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs chosen_tokens and rejected_tokens (ones for the summed form)")
        return ipo_loss(*logps, beta, chosen_tokens, rejected_tokens)
    raise ValueError(f"unknown preference loss {kind!r}")


def sequence_logps(
    logits: Tensor, labels: Tensor, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """Summed log-probability of the labelled tokens of each sequence, and their count.

    A causal LM predicts token t + 1 at position t, so ``logits[:, :-1]`` score
    ``labels[:, 1:]``; positions labelled ``ignore_index`` (prompt, image placeholders,
    padding) are not scored. Rows are independent, so a batch [chosen; rejected] gives
    both halves at once (``.chunk(2)`` splits them). Each row is scored in at least
    float32, one row at a time to bound memory: a bf16 log-softmax loses the small
    differences that DPO's margin is made of.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    labels = labels[:, 1:]
    wide = torch.promote_types(logits.dtype, torch.float32)
    token_logps = torch.stack([
        -F.cross_entropy(row.to(wide), row_labels, ignore_index=ignore_index, reduction="none")
        for row, row_labels in zip(logits[:, :-1], labels, strict=True)
    ])
    return token_logps.sum(dim=1), (labels != ignore_index).sum(dim=1)


def chosen_nll(chosen_logps: Tensor, chosen_tokens: Tensor) -> Tensor:
    """Mean negative log-likelihood per chosen token over the batch:
    -sum(chosen_logps) / sum(chosen_tokens).

    Every token weighs the same (a long answer counts more than a short one), as in TRL
    1.x's ``sft`` loss type, TRL 0.x's ``rpo_alpha`` term and the gamma term of
    UnifiedReward's fork (a cross-entropy averaged over all chosen tokens of the batch).
    """
    return -chosen_logps.sum() / chosen_tokens.sum().clamp(min=1)


def rpo_loss(
    preference_losses: Tensor, chosen_logps: Tensor, chosen_tokens: Tensor, sft_weight: float
) -> Tensor:
    """mean(preference_losses) + sft_weight * :func:`chosen_nll`: the batch loss with an
    SFT term on the chosen answers.

    This is RPO (Pang et al. 2024, arXiv 2404.19733; TRL 1.x: ``loss_type=["sigmoid",
    "sft"]`` with ``loss_weights=[1, sft_weight]``) and UnifiedReward's DPO + gamma *
    SFT(chosen). The SFT term keeps the chosen answers likely while the preference term
    widens the margin, which DPO alone can do by lowering both log-probs.
    """
    return preference_losses.mean() + sft_weight * chosen_nll(chosen_logps, chosen_tokens)


class DiffusionDPOLoss(NamedTuple):
    """Per-pair losses, the implicit accuracy (the share of pairs where the model favours
    the winner more than the reference does, ties counting half) and the per-sample MSE
    of model and reference on winners and losers, all but ``losses`` detached."""

    losses: Tensor
    implicit_acc: Tensor
    model_mse_w: Tensor
    model_mse_l: Tensor
    ref_mse_w: Tensor
    ref_mse_l: Tensor


def per_sample_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of each sample over every non-batch dim, in at least float32.

    Diffusion-DPO compares one likelihood proxy per sample; a mean over only some dims
    (a 3-D mean of 5-D video latents) leaves a loss per column that the log-sigmoid then
    treats as separate pairs.
    """
    wide = torch.promote_types(pred.dtype, torch.float32)
    return F.mse_loss(pred.to(wide), target.to(wide), reduction="none").flatten(1).mean(dim=1)


def implicit_accuracy(inside: Tensor) -> Tensor:
    """Share of pairs with inside > 0, a tie counting half (diffusers' Diffusion-DPO
    scripts): at step 0, model == reference, it reads 0.5, not 0."""
    return ((inside > 0).float() + 0.5 * (inside == 0).float()).mean()


def _check_pair_batch(model_pred: Tensor, ref_pred: Tensor, target: Tensor) -> None:
    if not model_pred.shape == ref_pred.shape == target.shape:
        raise ValueError(
            f"model_pred {tuple(model_pred.shape)}, ref_pred {tuple(ref_pred.shape)} and "
            f"target {tuple(target.shape)} must have one shape"
        )
    if model_pred.ndim < 2 or model_pred.shape[0] % 2:
        raise ValueError(f"expected [winners; losers] on dim 0, got {tuple(model_pred.shape)}")


def diffusion_dpo_loss(
    model_pred: Tensor,
    ref_pred: Tensor,
    target: Tensor,
    beta: float,
    kind: DiffusionKind = "sigmoid",
) -> DiffusionDPOLoss:
    """Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908) on a batch [winners; losers]
    stacked along dim 0, winner i and loser i noised with the same noise and timestep.

    The margin z = -0.5 * ((mse_w - mse_l)_model - (mse_w - mse_l)_ref) is how much more
    than the reference the model's log-likelihood proxy, -0.5 * MSE, favours the winner;
    inside = beta * z. The 0.5 is explicit, as in diffusers' SDXL script and flow_grpo's
    SD3 DPO, so ``beta`` has the reference scripts' meaning: 5000 for SD1.5 and SDXL
    (diffusers' SD1.5 script writes 2500 without the 0.5, the same scale).

    - sigmoid: -log sigmoid(inside)
    - hinge: relu(1 - inside)
    - ipo: (z - 1 / (2 beta))^2, beta being IPO's tau (diffusers' SD1.5 IPO branch reads
      an undefined ``args.beta`` and drops the 0.5)

    Gradient reaches ``model_pred`` only: the reference is frozen and the target is data.
    """
    _check_pair_batch(model_pred, ref_pred, target)
    target = target.detach()
    model_w, model_l = per_sample_mse(model_pred, target).chunk(2)
    ref_w, ref_l = per_sample_mse(ref_pred.detach(), target).chunk(2)
    z = -0.5 * ((model_w - model_l) - (ref_w - ref_l))
    inside = beta * z
    if kind == "sigmoid":
        losses = -F.logsigmoid(inside)
    elif kind == "hinge":
        losses = torch.relu(1 - inside)
    elif kind == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown Diffusion-DPO loss {kind!r}")
    return DiffusionDPOLoss(
        losses, implicit_accuracy(inside.detach()),
        model_w.detach(), model_l.detach(), ref_w, ref_l,
    )


class VelocityScheduler(Protocol):
    """A diffusers noise scheduler with ``get_velocity`` (DDPM, DDIM, Euler, ...)."""

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor: ...


def diffusion_target(
    kind: TargetKind,
    x0: Tensor,
    noise: Tensor,
    *,
    scheduler: VelocityScheduler | None = None,
    timesteps: Tensor | None = None,
) -> Tensor:
    """The denoiser's regression target for clean data ``x0`` and its ``noise``.

    - epsilon: the noise.
    - v: alpha_t * noise - sigma_t * x0 (Salimans & Ho 2022), from the model's own
      scheduler (``scheduler.get_velocity(x0, noise, timesteps)``, one timestep per
      sample), so the alphas are the ones the model was trained with.
    - flow: noise - x0, the velocity of x_s = (1 - s) x0 + s noise (rectified flow:
      SD3, FLUX, Wan).
    """
    if kind == "epsilon":
        return noise
    if kind == "flow":
        return noise - x0
    if kind == "v":
        if scheduler is None or timesteps is None:
            raise ValueError("the v target needs the scheduler and the timesteps")
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"unknown diffusion target {kind!r}")
