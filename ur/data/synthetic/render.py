"""Rendering scenes to pixels with numpy: hard-edged flat shapes on a flat background.

Every shape is a *unit template* (a predicate on the unit square) stretched over the
shape's bounding box; the oracle fits the same templates to the blobs it finds, so
what is drawn and what is measured share one definition. No anti-aliasing: edges are
hard, so blur is a degradation the oracle can see, and a clean render has exactly two
colours per object boundary.
"""

from __future__ import annotations

import numpy as np

from ur.data.synthetic.scene import BACKGROUND, COLOURS, Obj, Scene


def unit_template(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v) of the unit square (v down) lie inside ``shape``."""
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "square":
        return (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "triangle":  # apex up, base at the bottom
        return (v <= 1) & (np.abs(u - 0.5) <= v / 2)
    if shape == "diamond":
        return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
    raise ValueError(f"unknown shape {shape!r}")


def shape_box(shape: str, cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    """The bounding box (x0, y0, x1, y1) a shape of half-size ``r`` centred at (cx, cy)
    is drawn in. Squares are drawn a little smaller so their area is close to a circle's;
    the triangle's box is shifted so its centre of mass sits near (cx, cy)."""
    if shape == "square":
        return cx - 0.9 * r, cy - 0.9 * r, cx + 0.9 * r, cy + 0.9 * r
    if shape == "triangle":
        return cx - r, cy - 1.1 * r, cx + r, cy + 0.8 * r
    return cx - r, cy - r, cx + r, cy + r


def object_mask(obj: Obj, height: int, width: int, t: float = 0.0) -> np.ndarray:
    cx, cy = obj.centre_at(t)
    x0, y0, x1, y1 = shape_box(obj.shape, cx * width, cy * height, obj.r * min(height, width))
    mask = np.zeros((height, width), bool)
    # Only pixels whose centres fall inside the box can be inside the shape.
    c0, c1 = max(int(np.floor(x0 - 0.5)), 0), min(int(np.ceil(x1 + 0.5)), width)
    r0, r1 = max(int(np.floor(y0 - 0.5)), 0), min(int(np.ceil(y1 + 0.5)), height)
    if c0 >= c1 or r0 >= r1:
        return mask
    ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
    u = (xs - x0) / max(x1 - x0, 1e-6)
    v = (ys - y0) / max(y1 - y0, 1e-6)
    mask[r0:r1, c0:c1] = unit_template(obj.shape, u, v) & (u >= 0) & (u <= 1) & (v >= 0) & \
        (v <= 1)
    return mask


def render_frame(scene: Scene, size: int, t: float = 0.0) -> np.ndarray:
    """One (size, size, 3) uint8 picture of ``scene`` at clip time ``t`` in [0, 1]."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BACKGROUND
    for obj in scene.objects:
        img[object_mask(obj, size, size, t)] = COLOURS[obj.colour]
    return img


def render_image(scene: Scene, size: int = 84) -> np.ndarray:
    return render_frame(scene, size, 0.0)


def render_clip(scene: Scene, size: int = 84, num_frames: int = 4) -> np.ndarray:
    """(num_frames, size, size, 3) uint8: the objects move linearly from t=0 to t=1."""
    ts = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    return np.stack([render_frame(scene, size, float(t)) for t in ts])
