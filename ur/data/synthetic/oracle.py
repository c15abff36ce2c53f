"""The oracle: scores any image or clip against a caption from pixels alone, describes
what it shows, and scores answers to questions about a scene.

Generation (``score_image``, ``score_video``), per frame:

1. *Input.* Anything array-like is read as RGB in [0, 255]: grey, alpha, channels-first,
   floats in [0, 1] or [0, 255], NaNs; a single image passed as a video is one frame.
   What cannot be read as pixels scores 0 with the evidence ``no image``.
2. *Background and illumination.* The background colour is the median of a 2-pixel
   border; the frame is scaled so its background luminance matches the world's
   (gain clipped to [0.5, 2]), which undoes flicker before colours are read.
3. *Objects.* After a 3x3 box filter (noise falls to a third), foreground is every
   pixel more than :data:`FOREGROUND_DISTANCE` (RGB) from the background; each
   8-connected component of at least 0.4% of the frame is an object (the four largest
   are kept). Around each, a 3x3 median filter removes noise; its colour is the
   palette colour nearest the median of its core (the pixels farthest from the
   background), or none when nothing is within :data:`COLOUR_DISTANCE`; its mask is
   where it is at least half-way from the background to that core colour.
4. *Shape*: the unit template of :mod:`render` with the highest IoU against the mask
   inside its bounding box (none below :data:`MIN_SHAPE_IOU`). *Place*: the place
   nearest the mask's centroid.
5. *Noise*: sigma of the residual (frame minus its box-filtered self) over flat
   background two pixels away from any edge, from its mean absolute value.
   *Blur*: the mean width of the edge band: pixels 20-80% of the way from background
   to object colour, divided by the number of boundary pixels of the mask; counted
   in RGB and in luminance and the smaller kept (codecs subsample colour, noise
   disturbs luminance; only blur widens both).
6. *Clips*: detections are linked into tracks by colour and proximity; a track's
   motion is its net centroid displacement (``still`` under 10% of the frame, else
   the dominant axis); *flicker* is the mean absolute change of background luminance
   between frames; *stutter* is a moving track whose smallest step is under 40% of its
   mean step (a held frame).

Alignment is the fraction of the caption's checks that hold: for every object the
caption names, one check for being there and one for each attribute it names (colour,
shape, place or motion), each caption object matched to the detection that satisfies
most checks; every detection the caption does not name adds one failed check. A
caption outside the grammar (no colour and no shape word) gives alignment 0.5.

Quality multiplies factors in (0, 1], each ``1 / (1 + (max(0, x - free) / s)^2)``:
noise sigma (free 1, s = 20 grey levels), blur band width (free 1.4 px, which codecs
stay under; s = 2 px) and flicker (free 2, s = 40 grey levels); a stutter costs
``0.5 + 0.5 * ratio / 0.4``. The score is ``alignment * (0.4 + 0.6 * quality)``:
nothing drawn scores 0 whatever its quality, and a perfect match loses up to 60% for
poor quality. A defect is named in the evidence when its factor is below 0.97.

Evidence is what the picture shows, in the caption's own grammar, then the defects
that cost quality: ``a blue circle on the left, noisy``; ``a red square moving up,
blurry, flickering``; ``no shape``. A colour or shape that cannot be named is left out
(``a circle on the left``, ``a red shape at the top``).

Understanding (``score_answer``): the question is parsed with the world's grammar, the
answer's vocabulary words are compared with the scene: 1 for the right value, ``1/k``
when the right value is among ``k`` named, else 0; a description scores the fraction
of right attributes over the scene's objects (extra objects count as wrong). Negation
is not understood. Answers are read with :mod:`.language`, which also holds
:func:`~ur.data.synthetic.language.answer_claims` (importable from here too).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ur.data.synthetic.language import MAX_NAMED, MAX_OBJECTS, count_in, mentioned
from ur.data.synthetic.language import answer_claims as answer_claims  # re-exported
from ur.data.synthetic.render import unit_template
from ur.data.synthetic.scene import (
    BACKGROUND,
    COLOUR_NAMES,
    COLOURS,
    MOTION_PHRASES,
    PLACE_PHRASES,
    SHAPES,
    Element,
    Obj,
    Question,
    Scene,
    article,
    find_object,
    motion_of,
    nearest_place,
    ordered,
    parse_question,
    parse_text,
)

FOREGROUND_DISTANCE = 90.0
COLOUR_DISTANCE = 80.0
MIN_SHAPE_IOU = 0.6
MIN_AREA_FRACTION = 0.004
NOISE_FLOOR, NOISE_SCALE = 1.0, 20.0
BLUR_FREE, BLUR_SCALE = 1.4, 2.0
FLICKER_FREE, FLICKER_SCALE = 2.0, 40.0
STUTTER_RATIO = 0.4
STILL_BELOW = 0.1
# A defect is named in the evidence when its quality factor falls below this.
DEFECT_BELOW = 0.97

_PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_BG_LUMA = float(np.dot(BACKGROUND, _LUMA))


@dataclass(frozen=True)
class Detection:
    """One object found in a picture (or one track in a clip). Coordinates are
    normalised centroids; ``motion`` and ``dx, dy`` are set for tracks only."""

    colour: str | None
    shape: str | None
    place: str
    x: float
    y: float
    area: float
    shape_iou: float
    motion: str | None = None
    dx: float = 0.0
    dy: float = 0.0

    def phrase(self, kind: str) -> str:
        words = [w for w in (self.colour, self.shape or "shape") if w]
        where = (MOTION_PHRASES.get(self.motion, "") if kind == "clip"
                 else PLACE_PHRASES.get(self.place, ""))
        return " ".join([article(words[0]), *words, where]).strip()


@dataclass(frozen=True)
class OracleResult:
    """``score = alignment * (0.4 + 0.6 * quality)``, all in [0, 1]. ``checks`` lists
    each caption check with whether it held; ``findings`` the raw measurements."""

    score: float
    alignment: float
    quality: float
    evidence: str
    objects: tuple[Detection, ...] = ()
    defects: tuple[str, ...] = ()
    checks: tuple[tuple[str, bool], ...] = ()
    findings: dict = field(default_factory=dict)

    @property
    def visual_quality(self) -> float:
        """The per-frame part of quality: noise and blur."""
        return self.findings.get("noise_quality", 1.0) * self.findings.get("blur_quality", 1.0)

    @property
    def temporal_quality(self) -> float:
        """The between-frames part of quality: flicker and stutter (1 for images)."""
        return (self.findings.get("flicker_quality", 1.0)
                * self.findings.get("stutter_quality", 1.0))

    @property
    def motion_ok(self) -> float:
        """Fraction of the caption's motion checks that held (1 when none)."""
        m = [ok for name, ok in self.checks if name.startswith("motion")]
        return float(np.mean(m)) if m else 1.0


# ------------------------------------------------------------------------------ input

def _as_pixels(x) -> np.ndarray | None:
    """Any array-like as float32 (..., H, W, 3) in [0, 255], or None."""
    try:
        raw = np.asarray(x)
        if raw.dtype.kind not in "biuf" or raw.size == 0:
            return None
        a = raw.astype(np.float32)
    except (TypeError, ValueError):
        return None
    if a.ndim < 2:
        return None
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] not in (1, 3, 4) and a.shape[-3] in (1, 3, 4):
        a = np.moveaxis(a, -3, -1)  # channels-first
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]
    elif a.shape[-1] != 3:
        a = np.repeat(a[..., None], 3, axis=-1)  # a stack of grey frames
    if raw.dtype == np.uint8:
        return a
    a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    if raw.dtype.kind == "f" and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(a, 0.0, 255.0)


def as_image(image) -> np.ndarray | None:
    a = _as_pixels(image)
    if a is None:
        return None
    while a.ndim > 3:
        a = a[0]
    return a


def as_frames(frames) -> np.ndarray | None:
    a = _as_pixels(frames)
    if a is None:
        return None
    if a.ndim == 3:
        a = a[None]
    while a.ndim > 4:
        a = a.reshape(-1, *a.shape[-3:])
    return a


# --------------------------------------------------------------------------- one frame

@dataclass(frozen=True)
class FrameAnalysis:
    objects: tuple[Detection, ...]
    noise: float | None      # estimated noise sigma, grey levels
    blur: float | None       # edge band width, pixels
    brightness: float        # background luminance before correction


@functools.lru_cache(maxsize=4096)
def _templates(h: int, w: int) -> np.ndarray:
    """(3 * len(SHAPES), h + 4, w + 4) masks: every shape stretched over a box of h x w
    pixels padded by 2, and over the boxes 1 and 2 pixels larger on every side."""
    gy, gx = np.mgrid[0:h + 4, 0:w + 4].astype(np.float32) + 0.5
    out = []
    for grow in (0, 1, 2):
        lo = 2 - grow
        u, v = (gx - lo) / (w + 2 * grow), (gy - lo) / (h + 2 * grow)
        inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
        out.extend(unit_template(shape, u, v) & inside for shape in SHAPES)
    return np.stack(out)


def _fit_shape(mask: np.ndarray) -> tuple[str | None, float]:
    """The template with the best IoU against ``mask``. Each template is tried in the
    mask's bounding box and in boxes 1 and 2 pixels larger on every side: blur rounds
    corners off, so a blurred diamond's corners sit inside the box its sides span."""
    ys, xs = np.nonzero(mask)
    box = np.pad(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1], 2)
    t = _templates(box.shape[0] - 4, box.shape[1] - 4)
    inter = np.count_nonzero(t & box, axis=(1, 2))
    union = np.count_nonzero(t | box, axis=(1, 2))
    iou = inter / np.maximum(union, 1)
    k = int(np.argmax(iou))
    best, best_iou = SHAPES[k % len(SHAPES)], float(iou[k])
    return (best if best_iou >= MIN_SHAPE_IOU else None), best_iou


def _object(a: np.ndarray, bg: np.ndarray, labels: np.ndarray, lab: int, sl, dist: np.ndarray,
            min_area: int):
    """Measure one connected component: (Detection, edge band pixels, boundary pixels),
    or None when too little of it is solid."""
    h, w = labels.shape
    pad = 3
    ys = slice(max(sl[0].start - pad, 0), min(sl[0].stop + pad, h))
    xs = slice(max(sl[1].start - pad, 0), min(sl[1].stop + pad, w))
    lab_crop = labels[ys, xs]
    comp = lab_crop == lab
    # The median filter runs on the object's crop only: it is the costly step.
    crop = a[ys, xs]
    med = ndimage.median_filter(crop, size=(3, 3, 1), mode="nearest") if min(crop.shape[:2]) >= 3 \
        else crop
    d = dist[ys, xs]
    dc = d[comp]
    core = comp & (d >= np.partition(dc, int(0.7 * (dc.size - 1)))[int(0.7 * (dc.size - 1))])
    core_rgb = med[core].mean(axis=0)
    pd = np.linalg.norm(_PALETTE - core_rgb, axis=1)
    colour = COLOUR_NAMES[int(pd.argmin())] if pd.min() <= COLOUR_DISTANCE else None
    vec = core_rgb - bg
    tt = ((med - bg) @ vec) / max(float(vec @ vec), 1e-6)
    near = comp | (lab_crop == 0)  # the object and the background around it, no neighbour
    mask = (tt >= 0.5) & near
    if np.count_nonzero(mask) < max(min_area // 2, 2):
        return None
    shape, iou = _fit_shape(mask)
    my, mx = np.nonzero(mask)
    cx, cy = (mx.mean() + xs.start + 0.5) / w, (my.mean() + ys.start + 0.5) / h
    det = Detection(colour, shape, nearest_place(cx, cy), float(cx), float(cy),
                    float(np.count_nonzero(mask)) / (h * w), iou)
    band = np.count_nonzero((tt > 0.2) & (tt < 0.8) & near)
    # Chroma subsampling (video codecs, JPEG) smears colour but not luminance across an
    # edge, while noise disturbs luminance most on low-contrast colours: count the band
    # both ways and keep the smaller, so only blur, which widens both, is measured.
    luma_contrast = float((core_rgb - bg) @ _LUMA)
    if abs(luma_contrast) > 20:
        tl = ((med - bg) @ _LUMA) / luma_contrast
        band = min(band, np.count_nonzero((tl > 0.2) & (tl < 0.8) & near))
    boundary = np.count_nonzero(mask & ~ndimage.binary_erosion(mask))
    return det, band, boundary


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 mean over the last two axes, edges repeated."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    r = p[..., :-2] + p[..., 1:-1] + p[..., 2:]
    return (r[..., :-2, :] + r[..., 1:-1, :] + r[..., 2:, :]) * np.float32(1 / 9)


def analyse_frames(frames: np.ndarray) -> list[FrameAnalysis]:
    """:func:`analyse_frame` for every frame of a (T, H, W, 3) float stack, with the
    whole-frame steps done for all frames at once."""
    t, h, w = frames.shape[:3]
    k = max(1, min(2, min(h, w) // 2))
    border = np.concatenate([frames[:, :k].reshape(t, -1, 3), frames[:, -k:].reshape(t, -1, 3),
                             frames[:, :, :k].reshape(t, -1, 3),
                             frames[:, :, -k:].reshape(t, -1, 3)], axis=1)
    bg_raw = np.median(border, axis=1)
    brightness = bg_raw @ _LUMA
    gain = np.clip(_BG_LUMA / np.maximum(brightness, 1.0), 0.5, 2.0).astype(np.float32)
    a = np.minimum(frames * gain[:, None, None, None], 255.0)
    bg = np.minimum(bg_raw * gain[:, None], 255.0).astype(np.float32)
    # Whole-frame work runs channels-first, where numpy is fastest. A 3x3 box filter is
    # enough to find objects (noise falls to a third).
    chw = np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    smooth = _box3(chw)
    diff = smooth - bg[:, :, None, None]
    dist = np.sqrt(np.einsum("tchw,tchw->thw", diff, diff))
    in_frame = np.zeros((3, 3, 3), bool)
    in_frame[1] = True  # connect pixels within a frame, never across frames
    labels, n = ndimage.label(dist > FOREGROUND_DISTANCE, structure=in_frame)
    # Noise: the residual against the box filter over flat background two pixels away
    # from any edge. For Gaussian noise its mean absolute value is 0.943 * sqrt(2/pi)
    # sigma; clipping at 255 on the light background makes strong noise read lower,
    # which keeps the order.
    flat = ndimage.minimum_filter(dist < FOREGROUND_DISTANCE / 3, size=(1, 5, 5))
    n_flat = flat.sum(axis=(1, 2))
    # A frame with no flat background at all (not the world's kind of picture) is
    # measured everywhere, so texture and noise count as noise.
    flat[n_flat < 20] = True
    n_flat = flat.sum(axis=(1, 2))
    resid = (np.abs(chw - smooth).sum(axis=1) * flat).sum(axis=(1, 2))
    noise_sigma = resid / np.maximum(3 * n_flat, 1) * (np.sqrt(np.pi / 2) / 0.943)
    min_area = max(4, int(MIN_AREA_FRACTION * h * w))
    per_frame: list[list[int]] = [[] for _ in range(t)]
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        slices = ndimage.find_objects(labels)
        for i in np.argsort(-areas, kind="stable"):
            if areas[i] < min_area:
                break
            per_frame[slices[i][0].start].append(int(i))
    out = []
    for f in range(t):
        detections, bands, perims = [], 0, 0
        for i in per_frame[f][:MAX_OBJECTS]:
            found = _object(a[f], bg[f], labels[f], i + 1, slices[i][1:], dist[f], min_area)
            if found is not None:
                detections.append(found[0])
                bands += found[1]
                perims += found[2]
        noise = float(noise_sigma[f])
        out.append(FrameAnalysis(tuple(detections), noise, float(bands / perims) if perims >= 8 else None,
                                 float(brightness[f])))
    return out


def analyse_frame(image) -> FrameAnalysis:
    """Objects, noise, blur and brightness of one picture (see the module docstring)."""
    a = as_image(image)
    if a is None:
        return FrameAnalysis((), None, None, 0.0)
    return analyse_frames(a[None])[0]


# ---------------------------------------------------------------------------- quality

def _factor(x: float | None, scale: float, free: float = 0.0) -> float:
    if x is None:
        return 1.0
    return 1.0 / (1.0 + (max(0.0, x - free) / scale) ** 2)


def _spatial_quality(noise: float | None, blur: float | None) -> dict[str, float]:
    return {"noise": _factor(noise, NOISE_SCALE, NOISE_FLOOR),
            "blur": _factor(blur, BLUR_SCALE, BLUR_FREE)}


_DEFECT_WORDS = {"noise": "noisy", "blur": "blurry", "flicker": "flickering",
                 "stutter": "stuttering"}


def _defects(factors: dict[str, float]) -> tuple[str, ...]:
    return tuple(_DEFECT_WORDS[k] for k in _DEFECT_WORDS if factors.get(k, 1.0) < DEFECT_BELOW)


# -------------------------------------------------------------------------- alignment

def _checks_for(element: Element, det: Detection | None, kind: str) -> list[tuple[str, bool]]:
    out = [("present", det is not None)]
    for name, want in element.attributes().items():
        if name == "place" and kind == "clip":
            continue  # clips are judged on motion, not on where they start
        if name == "motion" and kind == "image":
            continue
        got = None if det is None else getattr(det, name)
        out.append((f"{name} {want}", got == want))
    return out


def _align(caption: str, detections: tuple[Detection, ...], kind: str
           ) -> tuple[float, tuple[tuple[str, bool], ...]]:
    # Both sides are capped so the matching (a search over permutations) stays small.
    elements = parse_text(caption)[:MAX_OBJECTS]
    if not elements:
        return 0.5, ()
    dets = sorted(detections, key=lambda d: -d.area)[:MAX_OBJECTS]
    best, best_checks = -1.0, []
    slots = dets + [None] * len(elements)
    matched = 0
    for perm in itertools.permutations(range(len(slots)), len(elements)):
        used = [slots[i] for i in perm]
        checks = [c for e, d in zip(elements, used, strict=True) for c in _checks_for(e, d, kind)]
        held = sum(ok for _, ok in checks)
        if held > best:
            best, best_checks = held, checks
            matched = sum(d is not None for d in used)
    extra = len(dets) - matched
    best_checks = best_checks + [("extra object", False)] * extra
    return sum(ok for _, ok in best_checks) / len(best_checks), tuple(best_checks)


def _result(detections, factors: dict[str, float], caption: str, kind: str,
            findings: dict) -> OracleResult:
    alignment, checks = _align(caption, detections, kind)
    quality = float(np.prod(list(factors.values())))
    defects = _defects(factors)
    text = " and ".join(d.phrase(kind) for d in ordered(detections)) or "no shape"
    evidence = ", ".join((text, *defects))
    score = alignment * (0.4 + 0.6 * quality)
    findings = dict(findings, **{f"{k}_quality": v for k, v in factors.items()})
    return OracleResult(float(score), float(alignment), quality, evidence,
                        tuple(ordered(detections)), defects, checks, findings)


def _unreadable(caption: str) -> OracleResult:
    return OracleResult(0.0, 0.0, 0.0, "no image", findings={"error": "not pixels"})


def score_image(image, caption: str) -> OracleResult:
    """Score one picture (H, W, 3) against a caption; never raises on odd pixels."""
    a = as_image(image)
    if a is None:
        return _unreadable(caption)
    fa = analyse_frame(a)
    factors = _spatial_quality(fa.noise, fa.blur)
    return _result(fa.objects, factors, caption, "image",
                   {"noise_sigma": fa.noise, "blur_width": fa.blur})


# ------------------------------------------------------------------------------ clips

def _tracks(per_frame: list[tuple[Detection, ...]], num_frames: int) -> list[list]:
    """Link detections over frames: same colour (or both unnamed), nearest, within
    35% of the frame. Each track is a list of (frame index, Detection)."""
    tracks: list[list] = []
    for t, dets in enumerate(per_frame):
        taken = set()
        for d in sorted(dets, key=lambda d: -d.area):
            best, best_dist = None, 0.35
            for k, tr in enumerate(tracks):
                last_t, last = tr[-1]
                if k in taken or last_t == t or last.colour != d.colour:
                    continue
                dist = ((last.x - d.x) ** 2 + (last.y - d.y) ** 2) ** 0.5
                if dist < best_dist:
                    best, best_dist = k, dist
            if best is None:
                tracks.append([(t, d)])
                taken.add(len(tracks) - 1)
            else:
                tracks[best].append((t, d))
                taken.add(best)
    return [tr for tr in tracks if len(tr) >= max(1, num_frames / 2)]


def _mode(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return max(sorted(set(vals), key=str), key=vals.count)


def _track_detection(track) -> tuple[Detection, float | None]:
    """A track as one Detection with its motion, and its step ratio (min/mean step)."""
    dets = [d for _, d in track]
    first, last = dets[0], dets[-1]
    dx, dy = last.x - first.x, last.y - first.y
    steps = [((b.x - a.x) ** 2 + (b.y - a.y) ** 2) ** 0.5 / (tb - ta)
             for (ta, a), (tb, b) in zip(track, track[1:], strict=False)]
    ratio = None
    if len(steps) >= 2 and np.mean(steps) > 0.03:
        ratio = float(min(steps) / np.mean(steps))
    det = Detection(_mode(d.colour for d in dets), _mode(d.shape for d in dets), first.place,
                    first.x, first.y, float(np.mean([d.area for d in dets])),
                    float(np.mean([d.shape_iou for d in dets])),
                    motion_of(dx, dy, STILL_BELOW), float(dx), float(dy))
    return det, ratio


def score_video(frames, caption: str) -> OracleResult:
    """Score a clip (T, H, W, 3) against a caption; never raises on odd pixels."""
    a = as_frames(frames)
    if a is None:
        return _unreadable(caption)
    analyses = analyse_frames(a)
    tracks = [_track_detection(tr) for tr in _tracks([fa.objects for fa in analyses], len(a))]
    detections = tuple(d for d, _ in tracks)
    ratios = [r for _, r in tracks if r is not None]
    noise = [fa.noise for fa in analyses if fa.noise is not None]
    blur = [fa.blur for fa in analyses if fa.blur is not None]
    bright = [fa.brightness for fa in analyses]
    flick = float(np.mean(np.abs(np.diff(bright)))) if len(bright) > 1 else 0.0
    factors = _spatial_quality(float(np.median(noise)) if noise else None,
                               float(np.median(blur)) if blur else None)
    factors["flicker"] = _factor(flick, FLICKER_SCALE, FLICKER_FREE)
    worst = min(ratios) if ratios else 1.0
    factors["stutter"] = 1.0 if worst >= STUTTER_RATIO else 0.5 + 0.5 * worst / STUTTER_RATIO
    return _result(detections, factors, caption, "clip",
                   {"noise_sigma": float(np.median(noise)) if noise else None,
                    "blur_width": float(np.median(blur)) if blur else None,
                    "flicker": flick, "step_ratio": worst})


def describe_image(image) -> str:
    """What a picture shows, as the oracle states it (its evidence)."""
    return score_image(image, "").evidence


def describe_video(frames) -> str:
    return score_video(frames, "").evidence


# ----------------------------------------------------------------------- understanding

def _describe_score(scene: Scene, text: str) -> float:
    named = parse_text(text)[:MAX_NAMED]
    truth = scene.objects[:MAX_OBJECTS]
    if not named:
        return 0.0 if truth else 1.0
    spatial = "place" if scene.kind == "image" else "motion"
    best = 0
    for perm in itertools.permutations(range(max(len(named), len(truth))), len(truth)):
        held = 0
        for o, j in zip(truth, perm, strict=True):
            if j < len(named):
                e = named[j]
                held += (e.colour == o.colour) + (e.shape == o.shape) + \
                    (getattr(e, spatial) == getattr(o, spatial))
        best = max(best, held)
    return best / (3 * max(len(truth), len(named)))


def score_answer(scene: Scene, question: str | Question, answer: str) -> float:
    """How right ``answer`` is about ``scene``, in [0, 1] (see the module docstring)."""
    q = question if isinstance(question, Question) else parse_question(question)
    answer = answer or ""
    if q.asks == "count":
        return float(count_in(answer) == len(scene.objects))
    if q.asks == "describe":
        return float(_describe_score(scene, answer))
    obj = find_object(scene, q.about)
    if obj is None:
        return float(bool(re.search(r"\b(no|none|nothing|not)\b", answer.lower())))
    said = mentioned(q.asks, answer)
    truth = getattr(obj, q.asks)
    return 1.0 / len(said) if truth in said else 0.0


# --------------------------------------------------------------- answers from evidence


def scene_of(evidence: str, kind: str) -> Scene:
    """The scene a description in the world's grammar names (``kind`` ``image`` or
    ``clip``): each object with its colour, shape and place (images) or motion (clips).
    Positions are not described, so objects sit at the centre; the oracle's answer
    scoring reads names only."""
    if kind not in ("image", "clip"):
        raise ValueError(f"kind is image or clip, got {kind!r}")
    objects = tuple(
        Obj(shape=e.shape, colour=e.colour, place=e.place if kind == "image" else None,
            x=0.5, y=0.5, r=0.12, motion=e.motion if kind == "clip" else None)
        for e in parse_text(evidence))
    return Scene(objects, kind)


def evidence_scene(question) -> Scene:
    """The scene ``question`` (anything with ``task``, ``prompt`` and ``evidence``) is
    about, from its evidence; ValueError without evidence."""
    if not getattr(question, "evidence", None):
        raise ValueError(f"question {getattr(question, 'id', '?')!r} ({question.prompt!r}) "
                         "carries no evidence: the oracle scores answers against the scene "
                         "the evidence describes, which only synthetic-world questions have")
    return scene_of(question.evidence[0], "image" if question.task == "image_understanding"
                    else "clip")


def oracle_score(question, answer: str) -> float:
    """The oracle's score in [0, 1] of ``answer`` to ``question`` (a :class:`Question`,
    or anything with its ``task``, ``prompt`` and ``evidence``); ValueError without
    evidence."""
    return float(score_answer(evidence_scene(question), question.prompt, answer))


def oracle_accuracy(questions: Sequence, answers: Sequence[str]) -> float:
    """The mean oracle score of one answer per question (see the module docstring:
    right answers count 1, hedges and partly right descriptions partly, wrong ones 0)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if not questions:
        raise ValueError("oracle accuracy needs at least one question")
    return sum(oracle_score(q, a) for q, a in zip(questions, answers, strict=True)) / len(questions)


# ------------------------------------------------------------------ generated samples

def check_rates(results: Sequence[OracleResult]) -> dict[str, float]:
    """How often each kind of caption check held over ``results``: ``present``,
    ``colour``, ``shape``, ``place`` and ``motion`` (the kinds that occur)."""
    held: dict[str, list[bool]] = {}
    for r in results:
        for name, ok in r.checks:
            held.setdefault(name.split()[0], []).append(ok)
    return {k: float(np.mean(v)) for k, v in sorted(held.items())}


def score_samples(samples, captions: Sequence[str], kind: str) -> dict:
    """The oracle's verdict on generated ``samples`` (uint8 images (N, H, W, 3) or clips
    (N, F, H, W, 3)), sample i drawn for ``captions[i]``: the mean ``alignment``,
    ``quality`` and ``score``, the per-sample lists (``per_sample``) and the check rates
    (``checks``)."""
    if len(samples) != len(captions):
        raise ValueError(f"{len(samples)} samples for {len(captions)} captions")
    score = score_image if kind == "image" else score_video
    results = [score(s, c) for s, c in zip(samples, captions, strict=True)]
    per = {"alignment": [r.alignment for r in results], "quality": [r.quality for r in results],
           "score": [r.score for r in results]}
    return {**{k: float(np.mean(v)) if v else 0.0 for k, v in per.items()},
            "per_sample": per, "checks": check_rates(results)}
