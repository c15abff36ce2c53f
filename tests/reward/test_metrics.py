import math

import pytest
import torch

from ur.reward.metrics import JudgeMetrics, PairwiseMetrics, PointwiseMetrics, pearson, spearman


def test_pairwise_accuracies_by_hand():
    m = PairwiseMetrics()
    truth = ["first", "second", "tie", "first", "second"]
    pred = ["first", "first", "tie", None, "tie"]
    m.update(truth, pred)
    out = m.compute()
    # tau: all five pairs; right on #1 and #3 (tie said for a tie) -> 2/5
    assert out["pair_acc_tau"] == pytest.approx(2 / 5)
    # diff: ground-truth ties dropped -> #1,#2,#4,#5; right on #1 only -> 1/4
    assert out["pair_acc_diff"] == pytest.approx(1 / 4)
    assert out["parse_rate"] == pytest.approx(4 / 5)
    assert "position_consistency" not in out


def test_position_consistency_by_hand():
    m = PairwiseMetrics()
    # swapped answers are already mapped back to the original order
    m.update(["first"] * 4, ["first", "second", "first", None], ["first", "first", None, None])
    out = m.compute()
    # judged in both orders: pairs 1 and 2; consistent: pair 1 -> 1/2
    assert out["position_consistency"] == pytest.approx(1 / 2)


def test_pointwise_by_hand():
    m = PointwiseMetrics()
    truth = [0.0, 0.25, 0.5, 1.0]
    pred = [0.1, 0.2, 0.9, None]
    m.update(truth, pred)
    out = m.compute()
    assert out["point_parse_rate"] == pytest.approx(3 / 4)
    assert out["point_spearman"] == pytest.approx(1.0)  # same order on the parsed three
    x, y = [0.0, 0.25, 0.5], [0.1, 0.2, 0.9]
    mx, my = sum(x) / 3, sum(y) / 3
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    r = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert out["point_pearson"] == pytest.approx(r)
    assert out["point_mae"] == pytest.approx((0.1 + 0.05 + 0.4) / 3)


def test_spearman_handles_ties_with_average_ranks():
    x = torch.tensor([1.0, 2.0, 2.0, 3.0])
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # ranks of x: 0, 1.5, 1.5, 3 -> pearson with 0, 1, 2, 3
    assert spearman(x, y) == pytest.approx(pearson(torch.tensor([0, 1.5, 1.5, 3]),
                                                   torch.tensor([0.0, 1, 2, 3])))
    assert spearman(y, -y) == pytest.approx(-1.0)


def test_judge_metrics_names():
    jm = JudgeMetrics("test")
    jm.pairwise["image_generation"].update(["first", "second"], ["first", "first"])
    jm.pointwise["video_understanding"].update([0.0, 1.0], [0.2, 0.8])
    out = jm.compute()
    assert out["test/image_generation/pair_acc_diff"] == 0.5
    assert out["test/video_understanding/point_spearman"] == pytest.approx(1.0)
    assert not any("video_generation" in k for k in out)
    jm.reset()
    assert jm.compute() == {}
