"""Degradations: how a generation candidate departs from its caption.

Two families:

- *content* errors change the scene before it is rendered: ``wrong_colour``,
  ``wrong_shape``, ``wrong_place`` (images), ``wrong_motion`` (clips),
  ``missing_object``, ``extra_object`` (images);
- *pixel* errors change the rendered pixels: ``noise`` (Gaussian), ``blur``
  (Gaussian), and for clips ``flicker`` (every other frame darker) and ``stutter``
  (a frame held in place of the next, so a moving object halts then jumps).

``subtle`` content errors are the near misses (a neighbouring colour, the most similar
shape, two objects swapping places, a perpendicular instead of the opposite motion);
pixel strengths come from :data:`STRENGTH` per difficulty level.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from ur.data.synthetic.scene import (
    COLOUR_NAMES,
    MOTIONS,
    PLACES,
    SHAPE_NEIGHBOUR,
    SHAPES,
    Scene,
    clip_object,
    colour_neighbours,
    ordered,
    place_object,
)

CONTENT_ERRORS: dict[str, tuple[str, ...]] = {
    "image": ("wrong_colour", "wrong_shape", "wrong_place", "missing_object", "extra_object"),
    "clip": ("wrong_colour", "wrong_shape", "wrong_motion", "missing_object"),
}
PIXEL_ERRORS: dict[str, tuple[str, ...]] = {
    "image": ("noise", "blur"),
    "clip": ("noise", "blur", "flicker", "stutter"),
}

# Pixel-error strength per difficulty: noise sigma and blur sigma in grey levels /
# pixels at 84 px (blur scales with the image size), flicker as the fraction of
# brightness lost on alternate frames. Each is drawn uniformly from its range. Blur
# stays at or under sigma 2: beyond it small diamonds and triangles read as circles
# and squares, and a blurred candidate would be judged wrong in content too.
STRENGTH: dict[int, dict[str, tuple[float, float]]] = {
    0: {"noise": (35.0, 45.0), "blur": (1.7, 2.0), "flicker": (0.3, 0.4)},
    1: {"noise": (18.0, 28.0), "blur": (1.3, 1.6), "flicker": (0.18, 0.25)},
    2: {"noise": (10.0, 16.0), "blur": (0.9, 1.2), "flicker": (0.1, 0.15)},
}


def applicable(scene: Scene, error: str) -> bool:
    """Whether ``error`` can change what ``scene`` shows."""
    n = len(scene.objects)
    if error == "missing_object":
        return n >= 1
    if error in ("wrong_colour", "wrong_shape", "wrong_place", "wrong_motion"):
        return n >= 1
    if error == "extra_object":
        return scene.kind == "image" and n < 3
    if error == "stutter":
        return scene.kind == "clip" and any(o.motion != "still" for o in scene.objects)
    return True


def apply_content(scene: Scene, error: str, rng: np.random.Generator,
                  subtle: bool = False) -> Scene:
    """The scene with one content error. The caption stays that of the original."""
    objs = list(scene.objects)
    used_colours = {x.colour for x in objs}
    if error == "extra_object":
        free_colours = [c for c in COLOUR_NAMES if c not in used_colours]
        free_shapes = [s for s in SHAPES if s not in {x.shape for x in objs}] or list(SHAPES)
        free_places = [p for p in PLACES if p not in {x.place for x in objs}]
        objs.append(place_object(rng, free_shapes[int(rng.integers(len(free_shapes)))],
                                 free_colours[int(rng.integers(len(free_colours)))],
                                 free_places[int(rng.integers(len(free_places)))],
                                 crowded=True))
        objs = [replace(x, r=min(x.r, 0.12)) for x in objs]
        return scene.with_objects(ordered(objs))
    if not objs:
        return scene
    i = int(rng.integers(len(objs)))
    if error == "missing_object":
        del objs[i]
        return scene.with_objects(objs)
    o = objs[i]
    if error == "wrong_colour":
        choices = [c for c in colour_neighbours(o.colour) if c not in used_colours]
        # subtle: the nearest colour; gross: one of the three farthest.
        colour = choices[0] if subtle else choices[-1 - int(rng.integers(min(3, len(choices))))]
        objs[i] = replace(o, colour=colour)
    elif error == "wrong_shape":
        used = {x.shape for x in objs}
        choices = [s for s in SHAPES if s != o.shape and s not in used] or \
                  [s for s in SHAPES if s != o.shape]
        shape = SHAPE_NEIGHBOUR[o.shape] if subtle and SHAPE_NEIGHBOUR[o.shape] in choices \
            else choices[int(rng.integers(len(choices)))]
        objs[i] = replace(o, shape=shape)
    elif error == "wrong_place":
        if subtle and len(objs) == 2:
            a, b = objs
            objs = [replace(a, place=b.place, x=b.x, y=b.y), replace(b, place=a.place, x=a.x,
                                                                     y=a.y)]
        else:
            free = [p for p in PLACES if p not in {x.place for x in objs}]
            place = free[int(rng.integers(len(free)))]
            objs[i] = place_object(rng, o.shape, o.colour, place, crowded=len(objs) > 1)
    elif error == "wrong_motion":
        choices = [m for m in MOTIONS if m != o.motion]
        if subtle and o.motion != "still":
            ux, uy = MOTIONS[o.motion]
            choices = [m for m in choices if MOTIONS[m] != (-ux, -uy)]
        motion = choices[int(rng.integers(len(choices)))]
        objs[i] = clip_object(rng, o.shape, o.colour, motion, o.box, r=o.r)
    else:
        raise ValueError(f"unknown content error {error!r}")
    return scene.with_objects(ordered(objs))


def add_noise(pixels: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noisy = pixels.astype(np.float32) + rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the two spatial axes of an image (HW3) or clip (THW3)."""
    s = (0, sigma, sigma, 0) if pixels.ndim == 4 else (sigma, sigma, 0)
    out = ndimage.gaussian_filter(pixels.astype(np.float32), sigma=s, mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def flicker(frames: np.ndarray, amount: float) -> np.ndarray:
    out = frames.astype(np.float32)
    out[1::2] *= 1.0 - amount
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def stutter(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hold one frame in place of the next (the clip halts, then jumps)."""
    out = frames.copy()
    if len(out) >= 3:
        i = int(rng.integers(len(out) - 1))
        out[i + 1] = out[i]
    return out


def apply_pixels(pixels: np.ndarray, error: str, rng: np.random.Generator,
                 difficulty: int = 1) -> np.ndarray:
    """``pixels`` (HW3 or THW3 uint8) with one pixel error at the level's strength."""
    lo_hi = STRENGTH[min(max(difficulty, 0), max(STRENGTH))]
    size = pixels.shape[-2]
    if error == "noise":
        return add_noise(pixels, float(rng.uniform(*lo_hi["noise"])), rng)
    if error == "blur":
        return blur(pixels, float(rng.uniform(*lo_hi["blur"])) * size / 84)
    if error == "flicker":
        return flicker(pixels, float(rng.uniform(*lo_hi["flicker"])))
    if error == "stutter":
        return stutter(pixels, rng)
    raise ValueError(f"unknown pixel error {error!r}")
