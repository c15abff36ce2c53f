"""Generation pairs by the oracle: a generator's own samples, best against worst.

The ceiling arm of pair construction for text-to-image and text-to-video on the
synthetic world. :func:`construct_oracle_generation_pairs` samples ``n`` candidates
from a generator for each of ``prompts`` training captions (never a held-out one,
:mod:`ur.data.synthetic.captions`), each from its own seed, scores them with the oracle
(:func:`ur.data.synthetic.oracle.score_image` / ``score_video``: caption alignment
times quality), and pairs the best against the worst of each caption. A caption is
dropped, and counted, when its best and worst differ by less than ``min_gap`` (a pair
the oracle cannot tell apart teaches noise). The pairs are written in the public
schemas Diffusion-DPO reads: Pick-a-Pic v2 (``image_pairs.parquet``, images inline)
or VideoDPO (``video_pairs.jsonl``), with both candidates' scores in ``ur_scores``;
``summary.json`` says what was built. For images, ``image_pointwise.json`` (the EvalMuse
schema) holds every sample with the oracle's score on the judge's 1-5 scale: with the
pairs, the records a judge trains on to see this generator's samples as the oracle does
(``experiments/probes/generator_samples.yaml``).

Every candidate is kept on disk (``candidates/``: a PNG per image, a folder of PNG
frames per clip, lossless, so the files show exactly what the oracle scored) and listed
in ``candidates.jsonl`` (:class:`ur.construct.candidates.Samples`, with each sample's
seed and oracle score): the judge builds its pairs from the same samples
(``ur predict --config experiments/construct/generation.yaml``), so the judge's arms and
this ceiling arm differ only in who chose.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ur.data.records import Media, PreferenceRecord
from ur.data.synthetic.captions import training_captions
from ur.data.synthetic.oracle import score_image, score_video

SOURCE = "oracle_generation_pairs"
PAIR_FILES = {"image": "image_pairs.parquet", "video": "video_pairs.jsonl"}
POINTWISE_FILE = "image_pointwise.json"
MIN_GAP = 0.1
"""The oracle's score gap below which two samples make no pair: clean samples that meet
the same caption checks still differ by a few thousandths (the measured noise and
blur), which is no difference a judge is asked to see."""


def sample_candidates(denoising, captions: list[str], n: int, *, seed: int = 0,
                      batch_size: int = 64, **sample_kwargs) -> np.ndarray:
    """``n`` samples per caption, (P, n, ...) uint8; candidate j of caption i has the seed
    ``seed * 1_000_003 + i * n + j``, so a rerun draws the same candidates."""
    jobs = [(i, j) for i in range(len(captions)) for j in range(n)]
    out = []
    said = time.monotonic()
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        out.append(denoising.sample([captions[i] for i, _ in chunk],
                                    [seed * 1_000_003 + i * n + j for i, j in chunk],
                                    **sample_kwargs))
        # A line a batch on a terminal; in a log the first, the last and at most one a
        # half minute between, however long a batch takes.
        done = min(start + batch_size, len(jobs))
        if sys.stderr.isatty() or start == 0 or time.monotonic() - said >= 30 or done == len(jobs):
            said = time.monotonic()
            print(f"sampled {done}/{len(jobs)} candidates", file=sys.stderr, flush=True)
    samples = np.concatenate(out)
    return samples.reshape(len(captions), n, *samples.shape[1:])


def best_and_worst(scores: list[float], min_gap: float) -> tuple[int, int] | None:
    """Indices of the best and the worst candidate (first of equals), or None when
    they differ by less than ``min_gap`` (or not at all)."""
    best, worst = int(np.argmax(scores)), int(np.argmin(scores))
    if scores[best] - scores[worst] < max(min_gap, 1e-9):
        return None
    return best, worst


def construct_oracle_generation_pairs(generator: str | Path, out: str | Path, *,
                                      kind: str = "image", prompts: int = 400, n: int = 4,
                                      seed: int = 0, min_gap: float = MIN_GAP,
                                      sample_steps: int = 12, guidance: float = 3.0,
                                      num_frames: int = 4, held_out_seed: int = 0,
                                      batch_size: int = 64) -> Path:
    """Sample, score, pair and write (see the module's description); returns ``out``."""
    from ur.construct.candidates import Samples, write_candidates
    from ur.data.sources import pickapic_v2, videodpo
    from ur.io import write_json_atomic
    from ur.models.generators import denoising_of, load_generator

    out = Path(out)
    rng = np.random.default_rng([seed, 4099])
    captions = training_captions(kind, prompts, rng, held_out_seed)
    denoising = denoising_of(load_generator(generator))
    samples = sample_candidates(denoising, captions, n, seed=seed, batch_size=batch_size,
                                num_inference_steps=sample_steps, guidance_scale=guidance,
                                num_frames=num_frames)
    score = score_image if kind == "image" else score_video
    out.mkdir(parents=True, exist_ok=True)
    settings = {"sample_steps": sample_steps, "guidance": guidance, "num_frames": num_frames}
    pairs, gaps, small, pools = [], [], 0, []
    for i, (caption, cands) in enumerate(zip(captions, samples, strict=True)):
        scores = [score(c, caption).score for c in cands]
        rid = f"{kind}-s{seed}-{i:05d}"
        kept = tuple(_write_sample(out / "candidates" / f"{rid}_{j}", c, kind)
                     for j, c in enumerate(cands))
        pools.append(Samples(id=rid, task=f"{kind}_generation", prompt=caption, samples=kept,
                             seeds=[seed * 1_000_003 + i * n + j for j in range(n)],
                             model=str(generator), settings=settings, oracle_scores=scores))
        chosen = best_and_worst(scores, min_gap)
        if chosen is None:
            small += 1
            continue
        gaps.append(scores[chosen[0]] - scores[chosen[1]])
        media = tuple(replace(kept[k], field=f"jpg_{m}") for m, k in enumerate(chosen))
        pairs.append(PreferenceRecord(
            task=f"{kind}_generation", form="pairwise", source=SOURCE, id=rid,
            prompt=caption, media=media, label="first",
            meta={"ur_scores": [scores[k] for k in chosen],
                  "model_0": str(generator), "model_1": str(generator)}))
    path = out / PAIR_FILES[kind]
    if kind == "image":
        pickapic_v2.write_pairs(path, pairs)
    else:
        videodpo.write_pairs(path, pairs, media_root=out)
    write_candidates(out / "candidates.jsonl", pools)
    if kind == "image":
        write_json_atomic(out / POINTWISE_FILE, pointwise_rows(pools, out))
    per_caption = [p.oracle_scores for p in pools]
    summary = {"generator": str(generator), "kind": kind, "prompts": len(captions),
               "candidates_per_prompt": n, "pairs": len(pairs), "dropped_small_gap": small,
               "mean_candidate_score": float(np.mean(per_caption)),
               "mean_gap": float(np.mean(gaps)) if gaps else 0.0,
               "score_spread": score_spread(per_caption),
               "settings": {"seed": seed, "min_gap": min_gap, "sample_steps": sample_steps,
                            "guidance": guidance, "num_frames": num_frames,
                            "held_out_seed": held_out_seed},
               "file": path.name, "candidates": "candidates.jsonl",
               "pointwise": POINTWISE_FILE if kind == "image" else None}
    write_json_atomic(out / "summary.json", summary)
    return out


def score_spread(scores: list[list[float]]) -> dict[str, float]:
    """How far the oracle's scores of one caption's samples spread, against how far the
    captions' mean scores do: ``within_caption`` is the mean over captions of the standard
    deviation of their samples' scores, ``across_captions`` the standard deviation of the
    captions' means, ``within_share`` the part of the scores' variance that lies within a
    caption. A pair chooses between samples of one caption, so the within-caption part is
    all that pairs (the oracle's or a judge's) can teach."""
    s = np.asarray(scores, dtype=np.float64)
    total = float(s.var())
    return {"within_caption": float(s.std(axis=1).mean()),
            "across_captions": float(s.mean(axis=1).std()),
            "within_share": float(s.var(axis=1).mean() / total) if total > 0 else 0.0}


def pointwise_rows(pools, root: Path) -> list[dict]:
    """Every sample of ``pools`` (:class:`ur.construct.candidates.Samples` of images) as an
    EvalMuse row: its path relative to ``root`` and the oracle's score on the 1-5 scale
    the judge learns image generation on."""
    from ur.data.synthetic.world import to_scale

    root = root.resolve()
    return [{"id": f"{s.id}_{j}", "prompt": s.prompt,
             "img_path": str(Path(m.path).relative_to(root)),
             "total_score": [to_scale(score, (1, 5))], "ur_scores": [score]}
            for s in pools for j, (m, score) in enumerate(zip(s.samples, s.oracle_scores,
                                                               strict=True))]


def _write_sample(stem: Path, sample: np.ndarray, kind: str) -> Media:
    """One candidate on disk, losslessly: ``stem.png`` for an image, the folder ``stem``
    of PNG frames for a clip; its absolute path as :class:`Media`."""
    from ur.data.media import write_frames
    from ur.data.synthetic.writer import png_bytes
    from ur.io import write_bytes_atomic

    if kind == "image":
        path = stem.with_suffix(".png").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, png_bytes(sample))
        return Media(kind="image", path=str(path))
    write_frames(stem, sample, ext="png")
    return Media(kind="frames", path=str(stem.resolve()))


def summary_line(out: str | Path) -> str:
    s = json.loads((Path(out) / "summary.json").read_text())
    spread = s["score_spread"]
    return (f"{s['pairs']} pairs from {s['prompts']} captions x {s['candidates_per_prompt']} "
            f"samples ({s['dropped_small_gap']} dropped: gap below "
            f"{s['settings']['min_gap']}); mean candidate score "
            f"{s['mean_candidate_score']:.3f}, mean pair gap {s['mean_gap']:.3f}; score "
            f"spread within a caption {spread['within_caption']:.3f}, across captions "
            f"{spread['across_captions']:.3f}")
