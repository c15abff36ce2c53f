import json
import math
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import stats

from ur.data.records import Media, PreferenceRecord, record_key
from ur.reward.judge import Judgment
from ur.reward.metrics import (
    JudgeMetrics,
    PairwiseMetrics,
    PointwiseMetrics,
    bootstrap_indices,
    pearson,
    spearman,
    target_token_losses,
)


def keys(n):
    return list(range(n))


def test_pairwise_accuracies_by_hand():
    m = PairwiseMetrics()
    truth = ["first", "second", "tie", "first", "second"]
    pred = ["first", "first", "tie", None, "tie"]
    m.update(truth, pred, keys=keys(5))
    out = m.compute()
    # tau: all five pairs; right on #1 and #3 (tie said for a tie) -> 2/5
    assert out["pair_acc_tau"] == pytest.approx(2 / 5)
    # diff: ground-truth ties dropped -> #1,#2,#4,#5; right on #1 only -> 1/4
    assert out["pair_acc_diff"] == pytest.approx(1 / 4)
    assert out["parse_rate"] == pytest.approx(4 / 5)
    assert "position_consistency" not in out


def test_pairwise_accuracy_per_kind_by_hand():
    m = PairwiseMetrics()
    truth = ["first", "second", "first", "tie", "first", "second", "first"]
    pred = ["first", "first", "first", "tie", "second", "second", "first"]
    kinds = ["blur", "blur", "blur", "blur", "wrong_shape", "wrong_shape", None]
    m.update(truth, pred, keys=keys(7), kinds=kinds)
    out = m.compute()
    # blur: #1 #2 #3 (#4 is a ground-truth tie) -> right on #1 and #3 -> 2/3
    assert out["pair_acc_diff@blur"] == pytest.approx(2 / 3)
    assert out["pair_count@blur"] == 3
    # wrong_shape: #5 wrong, #6 right -> 1/2
    assert out["pair_acc_diff@wrong_shape"] == pytest.approx(1 / 2)
    assert out["pair_acc_diff@wrong_shape_ci_low"] <= 0.5 <= out["pair_acc_diff@wrong_shape_ci_high"]
    # a pair without a kind counts in the whole, in no kind
    assert out["pair_acc_diff"] == pytest.approx(4 / 6)
    assert sorted(k for k in out if k.startswith("pair_count@")) == ["pair_count@blur",
                                                                     "pair_count@wrong_shape"]


def test_without_kinds_there_is_no_per_kind_metric_and_a_wrong_kind_is_refused():
    m = PairwiseMetrics()
    m.update(["first", "second"], ["first", "first"], keys=keys(2))
    assert not any("@" in k for k in m.compute())
    with pytest.raises(ValueError, match="unknown difference kinds"):
        m.update(["first"], ["first"], keys=[9], kinds=["sharpness"])


def test_position_consistency_by_hand():
    m = PairwiseMetrics()
    # swapped answers are already mapped back to the original order
    m.update(["first"] * 4, ["first", "second", "first", None], ["first", "first", None, None],
             keys=keys(4))
    out = m.compute()
    # judged in both orders: pairs 1 and 2; consistent: pair 1 -> 1/2
    assert out["position_consistency"] == pytest.approx(1 / 2)


def test_pointwise_by_hand():
    m = PointwiseMetrics()
    truth = [0.0, 0.25, 0.5, 1.0]
    pred = [0.1, 0.2, 0.9, None]
    m.update(truth, pred, keys=keys(4))
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
    assert pearson(torch.tensor([0.1, 0.1, 0.1]), y[:3]) == 0.0  # constant: no correlation


def test_a_repeated_key_counts_once():
    m = PairwiseMetrics()
    m.update(["first", "second"], ["first", "first"], keys=[7, 8])
    m.update(["first"], ["first"], keys=[7])  # a padded repeat of the first judgment
    out = m.compute()
    assert out["pair_count"] == 2 and out["pair_acc_diff"] == 0.5


def test_values_do_not_depend_on_the_order_of_updates():
    rng = np.random.default_rng(0)
    truth = rng.choice(["first", "second", "tie"], 60).tolist()
    pred = rng.choice(["first", "second", "tie", None], 60).tolist()
    whole, parts = PairwiseMetrics(), PairwiseMetrics()
    whole.update(truth, pred, keys=keys(60))
    order = rng.permutation(60)
    for chunk in np.array_split(order, 4):
        parts.update([truth[i] for i in chunk], [pred[i] for i in chunk], keys=chunk.tolist())
    assert whole.compute() == parts.compute()


# -- bootstrap intervals ---------------------------------------------------------------------

def pairwise(n, acc, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.choice(["first", "second"], n).tolist()
    flip = {"first": "second", "second": "first"}
    pred = [t if rng.random() < acc else flip[t] for t in truth]
    swapped = [p if rng.random() < 0.8 else flip[p] for p in pred]
    m = PairwiseMetrics()
    m.update(truth, pred, swapped, keys=keys(n))
    return m.compute()


def pointwise(n, noise, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.random(n)
    pred = np.clip(truth + noise * rng.standard_normal(n), 0, 1)
    m = PointwiseMetrics()
    m.update(truth.tolist(), pred.tolist(), keys=keys(n))
    return m.compute()


NAMES = ("pair_acc_tau", "pair_acc_diff", "position_consistency", "point_spearman",
         "point_pearson")


@pytest.mark.parametrize("name", NAMES)
def test_the_interval_holds_the_estimate_and_narrows_with_more_records(name):
    compute = pairwise if name.startswith(("pair", "position")) else pointwise
    arg = 0.7 if compute is pairwise else 0.3
    small, large = compute(40, arg), compute(400, arg)
    for out in (small, large):
        assert out[f"{name}_ci_low"] <= out[name] <= out[f"{name}_ci_high"]
    width = {k: o[f"{name}_ci_high"] - o[f"{name}_ci_low"] for k, o in (("s", small), ("l", large))}
    assert 0 < width["l"] < 0.6 * width["s"]


def test_accuracy_interval_matches_numpy_on_a_fixed_example():
    truth = ["first", "second", "first", "first", "second", "second", "first", "second"]
    pred = ["first", "second", "second", "first", None, "second", "first", "first"]
    m = PairwiseMetrics()
    m.update(truth, pred, keys=keys(8))  # keys in order: the judgments stay in this order
    out = m.compute()
    right = np.array([t == p for t, p in zip(truth, pred, strict=True)], dtype=float)
    means = right[bootstrap_indices(8).numpy()].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    assert out["pair_acc_diff"] == pytest.approx(5 / 8)
    assert out["pair_acc_diff_ci_low"] == pytest.approx(low)
    assert out["pair_acc_diff_ci_high"] == pytest.approx(high)
    # by hand: 8 records cannot resolve much; the interval spans most of the range
    assert low <= 0.375 and high >= 0.875


def test_correlation_intervals_match_scipy_on_a_fixed_example():
    truth = [0.0, 0.25, 0.5, 0.75, 1.0, 0.5, 0.25, 0.75, 1.0, 0.0]
    pred = [0.1, 0.2, 0.4, 0.9, 0.8, 0.6, 0.1, 0.7, 0.9, 0.3]
    m = PointwiseMetrics()
    m.update(truth, pred, keys=keys(10))
    out = m.compute()
    t, p = np.array(truth), np.array(pred)
    idx = bootstrap_indices(10).numpy()

    def corr(fn, a, b):
        return 0.0 if np.ptp(a) == 0 or np.ptp(b) == 0 else fn(a, b)[0]

    rho = [corr(stats.spearmanr, t[i], p[i]) for i in idx]
    r = [corr(stats.pearsonr, t[i], p[i]) for i in idx]
    assert out["point_spearman"] == pytest.approx(stats.spearmanr(t, p)[0])
    for name, samples in (("point_spearman", rho), ("point_pearson", r)):
        low, high = np.percentile(samples, [2.5, 97.5])
        assert out[f"{name}_ci_low"] == pytest.approx(low, abs=1e-9)
        assert out[f"{name}_ci_high"] == pytest.approx(high, abs=1e-9)


def test_intervals_are_deterministic():
    assert pairwise(100, 0.7) == pairwise(100, 0.7)
    assert pointwise(100, 0.3) == pointwise(100, 0.3)


# -- the per-task collection, and its sync across processes ----------------------------------

def img(name):
    return Media(kind="image", path=f"/data/{name}.png", field="image")


def vid(name):
    return Media(kind="video", path=f"/data/{name}.mp4", field="video")


def image_pairs(n):
    records = [PreferenceRecord(task="image_generation", form="pairwise", source="s", id=str(i),
                                prompt=f"caption {i}", media=(img(f"{i}a"), img(f"{i}b")),
                                label=("first", "second", "tie")[i % 3]) for i in range(n)]
    judgments = [Judgment(r.task, r.form, label=("first", "second", "second", None)[i % 4],
                          label_swapped=("first", "first", None)[i % 3])
                 for i, r in enumerate(records)]
    return records, judgments


def video_answers(n):
    records, judgments = [], []
    for i in range(n):
        pair = PreferenceRecord(task="video_understanding", form="pairwise", source="v",
                                id=str(i), prompt=f"question {i}?", media=(vid(str(i)),),
                                responses=("left", "right"), label=("first", "second")[i % 2])
        point = PreferenceRecord(task="video_understanding", form="pointwise", source="v",
                                 id=str(i), prompt=f"question {i}?", media=(vid(str(i)),),
                                 responses=("left",), score=1 + i % 5, scale=(1, 5))
        records += [pair, point]
        judgments += [Judgment(pair.task, pair.form, label=("first", "first", "second")[i % 3]),
                      Judgment(point.task, point.form, score=None if i == 3 else 1 + (i * 7) % 5)]
    return records, judgments


def test_judge_metrics_update_from_records_and_names():
    jm = JudgeMetrics("test")
    records, judgments = image_pairs(2)
    jm.update(records, [Judgment("image_generation", "pairwise", label="first")] * 2)
    records, judgments = video_answers(4)
    jm.update(records, judgments)
    out = jm.compute()
    assert out["test/image_generation/pair_acc_diff"] == 0.5
    assert out["test/video_understanding/point_count"] == 4
    assert "test/video_understanding/point_spearman_ci_low" in out
    assert not any("video_generation" in k for k in out)
    jm.reset()
    assert jm.compute() == {}


def test_the_loss_is_per_target_token_over_records_each_counted_once():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.full((3, 6), -100)
    labels[0, 3:], labels[1, 5], labels[2, 2:] = torch.tensor([1, 2, 3]), 4, torch.tensor([5, 6, 7, 8])
    sums, tokens = target_token_losses(logits, labels)
    assert tokens.tolist() == [3, 1, 4]
    # transformers' causal LM loss: shifted, the mean over every target token of the batch
    mean = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)
    assert float(sums.sum() / tokens.sum()) == pytest.approx(float(mean))
    jm = JudgeMetrics("val")
    records, _ = image_pairs(3)
    jm.update_loss(records[:2], logits[:2], labels[:2])
    jm.update_loss(records[2:] + records[:1], logits[[2, 0]], labels[[2, 0]])  # a padded repeat
    assert jm.compute() == {"val/loss": pytest.approx(float(mean))}


def test_a_record_and_its_query_share_a_key_and_a_swap_does_not():
    records, _ = image_pairs(2)
    r = records[0]
    assert record_key(r) == record_key(r.query()) != record_key(r.swapped())
    assert record_key(r) != record_key(records[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def teacher_forced(n):
    """Logits and labels of ``n`` records: two target tokens each."""
    generator = torch.Generator().manual_seed(n)
    labels = torch.full((n, 4), -100)
    labels[:, 2:] = torch.randint(7, (n, 2), generator=generator)
    return torch.randn(n, 4, 7, generator=generator), labels


def kinds_of(records):
    """A difference kind per pairwise record, by its id (None for pointwise records)."""
    kinds = ("blur", "noise", "wrong_colour", "colour", "describe")
    return [kinds[int(r.id) % len(kinds)] if r.form == "pairwise" else None for r in records]


def ddp_worker(rank: int, port: int, out: str, shards) -> None:
    torch.set_num_threads(1)
    # A rank left waiting in a gather fails after the timeout instead of hanging the run.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=60))
    try:
        jm = JudgeMetrics("test")
        records, judgments = shards[rank]
        jm.update(records, judgments, kinds_of(records))
        if rank == 0:  # the loss of rank 0's records only: rank 1 syncs an empty loss
            jm.update_loss(records, *teacher_forced(len(records)))
        values = jm.compute()
        jm.reset()  # a second epoch syncs again, every task empty on one rank or both
        jm.update(records, judgments, kinds_of(records))
        again = jm.compute()
        Path(out, f"{rank}.json").write_text(json.dumps({"first": values, "again": again}))
    finally:
        dist.destroy_process_group()


def test_metrics_sync_across_two_processes_counting_each_record_once(tmp_path):
    """Rank 0 judges image generation only, rank 1 video understanding only plus a repeat
    of one of its records (as a padded shard holds): both ranks compute the same values,
    those of one process judging each record once."""
    image = image_pairs(30)
    video = video_answers(20)
    padded = (video[0] + video[0][:1], video[1] + video[1][:1])
    mp.spawn(ddp_worker, args=(free_port(), str(tmp_path), [image, padded]), nprocs=2)
    got = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    single = JudgeMetrics("test")
    single.update(image[0] + video[0], image[1] + video[1], kinds_of(image[0] + video[0]))
    single.update_loss(image[0], *teacher_forced(len(image[0])))
    expected = single.compute()
    assert "test/image_generation/pair_acc_diff_ci_low" in expected and "test/loss" in expected
    assert expected["test/video_understanding/pair_count"] == 20
    # per kind, each record once: the repeated video record is not counted twice
    assert expected["test/video_understanding/pair_count@blur"] == 4
    without_loss = {k: v for k, v in expected.items() if k != "test/loss"}
    for rank in (0, 1):
        assert got[rank]["first"] == pytest.approx(expected)
        assert got[rank]["again"] == pytest.approx(without_loss)
