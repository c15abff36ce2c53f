"""Building the world's judged items: four tasks x two forms at a difficulty level.

An :class:`Item` is one judgment with its pixels in memory: the prompt (caption or
question), the media (candidates for generation, the context for understanding), the
answers, the oracle's label (pairwise) or score (pointwise) and its evidence (what each
image or clip shows). :func:`build_item` is a pure function of (task, form, index,
seed, difficulty, sizes): every item has its own random stream, so items are the same
whatever else is built, in any order or process.

How candidates are made (generation tasks):

- *pairwise*: the better candidate carries a set of *shared* errors (none at level 0),
  the worse one the same plus one more error; a *tie pair* (both get the shared errors
  only) is drawn with the level's tie rate. Candidates are shown in random order.
- *pointwise*: a candidate carries 0-3 distinct errors (fewer at level 0).

Errors are applied content first, then blur, noise, flicker, stutter, so noise is
never blurred away. Labels are the oracle's, not the construction's: a pair is a tie
when the two scores are within :data:`TIE_MARGIN`; ``Item.intended`` keeps the
construction's label so the two can be compared. The oracle scores the rendered
arrays (the clips are encoded losslessly, but in yuv420p, whose colour subsampling
changes them slightly; the evidence agrees with the decoded clips on nearly every item,
see tests/data/test_oracle.py).

Understanding tasks: a clean scene (its evidence is its own description, which is what
the oracle reads from a clean render), a question of a kind the scene supports, and
answers: the correct one, a paraphrase of it, or wrong ones (another value; for
``Describe`` questions, a description with 1-3 wrong attributes). The oracle's
:func:`oracle.score_answer` scores each; pairwise label as above, pointwise score
mapped to the task's scale.

Difficulty levels:

====  ==============================================================================
0     one object; pairs differ by one gross error (a distant colour, another shape or
      place, a missing object, strong noise sigma 35-45, strong blur sigma 1.7-2.0,
      strong flicker, a wrong motion, a held frame); no shared errors; 5% tie pairs;
      understanding pairs: right answer against a plainly wrong one.
1     one object; moderate strengths (noise 18-28, blur 1.3-1.6), half the content
      errors subtle (the nearest colour, the most similar shape); 30% of pairs share
      one error; 7% tie pairs; a third of understanding pairs compare two partly
      wrong descriptions.
2     one or two objects (half each); weak strengths (noise 10-16, blur 0.9-1.2,
      flicker 10-15%), all content errors subtle (two objects swap places, a
      perpendicular motion, the other object's colour as a wrong answer); half of the
      pairs share an error; 6% tie pairs (partial answers tie more often by
      themselves); most understanding pairs are partial.
====  ==============================================================================

Pointwise scales (FACTS.md section 1): image generation 1-5, video generation 1-10
(and the five VideoFeedback dimensions on 1-4), image understanding 0-100 in steps of
25, video understanding 1-5; all integers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from ur.data.records import TASKS, Media, PreferenceRecord, is_generation, task_modality
from ur.data.synthetic import degrade, oracle
from ur.data.synthetic.render import render_clip, render_image
from ur.data.synthetic.scene import (
    COLOUR_NAMES,
    MOTIONS,
    PLACES,
    SHAPES,
    Question,
    Scene,
    answer,
    colour_neighbours,
    find_object,
    make_question,
    question_kinds,
    sample_scene,
)

DIFFICULTIES = (0, 1, 2)
FORMS = ("pairwise", "pointwise")
TIE_MARGIN = 0.04
SCALES: dict[str, tuple[int, int]] = {
    "image_generation": (1, 5),
    "video_generation": (1, 10),
    "image_understanding": (0, 100),
    "video_understanding": (1, 5),
}

_LEVEL = {
    0: {"tie": 0.05, "shared": 0.0, "subtle": 0.0, "two": 0.0, "partial": 0.0,
        "k": (0.35, 0.45, 0.2, 0.0)},
    1: {"tie": 0.07, "shared": 0.3, "subtle": 0.5, "two": 0.0, "partial": 0.33,
        "k": (0.3, 0.35, 0.25, 0.1)},
    2: {"tie": 0.06, "shared": 0.5, "subtle": 1.0, "two": 0.5, "partial": 0.6,
        "k": (0.3, 0.35, 0.25, 0.1)},
}
_PIXEL_ORDER = ("blur", "noise", "flicker", "stutter")
# Errors a tie or shared set may hold: never a missing object, which would leave the
# extra error nothing to change.
_SHAREABLE = ("wrong_colour", "wrong_shape", "wrong_place", "wrong_motion", "noise", "blur",
              "flicker")


@dataclass
class Item:
    """One judged item, pixels in memory (see the module docstring)."""

    task: str
    form: str
    index: int
    id: str
    prompt: str
    scene: Scene
    media: list[np.ndarray]
    responses: tuple[str, ...] = ()
    label: str | None = None
    score: int | None = None
    scale: tuple[int, int] | None = None
    evidence: tuple[str, ...] = ()
    oracle_scores: tuple[float, ...] = ()
    errors: tuple[tuple[str, ...], ...] = ()
    intended: str | None = None
    dims: dict[str, int] | None = None
    kind: str | None = None
    results: tuple = field(default=(), repr=False)

    def record(self, media: tuple[Media, ...], *, source: str = "synthetic") -> PreferenceRecord:
        """The item as a :class:`PreferenceRecord` with the given media references."""
        return PreferenceRecord(
            task=self.task, form=self.form, source=source, id=self.id, prompt=self.prompt,
            media=media, responses=self.responses, label=self.label,
            score=self.score, scale=self.scale, evidence=self.evidence,
            response_scores=self.oracle_scores if self.responses else None)


def item_rng(seed: int, difficulty: int, task: str, form: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, difficulty, TASKS.index(task), FORMS.index(form), index])


def pair_label(a: float, b: float, margin: float = TIE_MARGIN) -> str:
    """``first`` / ``second`` / ``tie`` for two scores (higher is better)."""
    if abs(a - b) <= margin:
        return "tie"
    return "first" if a > b else "second"


def to_scale(score01: float, scale: tuple[int, int], step: int = 1) -> int:
    """An oracle score in [0, 1] as an integer on ``scale`` in multiples of ``step``."""
    lo, hi = scale
    steps = (hi - lo) // step
    return int(lo + step * round(float(np.clip(score01, 0, 1)) * steps))


def understanding_points(task: str, score01: float, scale: tuple[int, int] | None = None) -> int:
    """An understanding answer's oracle score as a pointwise record of ``task`` states it:
    on ``scale`` (default the task's), image understanding in steps of 25."""
    return to_scale(score01, tuple(scale or SCALES[task]), 25 if task == "image_understanding" else 1)


# --------------------------------------------------------------------------- generation

def _errors_for(scene: Scene, rng, count: int, exclude=(), pool=None) -> list[str]:
    """``count`` distinct errors that can change ``scene``, from ``pool`` (default all)."""
    allowed = degrade.CONTENT_ERRORS[scene.kind] + degrade.PIXEL_ERRORS[scene.kind]
    choices = [e for e in (pool or allowed) if e in allowed and e not in exclude
               and degrade.applicable(scene, e)]
    if count <= 0 or not choices:
        return []
    picked = rng.choice(len(choices), size=min(count, len(choices)), replace=False)
    return [choices[int(i)] for i in picked]


def _content(scene: Scene, errors, rng, difficulty: int) -> Scene:
    subtle_p = _LEVEL[difficulty]["subtle"]
    for e in errors:
        if e in degrade.CONTENT_ERRORS[scene.kind]:
            scene = degrade.apply_content(scene, e, rng, subtle=bool(rng.random() < subtle_p))
    return scene


def _realise(shown: Scene, pixel_errors, rng, difficulty: int, image_size: int,
             num_frames: int) -> np.ndarray:
    """Render ``shown`` (content errors already applied), then the pixel errors in order."""
    pixels = (render_image(shown, image_size) if shown.kind == "image"
              else render_clip(shown, image_size, num_frames))
    for e in _PIXEL_ORDER:
        if e in pixel_errors:
            pixels = degrade.apply_pixels(pixels, e, rng, difficulty)
    return pixels


def _score(pixels: np.ndarray, caption: str, kind: str) -> oracle.OracleResult:
    return oracle.score_image(pixels, caption) if kind == "image" else \
        oracle.score_video(pixels, caption)


def videofeedback_dims(result: oracle.OracleResult) -> dict[str, int]:
    """The five VideoFeedback ratings (1-4) from the oracle's parts: visual quality from
    noise and blur, temporal consistency from flicker and stutter, dynamic degree from
    the motion checks, alignment from the alignment, factual consistency from the score."""
    parts = {
        "visual quality": result.visual_quality,
        "temporal consistency": result.temporal_quality,
        "dynamic degree": result.motion_ok,
        "text-to-video alignment": result.alignment,
        "factual consistency": result.score,
    }
    return {k: to_scale(v, (1, 4)) for k, v in parts.items()}


def _generation_item(task, form, index, rng, difficulty, image_size, num_frames) -> Item:
    level = _LEVEL[difficulty]
    kind = "image" if task_modality(task) == "image" else "clip"
    n_obj = 2 if rng.random() < level["two"] else 1
    scene = sample_scene(rng, kind, n_obj)
    caption = scene.caption()
    if form == "pairwise":
        shared = _errors_for(scene, rng, 1, pool=_SHAREABLE) if rng.random() < level["shared"] \
            else []
        if rng.random() < level["tie"]:
            sets, intended = [shared, shared], "tie"
        else:
            extra = _errors_for(scene, rng, 1, exclude=shared)
            sets = [shared, shared + extra]
            intended = "first"
            if rng.random() < 0.5:
                sets, intended = sets[::-1], "second"
        # Shared content errors are applied once, so both candidates show the same mistake.
        base = _content(scene, shared, rng, difficulty)
        shown = [_content(base, [e for e in s if e not in shared], rng, difficulty)
                 for s in sets]
    else:
        k = int(rng.choice(4, p=level["k"]))
        sets, intended = [_errors_for(scene, rng, k)], None
        shown = [_content(scene, sets[0], rng, difficulty)]
    media = [_realise(v, s, rng, difficulty, image_size, num_frames)
             for v, s in zip(shown, sets, strict=True)]
    results = tuple(_score(m, caption, kind) for m in media)
    scores = tuple(r.score for r in results)
    item = Item(task, form, index, f"{task}-{form}-{index:06d}", caption, scene, media,
                evidence=tuple(r.evidence for r in results), oracle_scores=scores,
                errors=tuple(tuple(s) for s in sets), intended=intended, results=results)
    if form == "pairwise":
        item.label = pair_label(*scores)
        extra = set(sets[0]) ^ set(sets[1])
        item.kind = "tie" if intended == "tie" or not extra else extra.pop()
    else:
        item.scale = SCALES[task]
        item.score = to_scale(scores[0], item.scale)
        if task == "video_generation":
            item.dims = videofeedback_dims(results[0])
    return item


# ------------------------------------------------------------------------ understanding

def paraphrase(text: str) -> str:
    """The same answer in other words (a right answer need not echo the reference)."""
    if text.startswith("It is "):
        return "I think it is " + text[len("It is "):]
    if text.startswith("There "):
        return "I count: " + text[0].lower() + text[1:]
    return "There is " + text[0].lower() + text[1:]


def wrong_answer(scene: Scene, q: Question, rng, subtle: bool, errors: int = 1) -> str:
    """A wrong answer to ``q``: another value of the asked attribute (for descriptions,
    ``errors`` attributes changed)."""
    if q.asks == "describe":
        content = degrade.CONTENT_ERRORS[scene.kind]
        wrong = scene
        kinds = [e for e in content if e.startswith("wrong_")]
        for e in rng.choice(kinds, size=min(errors, len(kinds)), replace=False):
            wrong = degrade.apply_content(wrong, str(e), rng, subtle=subtle)
        return answer(wrong, make_question(wrong, "describe"))
    if q.asks == "count":
        n = len(scene.objects)
        return answer(scene.with_objects(scene.objects * 2 if n == 1 else scene.objects[:1]), q)
    obj = find_object(scene, q.about) or scene.objects[0]
    others = [o for o in scene.objects if o is not obj]
    truth = getattr(obj, q.asks)
    values = {"colour": COLOUR_NAMES, "shape": SHAPES, "place": tuple(PLACES),
              "motion": tuple(MOTIONS)}[q.asks]
    if subtle and others and getattr(others[0], q.asks) != truth:
        value = getattr(others[0], q.asks)  # the other object's value: a binding error
    elif subtle and q.asks == "colour":
        value = colour_neighbours(truth)[0]
    else:
        choices = [v for v in values if v != truth]
        value = choices[int(rng.integers(len(choices)))]
    return answer(scene, q, replace(obj, **{q.asks: value}))


def _understanding_item(task, form, index, rng, difficulty, image_size, num_frames) -> Item:
    level = _LEVEL[difficulty]
    kind = "image" if task_modality(task) == "image" else "clip"
    scene = sample_scene(rng, kind, 2 if rng.random() < level["two"] else 1)
    pixels = render_image(scene, image_size) if kind == "image" else \
        render_clip(scene, image_size, num_frames)
    subtle = bool(rng.random() < level["subtle"])
    partial = bool(rng.random() < level["partial"])
    kinds = question_kinds(scene)
    asks = "describe" if partial else kinds[int(rng.integers(len(kinds)))]
    q = make_question(scene, asks, scene.objects[int(rng.integers(len(scene.objects)))])
    right = answer(scene, q)
    if form == "pairwise":
        if rng.random() < level["tie"]:
            pair, intended = [right, paraphrase(right)], "tie"
        elif partial:
            k = int(rng.integers(0, 2))  # 0 vs 1 or 1 vs 2 wrong attributes
            better = right if k == 0 else wrong_answer(scene, q, rng, subtle, k)
            pair, intended = [better, wrong_answer(scene, q, rng, subtle, k + 1)], "first"
        else:
            pair, intended = [right, wrong_answer(scene, q, rng, subtle)], "first"
        if rng.random() < 0.5:
            pair = pair[::-1]
            intended = {"first": "second", "tie": "tie"}[intended]
        responses = tuple(pair)
    else:
        if asks == "describe":
            k = int(rng.choice(4, p=level["k"]))
        else:
            k = int(rng.random() < 0.5)
        responses = (right if k == 0 else wrong_answer(scene, q, rng, subtle, k),)
        intended = None
    scores = tuple(oracle.score_answer(scene, q, r) for r in responses)
    # The context is a clean render, which the oracle reads back as the scene's own
    # description (tests/data/test_oracle.py checks it), so that is the evidence.
    description = scene.caption()
    item = Item(task, form, index, f"{task}-{form}-{index:06d}", q.text, scene, [pixels],
                responses=responses, evidence=(description,), oracle_scores=scores,
                intended=intended)
    if form == "pairwise":
        item.label = pair_label(*scores)
        item.kind = "tie" if intended == "tie" else asks
    else:
        item.scale = SCALES[task]
        item.score = understanding_points(task, scores[0])
    return item


def build_item(task: str, form: str, index: int, *, seed: int = 0, difficulty: int = 1,
               image_size: int = 84, num_frames: int = 4) -> Item:
    """The ``index``-th item of (task, form) in the world of ``seed`` at ``difficulty``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected pairwise or pointwise")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if image_size < 16 or image_size % 2:
        raise ValueError(f"image_size must be even and at least 16, got {image_size}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    rng = item_rng(seed, difficulty, task, form, index)
    make = _generation_item if is_generation(task) else _understanding_item
    return make(task, form, index, rng, difficulty, image_size, num_frames)


GENERATION_KINDS: tuple[str, ...] = tuple(dict.fromkeys(
    degrade.CONTENT_ERRORS["image"] + degrade.CONTENT_ERRORS["clip"]
    + degrade.PIXEL_ERRORS["clip"]))
UNDERSTANDING_KINDS: tuple[str, ...] = ("colour", "shape", "place", "motion", "count",
                                        "describe")
DIFFERENCE_KINDS: tuple[str, ...] = GENERATION_KINDS + UNDERSTANDING_KINDS + ("tie",)
"""What tells a pair's two candidates apart (``Item.kind``): for generation, the one
error the worse candidate has more (``wrong_colour``, ``blur``, ...); for understanding,
what the question asks (``colour``, ``describe``, ...: a ``describe`` pair compares
descriptions with 0-2 wrong attributes); ``tie`` for a pair built as a tie."""

_ITEM_ID = re.compile(r"^(?P<task>[a-z_]+)-(?P<form>pairwise|pointwise)-(?P<index>\d{6,})$")


def item_index(item_id: str) -> tuple[str, str, int] | None:
    """``(task, form, index)`` of a world item's id, or None for any other id."""
    m = _ITEM_ID.match(item_id)
    if m is None or m["task"] not in TASKS:
        return None
    return m["task"], m["form"], int(m["index"])


def difference_kind(item_id: str, *, seed: int = 0, difficulty: int = 1, image_size: int = 84,
                    num_frames: int = 4) -> str | None:
    """The :data:`DIFFERENCE_KINDS` entry of the world's pairwise item ``item_id`` (None
    for a pointwise item or an id that is not the world's). The item is built again,
    which is exact: items are pure functions of their index and the world's settings."""
    parsed = item_index(item_id)
    if parsed is None or parsed[1] != "pairwise":
        return None
    task, form, index = parsed
    return build_item(task, form, index, seed=seed, difficulty=difficulty,
                      image_size=image_size, num_frames=num_frames).kind


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Split ``n`` items by fractions (largest remainder; every split with a positive
    fraction gets at least one item when ``n`` allows)."""
    total = sum(fractions.values())
    raw = {k: n * v / total for k, v in fractions.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: n - sum(counts.values())]:
        counts[k] += 1
    for k, v in fractions.items():
        if v > 0 and counts[k] == 0:
            donor = max(counts, key=counts.get)
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[k] = 1
    return counts
