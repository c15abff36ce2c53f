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

Per kind of difference, when the records say what tells their two candidates apart
(the synthetic world: :data:`ur.data.synthetic.world.DIFFERENCE_KINDS`, a wrong colour,
blur, a question about shape, ...): ``pair_acc_diff@<kind>`` with its interval and
``pair_count@<kind>``, over the kind's pairs whose ground truth is not a tie.

Across tasks: ``loss``, the teacher-forced next-token cross-entropy per target token over
the split's records (:class:`TargetLoss`), which no batching or process count changes.

Every accuracy and correlation comes with its 95% percentile bootstrap interval,
``<metric>_ci_low`` and ``<metric>_ci_high``: the judged records resampled with
replacement ``RESAMPLES`` times from a fixed seed, so an interval is reproducible.

Each judgment carries its record's key (:func:`ur.data.records.record_key`). Under DDP
the states of all ranks are gathered, then each key counts once: Lightning's distributed
sampler pads evaluation shards by repeating records, and a repeat is not a new record.
The de-duplicated judgments are taken in key order, so the values (intervals included)
do not depend on how records were spread over ranks. Every rank syncs every task, also
one it saw no record of (its states start as typed empty tensors), so no rank waits in a
gather another skipped; tasks that are empty everywhere are left out.

Names follow DESIGN.md: ``<prefix>/<task>/<metric>`` and ``<prefix>/loss``.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from ur.data.records import TASKS, record_key
from ur.data.synthetic.world import DIFFERENCE_KINDS

if TYPE_CHECKING:
    from ur.data.records import PreferenceRecord
    from ur.reward.judge import Judgment

LABEL_CODE = {"first": 0, "second": 1, "tie": 2, None: -1}
TIE = 2
RESAMPLES = 1000
"""Bootstrap resamples per interval."""
SEED = 0
"""Seed of the bootstrap's resampling."""
LEVEL = 0.95
"""Coverage of the bootstrap intervals."""


def _rank(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), as Spearman's rho needs."""
    return _rank_rows(x[None])[0]


def _rank_rows(x: torch.Tensor) -> torch.Tensor:
    """Average ranks within each row of a (rows, n) tensor."""
    ordered = x.sort(dim=1).values
    below = torch.searchsorted(ordered, x, right=False)
    up_to = torch.searchsorted(ordered, x, right=True)
    return (below + up_to - 1).double() / 2


def _pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson's r of each row pair of two (rows, n) tensors; 0 where a row is constant."""
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    denom = (xc.square().sum(1) * yc.square().sum(1)).sqrt()
    constant = (x.amax(1) == x.amin(1)) | (y.amax(1) == y.amin(1))
    return torch.where(constant, torch.zeros_like(denom), (xc * yc).sum(1) / denom)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) < 2:
        return float("nan")
    return float(_pearson_rows(x[None], y[None])[0])


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) < 2:
        return float("nan")
    return float(_pearson_rows(_rank_rows(x[None].double()), _rank_rows(y[None].double()))[0])


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> torch.Tensor:
    """A (resamples, n) tensor of indices drawn with replacement from ``range(n)``, the
    same for the same arguments."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(n, (resamples, n), generator=generator)


def percentile_interval(samples: torch.Tensor, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap statistics (linear interpolation
    between order statistics, as ``numpy.percentile``)."""
    tail = (1 - level) / 2
    q = torch.quantile(samples.double().cpu(), torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(q[0]), float(q[1])


def _with_interval(name: str, value: float, samples: torch.Tensor) -> dict[str, float]:
    low, high = percentile_interval(samples)
    return {name: value, f"{name}_ci_low": low, f"{name}_ci_high": high}


def mean_with_interval(name: str, values: torch.Tensor) -> dict[str, float]:
    """The mean of per-record values (1 right, 0 wrong) and its bootstrap interval."""
    values = values.double().cpu()
    idx = bootstrap_indices(len(values))
    return _with_interval(name, values.mean().item(), values[idx].mean(1))


def _correlations_with_intervals(truth: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
    """Spearman's rho and Pearson's r with intervals, both from the same resamples."""
    truth, pred = truth.double().cpu(), pred.double().cpu()
    idx = bootstrap_indices(len(truth))
    t, p = truth[idx], pred[idx]
    return {**_with_interval("point_spearman", spearman(truth, pred),
                             _pearson_rows(_rank_rows(t), _rank_rows(p))),
            **_with_interval("point_pearson", pearson(truth, pred), _pearson_rows(t, p))}


def _gather(result: torch.Tensor, group=None) -> list[torch.Tensor]:
    """``all_gather`` of one state. A gather needs the same dtype on every rank (gloo
    fails otherwise), and a module cast (``bf16-true`` precision) may have changed the
    floating state of a rank that holds none of its own: floating states travel as
    float64."""
    if result.is_floating_point():
        result = result.double()
    return gather_all_tensors(result, group)


class _KeyedMetric(Metric):
    """Concatenated per-judgment states with one key each, counted once per key.

    ``STATES`` names each state and its dtype; every state is a list that starts with an
    empty tensor of that dtype, so a rank that saw nothing still syncs a typed state."""

    full_state_update = False
    STATES: dict[str, torch.dtype] = {}

    def __init__(self):
        super().__init__(dist_sync_fn=_gather)
        for name in self.STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._seed_states()

    def _seed_states(self) -> None:
        for name, dtype in self.STATES.items():
            getattr(self, name).append(torch.zeros(0, dtype=dtype, device=self.device))

    def reset(self) -> None:
        super().reset()
        self._seed_states()

    def _append(self, **values) -> None:
        lengths = {name: len(v) for name, v in values.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"one value per judgment in every state, got lengths {lengths}")
        for name, dtype in self.STATES.items():
            getattr(self, name).append(torch.tensor(values[name], dtype=dtype, device=self.device))

    def unique_states(self) -> dict[str, torch.Tensor]:
        """Each state as one tensor, one entry per key (the first seen), in key order."""
        states = {name: _cat(getattr(self, name)) for name in self.STATES}
        keys = states["keys"]
        unique, inverse = torch.unique(keys, return_inverse=True)
        first = torch.full((len(unique),), len(keys), dtype=torch.long, device=keys.device)
        first.scatter_reduce_(0, inverse, torch.arange(len(keys), device=keys.device),
                              reduce="amin")
        return {name: state[first] for name, state in states.items()}


class PairwiseMetrics(_KeyedMetric):
    """Accumulates pairwise judgments of one task."""

    STATES = {"keys": torch.long, "truth": torch.long, "pred": torch.long,
              "pred_swapped": torch.long, "kind": torch.long}

    def update(self, truth: Sequence[str], pred: Sequence[str | None],
               pred_swapped: Sequence[str | None] | None = None, *,
               keys: Sequence[int], kinds: Sequence[str | None] | None = None) -> None:
        """``pred_swapped``: the judge's answer with the candidates swapped, already
        mapped back to the original order (so a consistent judge gives ``pred``).
        ``keys``: one per judgment (:func:`ur.data.records.record_key`). ``kinds``: what
        tells each pair's candidates apart, a :data:`DIFFERENCE_KINDS` entry or None."""
        swapped = pred_swapped if pred_swapped is not None else [None] * len(pred)
        kinds = kinds if kinds is not None else [None] * len(pred)
        unknown = {k for k in kinds if k is not None and k not in DIFFERENCE_KINDS}
        if unknown:
            raise ValueError(f"unknown difference kinds {sorted(unknown)}; "
                             f"expected some of {', '.join(DIFFERENCE_KINDS)}")
        self._append(keys=list(keys), truth=[LABEL_CODE[t] for t in truth],
                     pred=[LABEL_CODE[p] for p in pred],
                     pred_swapped=[LABEL_CODE[p] for p in swapped],
                     kind=[-1 if k is None else DIFFERENCE_KINDS.index(k) for k in kinds])

    def compute(self) -> dict[str, float]:
        s = self.unique_states()
        truth, pred, swapped = s["truth"], s["pred"], s["pred_swapped"]
        if truth.numel() == 0:
            return {}
        right = pred == truth
        out = {**mean_with_interval("pair_acc_tau", right),
               "parse_rate": (pred >= 0).double().mean().item(),
               "pair_count": float(truth.numel())}
        not_tie = truth != TIE
        if not_tie.any():
            out.update(mean_with_interval("pair_acc_diff", right[not_tie]))
        kind = s["kind"]
        for code in kind[not_tie & (kind >= 0)].unique().tolist():
            name = DIFFERENCE_KINDS[code]
            chosen = not_tie & (kind == code)
            out.update(mean_with_interval(f"pair_acc_diff@{name}", right[chosen]))
            out[f"pair_count@{name}"] = float(chosen.sum())
        both_orders = swapped >= 0
        if both_orders.any():
            consistent = (pred == swapped) & (pred >= 0)
            out.update(mean_with_interval("position_consistency", consistent[both_orders]))
        return out


class PointwiseMetrics(_KeyedMetric):
    """Accumulates pointwise scores of one task, normalized to [0, 1] by their scales."""

    STATES = {"keys": torch.long, "truth": torch.float64, "pred": torch.float64}

    def update(self, truth: Sequence[float], pred: Sequence[float | None], *,
               keys: Sequence[int]) -> None:
        """Both already normalized to [0, 1]; ``None`` marks an unparsed answer.
        ``keys``: one per judgment (:func:`ur.data.records.record_key`)."""
        self._append(keys=list(keys), truth=list(truth),
                     pred=[float("nan") if p is None else p for p in pred])

    def compute(self) -> dict[str, float]:
        s = self.unique_states()
        truth, pred = s["truth"], s["pred"]
        if truth.numel() == 0:
            return {}
        ok = ~pred.isnan()
        out = {"point_parse_rate": ok.double().mean().item(), "point_count": float(truth.numel())}
        if ok.sum() >= 2:
            t, p = truth[ok], pred[ok]
            out.update(_correlations_with_intervals(t, p))
            out["point_mae"] = (t - p).abs().mean().item()
        return out


class TargetLoss(_KeyedMetric):
    """Teacher-forced loss per target token over the records, each record once: the sum
    of every record's token losses over the sum of its target tokens (a per-batch mean
    would weigh tokens by the batch they fell in, and a padded repeat twice)."""

    STATES = {"keys": torch.long, "loss": torch.float64, "tokens": torch.long}

    def update(self, loss: Sequence[float] | torch.Tensor, tokens: Sequence[int] | torch.Tensor,
               *, keys: Sequence[int]) -> None:
        """Per record: the sum of its target tokens' losses and their number."""
        self._append(keys=list(keys), loss=torch.as_tensor(loss).tolist(),
                     tokens=torch.as_tensor(tokens).tolist())

    def compute(self) -> dict[str, float]:
        s = self.unique_states()
        tokens = int(s["tokens"].sum())
        return {"loss": float(s["loss"].sum()) / tokens} if tokens else {}


def target_token_losses(logits: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of the next-token cross-entropy over the target tokens (labels
    other than ``ignore_index``; the logits at position t predict the label at t + 1, as
    in transformers' causal LM loss) and the number of those tokens. Rows are upcast to
    float32 one at a time, so memory stays at one row's logits."""
    labels = labels[:, 1:]
    sums = []
    for row_logits, row_labels in zip(logits[:, :-1], labels, strict=True):
        sums.append(F.cross_entropy(row_logits.float(), row_labels, ignore_index=ignore_index,
                                    reduction="sum").double())
    return torch.stack(sums), (labels != ignore_index).sum(1)


def _cat(parts) -> torch.Tensor:
    if isinstance(parts, torch.Tensor):
        return parts
    return torch.cat(parts) if parts else torch.zeros(0)


class JudgeMetrics(torch.nn.Module):
    """Pairwise and pointwise metrics for every task, named ``<prefix>/<task>/<metric>``,
    and the teacher-forced loss, ``<prefix>/loss``."""

    def __init__(self, prefix: str = "val"):
        super().__init__()
        self.prefix = prefix
        self.pairwise = torch.nn.ModuleDict({t: PairwiseMetrics() for t in TASKS})
        self.pointwise = torch.nn.ModuleDict({t: PointwiseMetrics() for t in TASKS})
        self.loss = TargetLoss()

    def update_loss(self, records: Sequence[PreferenceRecord], logits: torch.Tensor,
                    labels: torch.Tensor) -> None:
        """Add the teacher-forced loss of a batch's records (one row of ``logits`` and
        ``labels`` per record, in order)."""
        loss, tokens = target_token_losses(logits, labels)
        self.loss.update(loss, tokens, keys=[record_key(r) for r in records])

    def update(self, records: Sequence[PreferenceRecord], judgments: Sequence[Judgment],
               kinds: Sequence[str | None] | None = None) -> None:
        """Add the judgments of labelled records (one judgment per record, in order), each
        task and form to its own metric, keyed by :func:`ur.data.records.record_key`.
        Pointwise scores are normalized by their records' scales. ``kinds``: per record,
        what tells its candidates apart (None where unknown)."""
        kinds = list(kinds) if kinds is not None else [None] * len(records)
        groups = defaultdict(list)
        for r, j, k in zip(records, judgments, kinds, strict=True):
            groups[(r.form, r.task)].append((r, j, k))
        for (form, task), pairs in groups.items():
            keys = [record_key(r) for r, _, _ in pairs]
            if form == "pairwise":
                self.pairwise[task].update([r.label for r, _, _ in pairs],
                                           [j.label for _, j, _ in pairs],
                                           [j.label_swapped for _, j, _ in pairs], keys=keys,
                                           kinds=[k for _, _, k in pairs])
            else:
                self.pointwise[task].update(
                    [r.normalized_score() for r, _, _ in pairs],
                    [None if j.score is None else (j.score - r.scale[0]) / (r.scale[1] - r.scale[0])
                     for r, j, _ in pairs], keys=keys)

    def compute(self) -> dict[str, float]:
        """Every task's metrics, synced across processes (every rank takes part in every
        task's sync, in the same order); tasks without a record anywhere are left out."""
        out = {}
        with warnings.catch_warnings():
            # A rank that judged no record of a task still syncs it; torchmetrics warns then.
            warnings.filterwarnings("ignore", message=r".*was called before the ``update``")
            for kind in (self.pairwise, self.pointwise):
                for task, metric in kind.items():
                    for name, value in metric.compute().items():
                        out[f"{self.prefix}/{task}/{name}"] = value
            for name, value in self.loss.compute().items():
                out[f"{self.prefix}/{name}"] = value
        return out

    def reset(self) -> None:
        for kind in (self.pairwise, self.pointwise):
            for metric in kind.values():
                metric.reset()
        self.loss.reset()
