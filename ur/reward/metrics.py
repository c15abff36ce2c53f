"""Judge metrics, per task, as torchmetrics (states sync across processes).

Pairwise (labels coded 0 = first, 1 = second, 2 = tie; -1 = the answer did not parse):

- ``pair_acc_tau``: accuracy over all pairs, ground-truth ties included (a tie is only
  right if the judge says tie), the "tau" accuracy of GenAI-Bench / VideoGen-RewardBench;
- ``pair_acc_diff``: accuracy over the pairs whose ground truth is not a tie;
- ``position_consistency``: fraction of pairs judged the same way when the two
  candidates are swapped (needs both orders);
- ``parse_rate``: fraction of judgments whose answer parsed. An unparsed judgment
  counts as wrong in the accuracies (never as "candidate 1").

Pointwise: ``point_spearman``, ``point_pearson``, ``point_mae`` (on the [0, 1]-normalized
scale, so tasks with different scales compare), and ``point_parse_rate``.

Names follow DESIGN.md: ``<prefix>/<task>/<metric>``.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from ur.data.records import TASKS

LABEL_CODE = {"first": 0, "second": 1, "tie": 2, None: -1}
TIE = 2


def _rank(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), as Spearman's rho needs."""
    order = x.argsort()
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    uniq, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(
        0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double(), y.double()
    if len(x) < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = (xc.square().sum() * yc.square().sum()).sqrt()
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(_rank(x.double()), _rank(y.double())) if len(x) >= 2 else float("nan")


class PairwiseMetrics(Metric):
    """Accumulates pairwise judgments of one task."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("truth", default=[], dist_reduce_fx="cat")
        self.add_state("pred", default=[], dist_reduce_fx="cat")
        self.add_state("pred_swapped", default=[], dist_reduce_fx="cat")

    def update(self, truth: list[str], pred: list[str | None],
               pred_swapped: list[str | None] | None = None) -> None:
        """``pred_swapped``: the judge's answer with the candidates swapped, already
        mapped back to the original order (so a consistent judge gives ``pred``)."""
        self.truth.append(torch.tensor([LABEL_CODE[t] for t in truth]))
        self.pred.append(torch.tensor([LABEL_CODE[p] for p in pred]))
        swapped = pred_swapped if pred_swapped is not None else [None] * len(pred)
        self.pred_swapped.append(torch.tensor([LABEL_CODE[p] for p in swapped]))

    def compute(self) -> dict[str, float]:
        truth, pred = _cat(self.truth), _cat(self.pred)
        swapped = _cat(self.pred_swapped)
        if truth.numel() == 0:
            return {}
        out = {"pair_acc_tau": (pred == truth).double().mean().item(),
               "parse_rate": (pred >= 0).double().mean().item(),
               "pair_count": float(truth.numel())}
        not_tie = truth != TIE
        if not_tie.any():
            out["pair_acc_diff"] = (pred[not_tie] == truth[not_tie]).double().mean().item()
        both = (swapped >= 0) & (pred >= 0)
        if (swapped >= 0).any():
            out["position_consistency"] = ((pred == swapped) & both).double().sum().item() / max(
                1, int((swapped >= 0).sum()))
        return out


class PointwiseMetrics(Metric):
    """Accumulates pointwise scores of one task, normalized to [0, 1] by their scales."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("truth", default=[], dist_reduce_fx="cat")
        self.add_state("pred", default=[], dist_reduce_fx="cat")

    def update(self, truth: list[float], pred: list[float | None]) -> None:
        """Both already normalized to [0, 1]; ``None`` marks an unparsed answer."""
        self.truth.append(torch.tensor(truth, dtype=torch.float64))
        self.pred.append(torch.tensor([float("nan") if p is None else p for p in pred],
                                      dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        truth, pred = _cat(self.truth), _cat(self.pred)
        if truth.numel() == 0:
            return {}
        ok = ~pred.isnan()
        out = {"point_parse_rate": ok.double().mean().item(), "point_count": float(truth.numel())}
        if ok.sum() >= 2:
            t, p = truth[ok], pred[ok]
            out.update(point_spearman=spearman(t, p), point_pearson=pearson(t, p),
                       point_mae=(t - p).abs().mean().item())
        return out


def _cat(parts) -> torch.Tensor:
    if isinstance(parts, torch.Tensor):
        return parts
    return torch.cat(parts) if parts else torch.zeros(0)


class JudgeMetrics(torch.nn.Module):
    """Pairwise and pointwise metrics for every task, named ``<prefix>/<task>/<metric>``."""

    def __init__(self, prefix: str = "val"):
        super().__init__()
        self.prefix = prefix
        self.pairwise = torch.nn.ModuleDict({t: PairwiseMetrics() for t in TASKS})
        self.pointwise = torch.nn.ModuleDict({t: PointwiseMetrics() for t in TASKS})

    def compute(self) -> dict[str, float]:
        out = {}
        for kind in (self.pairwise, self.pointwise):
            for task, metric in kind.items():
                if not metric.update_called:
                    continue
                for name, value in metric.compute().items():
                    out[f"{self.prefix}/{task}/{name}"] = value
        return out

    def reset(self) -> None:
        for kind in (self.pairwise, self.pointwise):
            for metric in kind.values():
                metric.reset()
