"""Diffusion-DPO pairs read back from the schemas construction writes (Pick-a-Pic v2 for
images, VideoDPO for videos), made of the world's rendered scenes: the preferred
candidate is ``chosen`` as pixels in [-1, 1], ties and understanding pairs are dropped
and counted, one modality per DataModule, bad input named or counted, a training order
that resumes mid-epoch, and held-out prompts with fixed seeds, each evaluated once."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch  # what Lightning calls
from PIL import Image

from ur.data.datamodule import CorpusError, SourceSpec
from ur.data.generation_pairs import (
    EvalShares,
    GenerationPairsDataModule,
    HeldOutPrompts,
    to_pixels,
)
from ur.data.media import load_media, write_frames, write_video
from ur.data.records import Media, PreferenceRecord, RecordError
from ur.data.sources import write_pairs
from ur.data.synthetic.captions import held_out_captions
from ur.data.synthetic.render import render_clip, render_image
from ur.data.synthetic.scene import sample_scene

SIZE = 32


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def as_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float in [-1, 1], channels first (frames second)."""
    x = torch.from_numpy(np.array(frames)).float() / 127.5 - 1
    return x.permute(2, 0, 1) if x.ndim == 3 else x.permute(3, 0, 1, 2)


def pair(task: str, source: str, rid: str, media, label: str, prompt: str) -> PreferenceRecord:
    return PreferenceRecord(task=task, form="pairwise", source=source, id=rid, prompt=prompt,
                            media=media, label=label)


def image_pairs(n: int, labels=("first", "second")) -> tuple[list[PreferenceRecord], dict]:
    """``n`` Pick-a-Pic pairs of two rendered scenes each, the caption's scene preferred,
    labels cycling through ``labels``; and each pair's preferred image (by id)."""
    rng = np.random.default_rng(0)
    records, preferred = [], {}
    for k in range(n):
        good, other = sample_scene(rng, "image"), sample_scene(rng, "image")
        shown = [render_image(good, SIZE), render_image(other, SIZE)]
        label = labels[k % len(labels)]
        if label == "second":
            shown.reverse()
        media = tuple(Media(kind="image", data=png(p), field=f"jpg_{i}")
                      for i, p in enumerate(shown))
        records.append(pair("image_generation", "pickapic_v2", f"p{k}", media, label,
                            good.caption()))
        preferred[f"p{k}"] = render_image(good, SIZE)
    return records, preferred


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A Pick-a-Pic parquet of 9 pairs (every third a tie) and the preferred images."""
    records, preferred = image_pairs(9, labels=("first", "second", "tie"))
    path = write_pairs("pickapic_v2", tmp_path_factory.mktemp("pick") / "pairs.parquet",
                       records, ties=True)
    return SourceSpec(name="pickapic_v2", path=str(path)), preferred


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A VideoDPO JSONL of 3 pairs (clips as mp4 files and PNG frame folders, the second
    pair's preferred clip listed second) and the preferred clips."""
    root = tmp_path_factory.mktemp("videodpo")
    rng = np.random.default_rng(1)
    records, preferred = [], {}
    for k in range(3):
        good, other = sample_scene(rng, "clip"), sample_scene(rng, "clip")
        clips = [render_clip(good, SIZE, 4), render_clip(other, SIZE, 4)]
        media = []
        for name, frames in zip(("good", "other"), clips, strict=True):
            if k == 0:
                media.append(Media(kind="video", path=str(write_video(
                    root / f"v{k}_{name}.mp4", frames, fps=4).resolve())))
            else:
                write_frames(root / f"v{k}_{name}", frames, ext="png")
                media.append(Media(kind="frames", path=str((root / f"v{k}_{name}").resolve())))
        label = "second" if k == 1 else "first"
        if label == "second":
            media.reverse()
        records.append(pair("video_generation", "videodpo", f"v{k}", tuple(media), label,
                            good.caption()))
        preferred[f"v{k}"] = (media[0] if label == "first" else media[1], clips[0])
    path = write_pairs("videodpo", root / "pairs.jsonl", records)
    return SourceSpec(name="videodpo", path=str(path)), preferred


def all_batches(loader) -> list[dict]:
    _set_sampler_epoch(loader, 0)
    return list(loader)


# --- pairs as pixels ---------------------------------------------------------------------

def test_image_pairs_give_the_preferred_image_as_chosen(images):
    spec, preferred = images
    dm = GenerationPairsDataModule(train=[spec], batch_size=4)
    dm.setup("fit")
    assert dm.kind == "image" and dm.dropped["train"]["tie"] == 3
    batches = all_batches(dm.train_dataloader())
    assert sorted(i for b in batches for i in b["ids"]) == ["p0", "p1", "p3", "p4", "p6", "p7"]
    batch = batches[0]
    assert batch["chosen"].shape == batch["rejected"].shape == (4, 3, SIZE, SIZE)
    assert batch["chosen"].dtype == torch.float32
    assert batch["chosen"].min() >= -1 and batch["chosen"].max() <= 1
    for i, rid in enumerate(batch["ids"]):
        assert torch.allclose(batch["chosen"][i], as_pixels(preferred[rid]))
        assert not torch.allclose(batch["rejected"][i], as_pixels(preferred[rid]))
        assert batch["prompts"][i] == batch["records"][i].prompt


def test_pairs_are_resized_to_the_resolution(images):
    spec, preferred = images
    dm = GenerationPairsDataModule(train=[spec], resolution=16, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["chosen"].shape == (6, 3, 16, 16)
    assert batch["chosen"].min() >= -1 and batch["chosen"].max() <= 1
    # shrinking is antialiased, as Pillow's bilinear resize is (to its rounding to bytes)
    rid = batch["ids"][0]
    pillow = Image.fromarray(preferred[rid]).resize((16, 16), Image.Resampling.BILINEAR)
    assert torch.allclose(batch["chosen"][0], as_pixels(np.asarray(pillow)), atol=1 / 127.5)


def test_a_wide_image_is_scaled_by_its_shorter_side_and_centre_cropped():
    wide = np.zeros((SIZE, 2 * SIZE, 3), np.uint8)
    wide[:, SIZE // 2: SIZE // 2 + SIZE] = 255  # the middle square is white
    assert torch.equal(to_pixels(Image.fromarray(wide), SIZE), torch.ones(3, SIZE, SIZE))
    assert to_pixels(Image.fromarray(wide), 8).shape == (3, 8, 8)


def test_video_pairs_give_the_preferred_clip_as_chosen(videos):
    spec, preferred = videos
    dm = GenerationPairsDataModule(train=[spec], num_frames=4, batch_size=3)
    batch = next(iter(dm.train_dataloader()))
    assert dm.kind == "video"
    assert batch["chosen"].shape == batch["rejected"].shape == (3, 3, 4, SIZE, SIZE)
    for i, rid in enumerate(batch["ids"]):
        media, clip = preferred[rid]
        assert torch.allclose(batch["chosen"][i], as_pixels(load_media(media, 4)))
        if media.kind == "frames":  # PNG frames are the rendered clip exactly
            assert torch.allclose(batch["chosen"][i], as_pixels(clip))


def test_video_frames_follow_num_frames(videos):
    spec, _ = videos
    batch = next(iter(GenerationPairsDataModule(train=[spec], num_frames=2, resolution=16,
                                                batch_size=3).train_dataloader()))
    assert batch["chosen"].shape == (3, 3, 2, 16, 16)


def test_understanding_pairs_are_dropped_and_counted(images, tmp_path):
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "q.png")
    question = PreferenceRecord(
        task="image_understanding", form="pairwise", source="image_dpo", id="q",
        prompt="What colour?", media=(Media(kind="image", path=str(tmp_path / "q.png")),),
        responses=("black", "white"), label="first")
    spec = SourceSpec(name="image_dpo", path=str(write_pairs(
        "image_dpo", tmp_path / "qa.jsonl", [question])))
    dm = GenerationPairsDataModule(train=[images[0], spec])
    dm.setup("fit")
    assert dm.dropped["train"]["not a generation pair"] == 1
    assert dm.sizes["train"] == [6, 0]


def test_images_and_videos_together_are_refused_naming_the_sources(images, videos):
    with pytest.raises(RecordError, match="one modality") as err:
        GenerationPairsDataModule(train=[images[0]], val=[videos[0]]).setup("fit")
    assert images[0].path in str(err.value) and videos[0].path in str(err.value)
    with pytest.raises(RecordError, match="val held-out prompts: video"):
        GenerationPairsDataModule(train=[images[0]],
                                  prompts=HeldOutPrompts(kind="video")).setup("fit")


# --- bad input ---------------------------------------------------------------------------

def corrupted_parquet(tmp_path, column: str, value) -> SourceSpec:
    """Four Pick-a-Pic pairs, row 2's ``column`` set to ``value``."""
    records, _ = image_pairs(4)
    path = write_pairs("pickapic_v2", tmp_path / "pairs.parquet", records)
    rows = pq.read_table(path).to_pylist()
    rows[2][column] = value
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), path)
    return SourceSpec(name="pickapic_v2", path=str(path))


@pytest.mark.parametrize(("column", "value"), [("caption", None), ("jpg_0", b"not an image")])
def test_a_bad_row_stops_setup_naming_file_row_and_field(tmp_path, column, value):
    spec = corrupted_parquet(tmp_path, column, value)
    with pytest.raises(CorpusError) as err:
        GenerationPairsDataModule(train=[spec]).setup("fit")
    (problem,) = err.value.problems
    assert (problem.file, problem.row, problem.field) == (spec.path, 2, column)
    assert f"pairs.parquet, row 2, field {column!r}" in str(err.value)


@pytest.mark.parametrize(("column", "value"), [("caption", None), ("jpg_0", b"not an image")])
def test_skip_bad_counts_a_bad_row_up_to_max_bad(tmp_path, column, value):
    spec = corrupted_parquet(tmp_path, column, value)
    dm = GenerationPairsDataModule(train=[spec], skip_bad=True)
    dm.setup("fit")
    assert dm.skipped["train"] == 1 and len(dm.pairs["train"]) == 3
    with pytest.raises(CorpusError, match="over the limit of 0"):
        GenerationPairsDataModule(train=[spec], skip_bad=True, max_bad=0).setup("fit")


def test_a_video_that_cannot_be_decoded_in_a_batch_is_named_or_skipped(videos):
    spec, _ = videos
    root = Path(spec.path).parent  # where the clips' relative paths resolve
    rows = [json.loads(line) for line in open(spec.path)]
    (root / "broken.mp4").write_bytes(b"\x00" * 64)
    rows[1]["rejected"] = "broken.mp4"
    path = root / "broken_pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = SourceSpec(name="videodpo", path=str(path))
    strict = GenerationPairsDataModule(train=[bad], check_media="none", batch_size=3)
    with pytest.raises(RecordError) as err:
        next(iter(strict.train_dataloader()))
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 1, "rejected")
    lenient = GenerationPairsDataModule(train=[bad], check_media="none", batch_size=3,
                                        skip_bad=True)
    batch = next(iter(lenient.train_dataloader()))
    assert len(batch["ids"]) == 2 and batch["chosen"].shape[0] == 2
    assert "broken_pairs.jsonl, row 1, field 'rejected'" in batch["records"].skipped[0]
    only_bad = lenient.collator()([lenient.pairs["train"][1]])
    assert only_bad["chosen"].shape == (0, 3, 4, SIZE, SIZE) and only_bad["ids"] == []


# --- training order ----------------------------------------------------------------------

def epoch_ids(loader, epoch: int) -> list[list[str]]:
    _set_sampler_epoch(loader, epoch)
    return [b["ids"] for b in loader]


def test_training_order_is_seeded_and_resumes_within_an_epoch(images):
    spec, _ = images

    def dm(seed=3):
        return GenerationPairsDataModule(train=[spec], batch_size=2, seed=seed)

    first = dm().train_dataloader()
    _set_sampler_epoch(first, 2)
    it = iter(first)
    head = [next(it)["ids"], next(it)["ids"]]
    state = first.state_dict()
    whole = head + [b["ids"] for b in it]
    assert len(whole) == 3 and whole == epoch_ids(dm().train_dataloader(), 2)
    assert epoch_ids(dm().train_dataloader(), 1) != whole  # a new order each epoch
    assert epoch_ids(dm(seed=4).train_dataloader(), 2) != whole

    resumed = dm()
    resumed.load_state_dict({"train_loader": state})  # what a checkpoint restores
    assert epoch_ids(resumed.train_dataloader(), 2) == whole[2:]


# --- held-out prompts --------------------------------------------------------------------

def test_held_out_prompts_have_fixed_seeds_each_once():
    prompts = HeldOutPrompts(kind="video", count=5, samples_per_prompt=2)
    dm = GenerationPairsDataModule(prompts=prompts, eval_batch_size=4)
    (loader,) = dm.val_dataloader()
    assert dm.val_kinds == ["prompts"]
    batches = list(loader)
    assert [len(b["prompts"]) for b in batches] == [4, 4, 2]
    seen = [(p, s) for b in batches for p, s in zip(b["prompts"], b["seeds"], strict=True)]
    captions = held_out_captions("video", 5)
    assert seen == [(c, i * 1000 + k) for i, c in enumerate(captions) for k in range(2)]
    assert [list(b.values()) for b in dm.val_dataloader()[0]] == [
        list(b.values()) for b in batches]
    assert [b["seeds"] for b in dm.test_dataloader()] == [b["seeds"] for b in batches]


@pytest.mark.parametrize("ranks", [2, 3])
def test_eval_shares_give_each_item_to_one_rank(ranks):
    shares = [list(EvalShares(10, num_replicas=ranks, rank=r)) for r in range(ranks)]
    assert sorted(i for s in shares for i in s) == list(range(10))
    assert [len(s) for s in shares] == [len(EvalShares(10, ranks, r)) for r in range(ranks)]


def test_validation_loaders_are_named_in_order(images):
    spec, _ = images
    both = GenerationPairsDataModule(train=[spec], val=[spec], prompts=HeldOutPrompts(count=3))
    pairs, prompts = both.val_dataloader()
    assert both.val_kinds == ["pairs", "prompts"]
    assert sorted(i for b in pairs for i in b["ids"]) == ["p0", "p1", "p3", "p4", "p6", "p7"]
    assert isinstance(pairs.sampler, EvalShares) and isinstance(prompts.sampler, EvalShares)
    assert [b["prompts"] for b in prompts] == [held_out_captions("image", 3)]
    only_pairs = GenerationPairsDataModule(val=[spec])
    assert len(only_pairs.val_dataloader()) == 1 and only_pairs.val_kinds == ["pairs"]
    with pytest.raises(ValueError, match="test_prompts"):
        only_pairs.test_dataloader()
