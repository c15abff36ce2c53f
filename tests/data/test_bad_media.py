"""Media that fail inside training (a 0-byte image): found at setup in strict mode (all,
a seeded sample, or none checked), and under ``skip_bad`` counted wherever the batch is
made (a DataLoader worker included), logged, capped by ``max_bad``; a fit none of whose
batches holds a usable record stops with a message instead of ending as trained."""

import json

import numpy as np
import pytest
from lightning import Trainer
from PIL import Image

from ur.callbacks import UnusableData
from ur.data.datamodule import CorpusError, PreferenceDataModule, SourceSpec
from ur.data.pairs import PairsDataModule
from ur.models.tiny import build_tiny_vlm
from ur.reward.sft import RewardSFTModule


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(build_tiny_vlm(tmp_path_factory.mktemp("bad_media") / "m",
                              texts=["What colour? red blue"], num_layers=1, vision_depth=1))


def source(folder, bad_rows, n=4):
    """A vl_rewardbench file of ``n`` pairs whose ``bad_rows`` show a 0-byte image."""
    folder.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "ok.png")
    (folder / "empty.png").write_bytes(b"")
    rows = [{"id": str(i), "query": "What colour?", "response": ["red", "blue"],
             "image": "empty.png" if i in bad_rows else "ok.png", "human_ranking": [0, 1]}
            for i in range(n)]
    (folder / "vl.json").write_text(json.dumps(rows))
    return SourceSpec(name="vl_rewardbench", path=str(folder / "vl.json"))


def test_strict_setup_names_every_bad_image_before_training(tmp_path):
    spec = source(tmp_path, bad_rows={1, 3})
    with pytest.raises(CorpusError) as err:
        PreferenceDataModule(train=[spec], val=[spec]).setup("fit")
    described = [p.describe() for p in err.value.problems]
    assert [(p.row, p.field) for p in err.value.problems] == [(1, "image"), (3, "image")]
    assert all("vl.json" in d and "empty" in d for d in described)


def test_skip_bad_setup_drops_and_counts_bad_images(tmp_path):
    spec = source(tmp_path, bad_rows={1, 3})
    dm = PreferenceDataModule(train=[spec], val=[spec], skip_bad=True)
    dm.setup("fit")
    assert dm.summary("train")["records"] == 2 and dm.summary("train")["skipped"] == 2
    with pytest.raises(CorpusError, match="over the limit of 3"):
        PreferenceDataModule(train=[spec], val=[spec], skip_bad=True, max_bad=3).setup("fit")


def test_check_media_sample_and_none(tmp_path):
    spec = source(tmp_path, bad_rows={7}, n=40)
    PreferenceDataModule(train=[spec], check_media="none").setup("validate")
    found = []
    for seed in range(8):
        dm = PreferenceDataModule(train=[spec], check_media="sample", check_media_sample=5,
                                  seed=seed, skip_bad=True)
        dm.setup("fit")
        found.append(dm.skipped["train"])
    assert set(found) == {0, 1}  # a sample of 5 in 40 finds row 7 for some seeds only


def fit(base, spec, root, **data):
    dm = PreferenceDataModule(train=[spec], processor=base, check_media="none", skip_bad=True,
                              length_grouping=0, **{"batch_size": 2, **data})
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=root)
    trainer.fit(RewardSFTModule(checkpoint=base, export=False), datamodule=dm)
    return trainer


def test_a_fit_counts_images_skipped_in_a_loader_worker(base, tmp_path):
    trainer = fit(base, source(tmp_path / "d", bad_rows={0, 1}), tmp_path, num_workers=1,
                  batch_size=4)
    # one batch of the 4 pairs per epoch, 2 of them bad; 2 steps take 2 epochs
    assert trainer.global_step == 2
    assert float(trainer.callback_metrics["train/skipped_records"]) == 4


def test_a_fit_stops_past_max_bad(base, tmp_path):
    with pytest.raises(UnusableData, match="over max_bad 1") as err:
        fit(base, source(tmp_path / "d", bad_rows={2, 3}), tmp_path, max_bad=1)
    assert "vl.json, row 2" in str(err.value)


def test_a_fit_whose_batches_are_all_empty_fails(base, tmp_path):
    with pytest.raises(UnusableData, match="no training batch") as err:
        fit(base, source(tmp_path / "d", bad_rows={0, 1, 2, 3}), tmp_path)
    assert "empty" in str(err.value) and "vl.json" in str(err.value)


def test_dpo_pairs_with_a_bad_image_stop_setup_or_are_counted_per_batch(base, tmp_path):
    spec = source(tmp_path, bad_rows={2})
    with pytest.raises(CorpusError) as err:
        PairsDataModule(train=[spec], processor=base).setup("fit")
    assert [(p.row, p.field) for p in err.value.problems] == [(2, "image")]
    dm = PairsDataModule(train=[spec], processor=base, skip_bad=True, check_media="none")
    dm.setup("fit")
    collate = dm.collator()
    empty = collate([dm.pairs["train"][2]])  # a batch of bad pairs only
    assert len(empty["records"]) == 0 and len(empty["records"].skipped) == 1
    batch = collate(dm.pairs["train"])
    assert [p.row for p in batch["records"]] == [0, 1, 3]
    assert "vl.json, row 2" in batch["records"].skipped[0]
