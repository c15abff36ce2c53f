"""``GenerationPairsDataModule``: Diffusion-DPO preference pairs for a generator, as
Lightning data.

Pairs come from any source the adapters read that holds pairwise generation records:
the DPO schemas ``pickapic_v2`` (images) and ``videodpo`` (videos), which construction
writes, or any preference source of generation pairs. Each pair keeps its roles: the
preferred image or video is "chosen", the other "rejected", and nothing randomises
their order (a record's label says which is which; ties cannot train DPO and are
dropped and counted). One DataModule serves one modality: images or videos, never both.

A training batch (:class:`GenerationPairCollator`) holds each pair's caption and its two
candidates as pixels in [-1, 1], square at ``resolution``; videos as ``num_frames``
frames, channels first and then frames (the layout diffusers' video models take).

Validation draws samples for fixed held-out captions (:class:`HeldOutPrompts`, the
synthetic world's captions no generator is pretrained on), each with a fixed seed, so
every validation draws the same noise for the same prompt. Each held-out pair and each
prompt is evaluated once across DDP ranks (:class:`EvalShares`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler

from ur.data.collate import RecordBatch, load_record_media
from ur.data.datamodule import (
    CheckMedia,
    SourceSpec,
    load_records,
)
from ur.data.pairs import chosen_first, keep_usable_pairs
from ur.data.records import PreferenceRecord, RecordError, is_generation, task_modality
from ur.data.sampling import EpochLoader, MixtureSampler, ResumableTrainLoader
from ur.data.synthetic.captions import HELD_OUT_POOL, held_out_captions

log = logging.getLogger(__name__)
Modality = Literal["image", "video"]

SEED_STRIDE = 1000
"""Held-out item ``(caption index, sample)`` draws its noise with seed
``index * SEED_STRIDE + sample``."""


@dataclass
class HeldOutPrompts:
    """The synthetic world's held-out captions that validation samples the generator for
    (:func:`ur.data.synthetic.captions.held_out_captions`), each with fixed seeds."""

    kind: Modality = "image"
    """Captions of images or of videos (clips with motion)."""
    count: int = 32
    """How many held-out captions (the first ``count`` of the pool)."""
    seed: int = 0
    """Seed of the held-out caption pool: the one the generator's pretraining held out."""
    samples_per_prompt: int = 1
    """Samples drawn per caption, each with its own seed."""

    def __post_init__(self):
        if self.kind not in ("image", "video"):
            raise ValueError(f"held-out prompts are of kind image or video, got {self.kind!r}")
        if not 1 <= self.count <= HELD_OUT_POOL:
            raise ValueError(f"count must be 1 to {HELD_OUT_POOL}, got {self.count}")
        if not 1 <= self.samples_per_prompt < SEED_STRIDE:
            raise ValueError(f"samples_per_prompt must be 1 to {SEED_STRIDE - 1}, "
                             f"got {self.samples_per_prompt}")

    def items(self) -> list[dict]:
        """Every (caption, sample) in order: ``{"prompt", "seed", "index", "sample"}``, the
        seed ``index * SEED_STRIDE + sample``."""
        return [{"prompt": caption, "seed": index * SEED_STRIDE + sample,
                 "index": index, "sample": sample}
                for index, caption in enumerate(held_out_captions(self.kind, self.count,
                                                                  self.seed))
                for sample in range(self.samples_per_prompt)]


def prompt_batch(items: list[dict]) -> dict:
    """Held-out items -> ``{"prompts", "seeds", "indices", "samples"}``, each a list."""
    return {"prompts": [i["prompt"] for i in items], "seeds": [i["seed"] for i in items],
            "indices": [i["index"] for i in items], "samples": [i["sample"] for i in items]}


class EvalShares(DistributedSampler):
    """Rank ``r`` of ``W`` takes items ``r, r + W, r + 2W, ...`` in order: each item
    exactly once across the ranks, the shares differing by one at most.

    Lightning's own distributed sampler pads the shares to one length by repeating
    items, which would count those items twice; evaluation needs no equal lengths, since
    no gradients are synchronised. It is a ``DistributedSampler``, so Lightning keeps it
    instead of putting its own in. Outside a process group (and without ``num_replicas``
    and ``rank``) it is every item in order."""

    def __init__(self, size: int, num_replicas: int | None = None, rank: int | None = None):
        grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if grouped else 1
        if rank is None:
            rank = torch.distributed.get_rank() if grouped else 0
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(self._share())
        self.total_size = size

    def _share(self) -> range:
        return range(self.rank, len(self.dataset), self.num_replicas)

    def __iter__(self):
        return iter(self._share())

    def __len__(self):
        return self.num_samples


def to_pixels(decoded, resolution: int) -> torch.Tensor:
    """Decoded media (an RGB PIL image, or ``(F, H, W, 3)`` uint8 frames as
    :func:`ur.data.media.load_media` gives them) -> float32 in [-1, 1], an image
    ``(3, resolution, resolution)``, a video ``(3, F, resolution, resolution)``.

    The shorter side is scaled to ``resolution`` (bilinear, antialiased when shrinking)
    and the longer one centre-cropped, as diffusers' training scripts prepare images."""
    array = np.asarray(decoded)
    video = array.ndim == 4
    frames = torch.from_numpy(np.array(array if video else array[None]))  # a writable copy
    x = frames.permute(0, 3, 1, 2).float() / 255  # (F, 3, H, W)
    h, w = x.shape[-2:]
    if (h, w) != (resolution, resolution):
        scale = resolution / min(h, w)
        size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                          antialias=scale < 1)
        top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        x = x[..., top:top + resolution, left:left + resolution]
    x = (x * 2 - 1).clamp(-1, 1)
    return x.permute(1, 0, 2, 3).contiguous() if video else x[0]


@dataclass
class GenerationPairCollator:
    """Generation pairs (chosen first) -> one batch:

    - ``prompts``: the captions (list of str);
    - ``chosen``, ``rejected``: float32 pixels in [-1, 1], images ``(B, 3, R, R)``,
      videos ``(B, 3, F, R, R)`` (``R = resolution``, ``F = num_frames``); row ``i`` of
      both is pair ``i``;
    - ``ids``: the pairs' record ids;
    - ``records``: the pairs and the problems of those left out
      (:class:`ur.data.collate.RecordBatch`, what :class:`ur.callbacks.SkippedRecords`
      counts).

    A pair whose media cannot be decoded is a :class:`RecordError` naming its file, row
    and field; with ``skip_bad`` it leaves the batch and is counted. A batch of
    unusable pairs only has ``B = 0``.
    """

    kind: Modality
    resolution: int = 32
    num_frames: int = 4
    skip_bad: bool = False

    def __call__(self, pairs: list[PreferenceRecord]) -> dict:
        kept, chosen, rejected, problems = [], [], [], []
        for pair in pairs:
            try:
                images, videos = load_record_media(pair, self.num_frames)
            except RecordError as e:
                if not self.skip_bad:
                    raise
                problems.append(e.describe())
                continue
            won, lost = (to_pixels(m, self.resolution) for m in images + videos)
            kept.append(pair)
            chosen.append(won)
            rejected.append(lost)
        return {"prompts": [p.prompt for p in kept],
                "chosen": self._stack(chosen), "rejected": self._stack(rejected),
                "ids": [p.id for p in kept], "records": RecordBatch(kept, problems)}

    def _stack(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        if pixels:
            return torch.stack(pixels)
        frames = (self.num_frames,) if self.kind == "video" else ()
        return torch.zeros((0, 3, *frames, self.resolution, self.resolution))


class GenerationPairsDataModule(ResumableTrainLoader, LightningDataModule):
    """Diffusion-DPO pairs for a text-to-image or text-to-video generator.

    Args:
        train: Pair sources for training (e.g. ``{name: pickapic_v2, path:
            pairs.parquet}`` or ``{name: videodpo, path: pairs.jsonl}``).
        val: Pair sources for validation (the rewards metrics on held-out pairs).
        prompts: The held-out captions validation samples the generator for, with
            their seeds (:class:`HeldOutPrompts`); None: no sampling at validation.
        test_prompts: The held-out captions ``ur test`` samples for (default: prompts).
        resolution: Side of the square images and frames the pairs are resized to.
        num_frames: Frames sampled uniformly from each video.
        batch_size: Pairs per training batch.
        eval_batch_size: Pairs or prompts per validation/test batch (default:
            batch_size).
        num_workers: DataLoader workers.
        seed: Seed of the training order (``ur fit`` sets it to ``seed_everything``).
        skip_bad: Skip unusable pairs and count them instead of stopping.
        max_bad: With skip_bad, stop anyway past this many (at setup and in training
            batches together).
        check_media: At setup, decode the media of ``all`` training and validation
            pairs, of a seeded ``sample`` of ``check_media_sample`` pairs per split
            (huge corpora), or ``none``; unusable media stop a strict run there, or are
            skipped and counted.
        check_media_sample: Pairs per split that ``sample`` checks.

    After setup, ``kind`` is the modality of the pairs (``image`` or ``video``), and
    ``val_kinds`` names what each validation loader yields (``pairs`` or ``prompts``),
    in ``val_dataloader``'s order, so a module can tell ``dataloader_idx`` apart.
    """

    def __init__(
        self,
        train: list[SourceSpec] | None = None,
        val: list[SourceSpec] | None = None,
        prompts: HeldOutPrompts | None = None,
        test_prompts: HeldOutPrompts | None = None,
        resolution: int = 32,
        num_frames: int = 4,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int | None = None,
        skip_bad: bool = False,
        max_bad: int = 1000,
        check_media: CheckMedia = "all",
        check_media_sample: int = 1000,
    ):
        super().__init__()
        if resolution < 1 or num_frames < 1:
            raise ValueError(f"resolution and num_frames must be >= 1, got {resolution} "
                             f"and {num_frames}")
        self.sources = {"train": list(train or []), "val": list(val or [])}
        self.prompts = {"val": prompts, "test": test_prompts or prompts}
        self.resolution, self.num_frames = resolution, num_frames
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = 0 if seed is None else seed
        self.skip_bad, self.max_bad = skip_bad, max_bad
        self.check_media, self.check_media_sample = check_media, check_media_sample
        self.kind: Modality | None = None
        self._kind_of: dict[str, set[str]] = {}  # what holds which modalities
        self._one_modality({f"{stage} held-out prompts": {p.kind}
                            for stage, p in self.prompts.items() if p is not None})
        self.pairs: dict[str, list[PreferenceRecord]] = {}
        self.sizes: dict[str, list[int]] = {}
        self.dropped: dict[str, Counter] = {}
        self.skipped: dict[str, int] = {}  # unusable pairs, for the max_bad cap
        self.val_kinds: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), None: ("train", "val")}
        for split in wanted.get(stage, ()):
            if split in self.pairs or not self.sources[split]:
                continue
            per_source, problems = load_records(self.sources[split], skip_bad=self.skip_bad,
                                                max_bad=self.max_bad)
            dropped = Counter(bad=len(problems))
            kept = [self._pairs_of(recs, dropped) for recs in per_source]
            self._one_modality({
                f"{split} source {spec.name} {spec.path}": {task_modality(r.task) for r in recs}
                for spec, recs in zip(self.sources[split], kept, strict=True) if recs})
            keep_usable_pairs(self, split, kept, dropped, len(problems), "generation")

    @staticmethod
    def _pairs_of(records: list[PreferenceRecord], dropped: Counter) -> list[PreferenceRecord]:
        """The pairwise generation records, chosen first; the rest counted in ``dropped``."""
        kept = []
        for r in records:
            if r.form != "pairwise" or not is_generation(r.task):
                dropped["not a generation pair"] += 1
            elif (pair := chosen_first(r)) is None:
                dropped["tie"] += 1
            else:
                kept.append(pair)
        return kept

    def _one_modality(self, found: dict[str, set[str]]) -> None:
        """Note what ``found`` holds (``{where: modalities}``), and refuse images and videos
        together (over the held-out prompts and every split set up so far), naming each
        place and what it holds."""
        self._kind_of.update(found)
        kinds = set().union(*self._kind_of.values())
        if len(kinds) > 1:
            listed = "\n".join(f"  {where}: {' and '.join(sorted(held))}"
                               for where, held in self._kind_of.items())
            raise RecordError("a generation pairs DataModule serves one modality, image or "
                              f"video, but these hold different ones:\n{listed}\n(use one "
                              "DataModule per generator)")
        self.kind = next(iter(kinds), None)

    def collator(self) -> GenerationPairCollator:
        return GenerationPairCollator(self.kind or "image", resolution=self.resolution,
                                      num_frames=self.num_frames, skip_bad=self.skip_bad)

    def _ready(self, split: str) -> list[PreferenceRecord]:
        if split not in self.pairs:
            self.setup("fit" if split == "train" else "validate")
        if split not in self.pairs:
            raise ValueError(f"no {split} pair sources: set data.init_args.{split}")
        return self.pairs[split]

    def train_dataloader(self):
        pairs = self._ready("train")
        sampler = MixtureSampler(self.sizes["train"], [s.weight for s in self.sources["train"]],
                                 seed=self.seed, shuffle=True)
        loader = EpochLoader(pairs, sampler=sampler, collate_fn=self.collator(),
                             batch_size=self.batch_size, num_workers=self.num_workers,
                             persistent_workers=self.num_workers > 0,
                             generator=torch.Generator().manual_seed(self.seed))
        return self.resumed(loader)

    def _pairs_loader(self) -> DataLoader:
        pairs = self._ready("val")
        return DataLoader(pairs, sampler=EvalShares(len(pairs)), collate_fn=self.collator(),
                          batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def prompt_loader(self, stage: Literal["val", "test"] = "val") -> DataLoader | None:
        """The held-out prompts of ``stage`` as batches of ``{"prompts", "seeds",
        "indices", "samples"}`` (:func:`prompt_batch`), this rank's share; None without
        prompts."""
        prompts = self.prompts[stage]
        if prompts is None:
            return None
        items = prompts.items()
        return DataLoader(items, sampler=EvalShares(len(items)), collate_fn=prompt_batch,
                          batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def val_dataloader(self):
        """The validation pairs, then the held-out prompts (either may be absent); what
        each is stands in ``val_kinds``."""
        loaders = {"pairs": self._pairs_loader() if self.sources["val"] else None,
                   "prompts": self.prompt_loader("val")}
        self.val_kinds = [kind for kind, loader in loaders.items() if loader is not None]
        return [loaders[kind] for kind in self.val_kinds]

    def test_dataloader(self):
        """The held-out prompts of ``test_prompts`` (default: ``prompts``)."""
        loader = self.prompt_loader("test")
        if loader is None:
            raise ValueError("ur test of a generator samples held-out prompts: set "
                             "data.init_args.test_prompts (or prompts)")
        return loader
