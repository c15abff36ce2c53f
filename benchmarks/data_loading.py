"""Data loading throughput: PreferenceDataModule samples/s, and seeking video decode.

1. Samples per second through the DataModule (records -> media decode -> prompt
   template -> processor -> padded batch) on the synthetic world, for the image tasks
   and for the video tasks with 8-frame clips, with 0 and 2 DataLoader workers.
2. Seeking decode (ours: seek to the keyframe before each sampled frame) against
   decode-everything-then-pick (the usual reference loader) on the same long clips,
   sampling 8 frames; the two must return the same frames.

    python benchmarks/data_loading.py [--size 64] [--batches 12]

Prints a JSON object with every figure and the ratios as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def datamodule_rate(world: Path, size: int, processor_path: str, tasks, workers: int,
                    batches: int, num_frames: int) -> float:
    from ur.data.datamodule import PreferenceDataModule, WorldSpec

    spec = WorldSpec(out=str(world), size=size, num_frames=num_frames)
    dm = PreferenceDataModule(world=spec, tasks=tasks, processor=processor_path, batch_size=8,
                              num_workers=workers, num_frames=num_frames)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up and first-batch costs are not throughput
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += len(batch["records"])
    return n / (time.perf_counter() - t0)


def seek_ratio(tmp: Path, clips: int, frames: int, size: int, sample: int, repeats: int) -> dict:
    from ur.data.media import load_video, write_video
    from ur.data.records import Media

    rng = np.random.default_rng(0)
    media = []
    for i in range(clips):
        base = rng.integers(0, 255, (1, size, size, 3), dtype=np.uint8)
        video = np.repeat(base, frames, axis=0)
        video[:, :, :, 0] = (np.arange(frames) * (250 // frames)).astype(np.uint8)[:, None, None]
        media.append(Media("video", path=str(write_video(tmp / f"long{i}.mp4", video, fps=24, gop=12))))

    def rate(seek: bool) -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            for m in media:
                load_video(m, sample, seek=seek)
        return clips * repeats / (time.perf_counter() - t0)

    same = all(np.array_equal(load_video(m, sample, seek=True), load_video(m, sample, seek=False))
               for m in media)
    seek, full = rate(True), rate(False)
    return {"clip_frames": frames, "clip_px": size, "sampled": sample, "same_frames": same,
            "seek_clips_per_s": round(seek, 2), "decode_all_clips_per_s": round(full, 2),
            "seek_speedup": round(seek / full, 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=400, help="world records in all")
    ap.add_argument("--batches", type=int, default=12, help="batches timed per setting")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from ur.data.synthetic.writer import write_world
    from ur.data.templates import PromptTemplates
    from ur.models.tiny import build_tiny_vlm

    out = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        world = tmp / "world"
        write_world(world, size=args.size, seed=0, difficulty=1, num_frames=8)
        proc = build_tiny_vlm(tmp / "tiny", texts=[PromptTemplates().image_generation_pairwise,
                                                   "a red circle on the left"] * 4)
        for label, tasks in (("image", ["image_generation", "image_understanding"]),
                             ("video8", ["video_generation", "video_understanding"])):
            for workers in (0, 2):
                r = datamodule_rate(world, args.size, str(proc), tasks, workers, args.batches,
                                    num_frames=8)
                out[f"{label}_samples_per_s_workers{workers}"] = round(r, 1)
            out[f"{label}_workers2_over_workers0"] = round(
                out[f"{label}_samples_per_s_workers2"] / out[f"{label}_samples_per_s_workers0"], 2)
        out.update(seek_ratio(tmp, clips=6, frames=240, size=128, sample=8, repeats=3))
    return out


if __name__ == "__main__":
    result = main()
    print(json.dumps(result), flush=True)
    sys.exit(0)
