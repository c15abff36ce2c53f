from collections import Counter

from ur.data.datamodule import randomize_order, stable_coin
from ur.data.records import Media, PreferenceRecord
from ur.data.sampling import MixtureSampler


def test_mixture_draws_weighted_counts_per_source_and_is_deterministic():
    s = MixtureSampler([10, 20, 4], [1.0, 0.5, 2.0], seed=3)
    epoch0 = list(s)
    source = Counter(0 if i < 10 else 1 if i < 30 else 2 for i in epoch0)
    assert source == {0: 10, 1: 10, 2: 8} and len(s) == 28
    assert sorted(i for i in epoch0 if i < 10) == list(range(10))  # weight 1: each once
    assert Counter(i for i in epoch0 if i >= 30) == {30: 2, 31: 2, 32: 2, 33: 2}
    epoch1 = list(s)
    assert epoch1 != epoch0  # a new shuffle each epoch
    again = MixtureSampler([10, 20, 4], [1.0, 0.5, 2.0], seed=3)
    assert list(again) == epoch0 and list(again) == epoch1


def test_length_grouping_batches_similar_sizes_from_the_same_draw():
    import numpy as np
    import pytest

    sizes = list(np.random.default_rng(0).integers(0, 1000, 203))
    free = MixtureSampler([200, 3], [1.0, 1.0], seed=5)
    grouped = MixtureSampler([200, 3], [1.0, 1.0], seed=5, item_sizes=sizes, batch_size=8,
                             group=4)
    a, b = list(free), list(grouped)
    assert sorted(a) == sorted(b) == list(range(203))  # the same items, each once

    def spread(order):
        batches = [order[k:k + 8] for k in range(0, len(order), 8)]
        return np.mean([np.ptp([sizes[i] for i in x]) for x in batches])

    assert spread(b) < spread(a) / 3
    # every batch a DataLoader cuts is sorted: the short batch (3 items) did not move
    # into the middle, where it would shift every later cut
    cuts = [b[k:k + 8] for k in range(0, len(b), 8)]
    assert all([sizes[i] for i in x] == sorted(sizes[i] for i in x) for x in cuts)
    again = MixtureSampler([200, 3], [1.0, 1.0], seed=5, item_sizes=sizes, batch_size=8, group=4)
    assert list(again) == b and list(grouped) != b  # seeded; a new draw each epoch
    with pytest.raises(ValueError, match="item_sizes"):
        MixtureSampler([10], [1.0], item_sizes=[1, 2], batch_size=2, group=2)


def test_eval_order_is_fixed():
    assert list(MixtureSampler([3, 2], [1, 1], shuffle=False)) == [0, 1, 2, 3, 4]


def test_order_randomization_is_seeded_and_balanced():
    recs = [PreferenceRecord(task="video_generation", form="pairwise", source="videodpo",
                             id=str(i), prompt="p", label="first",
                             media=(Media("video", path="/c.mp4"), Media("video", path="/r.mp4")))
            for i in range(400)]
    out = [randomize_order(r, seed=0) for r in recs]
    firsts = sum(r.label == "first" for r in out)
    assert 160 < firsts < 240  # about half swapped
    assert out == [randomize_order(r, seed=0) for r in recs]
    assert [stable_coin(1, str(i)) for i in range(50)] != [stable_coin(0, str(i)) for i in range(50)]


def test_evaluation_ignores_training_weights(tmp_path):
    import json

    from ur.data.datamodule import PreferenceDataModule, SourceSpec

    rows = [{"id": str(i), "query": "What colour?", "response": ["red", "blue"], "image": "x.png",
             "human_ranking": [0, 1]} for i in range(6)]
    path = tmp_path / "vl.json"
    path.write_text(json.dumps(rows))
    spec = SourceSpec(name="vl_rewardbench", path=str(path), weight=0.5)
    dm = PreferenceDataModule(train=[spec], val=[spec], check_media="none")  # tables only
    dm.setup("fit")
    assert len(dm.sampler("train", shuffle=True)) == 3
    assert len(dm.sampler("val", shuffle=False)) == 6
