"""Caption sets for the world's generators: held-out captions and the training stream.

A generator pretrained on the world is judged on captions it never saw: a fixed pool of
held-out captions (``HELD_OUT_POOL`` per kind, drawn with their own seed) is excluded
from its pretraining stream, and validation, candidate sampling for evaluation and the
alignment experiments read them from here. The pool does not depend on how many
captions a run evaluates, so evaluating on fewer never changes what was trained on.
Scenes hold one or two objects, as the world's generation records do.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from ur.data.synthetic.scene import Scene, sample_scene

HELD_OUT_POOL = 64
"""Held-out captions per kind; a run evaluates on the first ``count`` of them."""

TWO_OBJECTS = 0.5
"""Share of scenes with two objects (the rest hold one)."""

KINDS = {"image": "image", "video": "clip"}


def _scene_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"caption kind must be image or video, got {kind!r}")
    return KINDS[kind]


def _sample(rng: np.random.Generator, kind: str) -> Scene:
    return sample_scene(rng, _scene_kind(kind), 2 if rng.random() < TWO_OBJECTS else 1)


@lru_cache(maxsize=16)
def _held_out_pool(kind: str, seed: int) -> tuple[str, ...]:
    rng = np.random.default_rng([seed, 7919, 1 if kind == "video" else 0])
    pool: dict[str, None] = {}
    while len(pool) < HELD_OUT_POOL:
        pool.setdefault(_sample(rng, kind).caption())
    return tuple(pool)


def held_out_captions(kind: str = "image", count: int = 32, seed: int = 0) -> list[str]:
    """The first ``count`` held-out captions of ``kind`` (``image`` or ``video``): distinct,
    deterministic for ``seed``, never in :func:`training_scenes` of the same seed."""
    if not 1 <= count <= HELD_OUT_POOL:
        raise ValueError(f"count must be 1 to {HELD_OUT_POOL}, got {count}")
    return list(_held_out_pool(kind, seed)[:count])


def training_scenes(kind: str, rng: np.random.Generator, seed: int = 0) -> Iterator[Scene]:
    """An endless stream of scenes of ``kind`` whose captions are not held out for
    ``seed``; ``rng`` sets the stream (one per worker or rank)."""
    held = set(_held_out_pool(kind, seed))
    while True:
        scene = _sample(rng, kind)
        if scene.caption() not in held:
            yield scene


def training_captions(kind: str, count: int, rng: np.random.Generator,
                      seed: int = 0) -> list[str]:
    """``count`` captions from the training stream (repeats possible), e.g. the prompts
    a policy samples candidates for."""
    stream = training_scenes(kind, rng, seed)
    return [next(stream).caption() for _ in range(count)]
