"""The synthetic world's vocabulary, scenes, captions and questions.

A scene is one or two flat-coloured shapes on a plain light background: a still image
or a short clip in which each shape moves in a straight line (or stands still). All
geometry is in normalised coordinates (x right, y down, both in [0, 1]) so a scene
renders at any size.

The grammar is deliberately small and regular, because the oracle parses it back and a
tiny tokenizer has to say it:

- image caption: ``a <colour> <shape> <place>`` (``on the left``, ``on the right``, ``at
  the top``, ``at the bottom``, ``in the center``), objects joined by ``and``;
- clip caption: ``a <colour> <shape> <motion>`` (``moving left/right/up/down``,
  ``standing still``);
- objects are always listed in palette order of their colour (two objects of a scene
  never share a colour), so a caption and the oracle's description of a clean render
  are the same string;
- questions: ``What colour is the shape?``, ``What shape is shown?``, ``Where is the
  circle?``, ``Which way does the square move?``, ``How many shapes are there?``,
  ``Describe the image.`` (and variants naming one object of a two-object scene), with
  short answers ``It is red.``, ``It is a circle.``, ``It is on the left.``, ``It is
  moving right.``, ``There are two shapes.``, ``A red circle on the left.``.

Places are the five cells of the cross of a 3x3 grid, so at 84 px each place falls in
one of the 3x3 merged visual tokens of a Qwen2-VL-style encoder (MEASURED.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

# Well separated in RGB (every pair >= ~65 apart) and far from the background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 60, 190),
    "orange": (240, 125, 20),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUND: tuple[int, int, int] = (240, 240, 240)

# Centres of the five places, (x, y).
PLACES: dict[str, tuple[float, float]] = {
    "left": (0.18, 0.5),
    "right": (0.82, 0.5),
    "top": (0.5, 0.18),
    "bottom": (0.5, 0.82),
    "center": (0.5, 0.5),
}
PLACE_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

# Unit direction of each motion, (dx, dy).
MOTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
MOTION_PHRASES: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "still": "standing still",
}

NUMBER_WORDS: tuple[str, ...] = ("no", "one", "two", "three", "four")


def colour_neighbours(name: str) -> tuple[str, ...]:
    """The other colours ordered from nearest to farthest in RGB (closest first)."""
    c = np.array(COLOURS[name], float)
    others = [n for n in COLOUR_NAMES if n != name]
    return tuple(sorted(others, key=lambda n: float(np.linalg.norm(np.array(COLOURS[n]) - c))))


# The shape each shape is most easily mistaken for, used for subtle wrong-shape errors.
SHAPE_NEIGHBOUR: dict[str, str] = {
    "circle": "square", "square": "circle", "triangle": "diamond", "diamond": "triangle",
}


@dataclass(frozen=True)
class Obj:
    """One shape. ``x, y`` is its centre at the first frame; ``r`` its half-size; for a
    clip, ``dx, dy`` is its displacement from the first frame to the last and ``box``
    the part of the frame its path keeps to."""

    shape: str
    colour: str
    place: str
    x: float
    y: float
    r: float
    motion: str | None = None
    dx: float = 0.0
    dy: float = 0.0
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    def phrase(self, kind: str) -> str:
        where = MOTION_PHRASES[self.motion] if kind == "clip" else PLACE_PHRASES[self.place]
        return f"{article(self.colour)} {self.colour} {self.shape} {where}"

    def centre_at(self, t: float) -> tuple[float, float]:
        """Centre at clip time ``t`` in [0, 1]."""
        return self.x + t * self.dx, self.y + t * self.dy


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def ordered(objects) -> tuple:
    """Objects in the world's canonical text order: palette order of colour, then shape.
    A detection in a generated picture may lack a colour or a shape (None); it sorts
    after every named one."""
    return tuple(sorted(objects, key=lambda o: (COLOUR_NAMES.index(o.colour)
                                                if o.colour in COLOURS else 99,
                                                o.shape is None, o.shape or "", o.x, o.y)))


@dataclass(frozen=True)
class Scene:
    """What a picture or clip should show: ``kind`` is ``image`` or ``clip``."""

    objects: tuple[Obj, ...]
    kind: str = "image"

    def caption(self) -> str:
        return describe_objects(self.objects, self.kind)

    def with_objects(self, objects) -> Scene:
        return replace(self, objects=tuple(objects))


def describe_objects(objects, kind: str) -> str:
    """``a red circle on the left and a blue square at the top`` (or ``no shape``)."""
    objs = ordered(objects)
    if not objs:
        return "no shape"
    return " and ".join(o.phrase(kind) for o in objs)


# ---------------------------------------------------------------------------- sampling

def object_radius(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.11, 0.135))


def place_object(rng: np.random.Generator, shape: str, colour: str, place: str,
                 crowded: bool = False) -> Obj:
    """An object at ``place``, jittered; ``crowded`` (several objects) keeps it smaller
    and closer to the place's centre so neighbours never touch."""
    cx, cy = PLACES[place]
    jitter = 0.025 if crowded else 0.03
    r = float(rng.uniform(0.1, 0.12)) if crowded else object_radius(rng)
    return Obj(shape, colour, place, cx + float(rng.uniform(-jitter, jitter)),
               cy + float(rng.uniform(-jitter, jitter)), r)


def sample_image_scene(rng: np.random.Generator, num_objects: int = 1) -> Scene:
    colours = rng.choice(len(COLOUR_NAMES), size=num_objects, replace=False)
    shapes = rng.choice(len(SHAPES), size=num_objects, replace=False)
    places = rng.choice(len(PLACES), size=num_objects, replace=False)
    objs = [place_object(rng, SHAPES[s], COLOUR_NAMES[c], list(PLACES)[p], num_objects > 1)
            for c, s, p in zip(colours, shapes, places, strict=True)]
    return Scene(ordered(objs), "image")


def clip_object(rng: np.random.Generator, shape: str, colour: str, motion: str,
                box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
                r: float | None = None) -> Obj:
    """An object moving in a straight line inside ``box`` = (x0, y0, x1, y1)."""
    r = object_radius(rng) if r is None else r
    x0, y0, x1, y1 = box
    ux, uy = MOTIONS[motion]
    room_x, room_y = (x1 - x0) - 2 * r - 0.02, (y1 - y0) - 2 * r - 0.02
    if motion == "still":
        travel = 0.0
    else:
        room = room_x if ux else room_y
        travel = float(min(room, rng.uniform(0.4, 0.5)))
    tx, ty = abs(ux) * travel, abs(uy) * travel
    lo_x, lo_y = x0 + r + 0.01, y0 + r + 0.01
    sx = float(rng.uniform(lo_x, max(lo_x, x1 - r - 0.01 - tx)))
    sy = float(rng.uniform(lo_y, max(lo_y, y1 - r - 0.01 - ty)))
    if ux < 0:
        sx += tx  # start on the far side so the path stays inside the box
    if uy < 0:
        sy += ty
    dx, dy = ux * travel, uy * travel
    return Obj(shape, colour, nearest_place(sx, sy), sx, sy, r, motion, dx, dy, box)


def sample_clip_scene(rng: np.random.Generator, num_objects: int = 1) -> Scene:
    colours = rng.choice(len(COLOUR_NAMES), size=num_objects, replace=False)
    shapes = rng.choice(len(SHAPES), size=num_objects, replace=False)
    motions = list(MOTIONS)
    if num_objects == 1:
        boxes = [(0.0, 0.0, 1.0, 1.0)]
    else:
        # Two objects keep to their own half (side by side or stacked) so paths never cross.
        boxes = ([(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)] if rng.random() < 0.5
                 else [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)])
    objs = []
    for c, s, box in zip(colours, shapes, boxes, strict=True):
        shape = SHAPES[s]
        motion = motions[int(rng.integers(len(motions)))]
        objs.append(clip_object(rng, shape, COLOUR_NAMES[c], motion, box,
                                r=float(rng.uniform(0.11, 0.13)) if num_objects > 1 else None))
    return Scene(ordered(objs), "clip")


def sample_scene(rng: np.random.Generator, kind: str, num_objects: int = 1) -> Scene:
    """A random scene of ``num_objects`` objects (images: 1-4, clips: 1-2) of distinct
    colours and shapes, at distinct places."""
    limit = 4 if kind == "image" else 2
    if not 1 <= num_objects <= limit:
        raise ValueError(f"a {kind} scene holds 1 to {limit} objects, got {num_objects}")
    if kind == "image":
        return sample_image_scene(rng, num_objects)
    if kind == "clip":
        return sample_clip_scene(rng, num_objects)
    raise ValueError(f"scene kind must be image or clip, got {kind!r}")


def nearest_place(x: float, y: float) -> str:
    return min(PLACES, key=lambda p: (PLACES[p][0] - x) ** 2 + (PLACES[p][1] - y) ** 2)


def motion_of(dx: float, dy: float, still_below: float = 0.1) -> str:
    """The motion word for a displacement (normalised units)."""
    if (dx * dx + dy * dy) ** 0.5 < still_below:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


# --------------------------------------------------------------------- caption parsing

_COLOUR_RE = "|".join(COLOUR_NAMES)
_SHAPE_RE = "|".join(SHAPES)
_PLACE_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom",
                "center": "center", "centre": "center", "middle": "center"}
_MOTION_RE = re.compile(r"\b(?:mov(?:ing|es?)\s+(left|right|up|down)|"
                        r"(still|static|stationary|not moving|does not move|stays?))\b")


@dataclass(frozen=True)
class Element:
    """One object as a text names it; any attribute may be missing (None)."""

    colour: str | None = None
    shape: str | None = None
    place: str | None = None
    motion: str | None = None

    def attributes(self) -> dict[str, str]:
        return {k: v for k, v in (("colour", self.colour), ("shape", self.shape),
                                  ("place", self.place), ("motion", self.motion)) if v}


def _words(pattern: str, text: str) -> list[str]:
    return re.findall(rf"\b({pattern})s?\b", text)


def parse_place(text: str) -> str | None:
    m = re.search(r"\b(left|right|top|bottom|center|centre|middle)\b", text)
    return _PLACE_WORDS[m.group(1)] if m else None


def parse_motion(text: str) -> str | None:
    m = _MOTION_RE.search(text)
    if m is None:
        return None
    return m.group(1) or "still"


def parse_text(text: str) -> tuple[Element, ...]:
    """The objects a caption, an answer or a description names, leniently: each part
    between ``and`` / commas that names a colour or a shape is one object. Text outside
    the grammar yields whatever vocabulary words it contains."""
    text = (text or "").lower().replace("colour", "color")
    elements = []
    for part in re.split(r"\band\b|,|;|\bwith\b", text):
        colours, shapes = _words(_COLOUR_RE, part), _words(_SHAPE_RE, part)
        if not colours and not shapes:
            continue
        motion = parse_motion(part)
        place = None if motion and motion != "still" else parse_place(part)
        elements.append(Element(colours[0] if colours else None,
                                shapes[0] if shapes else None, place, motion))
    return tuple(elements)


# ------------------------------------------------------------------------------ questions

@dataclass(frozen=True)
class Question:
    """A question about a scene: ``asks`` is colour, shape, place, motion, count or
    describe; ``about`` names the object it refers to (empty for the only one)."""

    text: str
    asks: str
    about: Element = Element()


def _ref(scene: Scene, obj: Obj, asks: str) -> tuple[str, Element]:
    """How a question names ``obj``: not at all when it is alone, else by its shape, or
    by its colour when the shape is what is asked (objects of a scene differ in both)."""
    if len(scene.objects) == 1:
        return "", Element()
    if asks != "shape":
        return f"the {obj.shape}", Element(shape=obj.shape)
    return f"the {obj.colour} one", Element(colour=obj.colour)


def make_question(scene: Scene, asks: str, obj: Obj | None = None) -> Question:
    obj = obj or scene.objects[0]
    noun = "image" if scene.kind == "image" else "video"
    if asks == "count":
        return Question("How many shapes are there?", "count")
    if asks == "describe":
        return Question(f"Describe the {noun}.", "describe")
    ref, about = _ref(scene, obj, asks)
    if asks == "colour":
        return Question(f"What colour is {ref or 'the shape'}?", asks, about)
    if asks == "shape":
        return Question(f"What shape is {ref}?" if ref else "What shape is shown?", asks, about)
    if asks == "place":
        return Question(f"Where is {ref or 'the ' + obj.shape}?", asks,
                        about if ref else Element(shape=obj.shape))
    if asks == "motion":
        return Question(f"Which way does {ref or 'the ' + obj.shape} move?", asks,
                        about if ref else Element(shape=obj.shape))
    raise ValueError(f"unknown question kind {asks!r}")


def question_kinds(scene: Scene) -> tuple[str, ...]:
    spatial = "place" if scene.kind == "image" else "motion"
    kinds = ("colour", "shape", spatial, "describe")
    return kinds + ("count",) if len(scene.objects) > 1 else kinds


def asks_to_describe(text: str) -> bool:
    """Whether a question asks for a description in the world's grammar ("Describe the
    image.", "What is shown?"); :func:`parse_question` also reads any question outside
    the grammar as one."""
    low = text.lower()
    return low.startswith("describe") or "what does the" in low or "what is shown" in low


def parse_question(text: str) -> Question:
    """The question kind and referent of a question in the world's grammar."""
    low = (text or "").lower().replace("colour", "color")
    if "how many" in low:
        asks = "count"
    elif asks_to_describe(low):
        asks = "describe"
    elif "what color" in low:
        asks = "colour"
    elif "what shape" in low:
        asks = "shape"
    elif "which way" in low or "move" in low or "direction" in low:
        asks = "motion"
    elif low.startswith("where"):
        asks = "place"
    else:
        asks = "describe"
    # The referent: what the question says about the object, minus the asked attribute.
    body = re.sub(r"^(what color|what shape|where|which way)\b", "", low)
    body = body.replace("move?", "").replace("which way does", "")
    colours, shapes = _words(_COLOUR_RE, body), _words(_SHAPE_RE, body)
    motion = parse_motion(body)
    about = Element(colours[0] if colours else None, shapes[0] if shapes else None,
                    parse_place(body) if asks != "place" else None,
                    motion if asks != "motion" else None)
    return Question(text, asks, about)


def find_object(scene: Scene, about: Element) -> Obj | None:
    """The object of ``scene`` a question refers to (the first match), or None."""
    for o in scene.objects:
        if ((about.colour is None or o.colour == about.colour)
                and (about.shape is None or o.shape == about.shape)
                and (about.place is None or o.place == about.place)
                and (about.motion is None or o.motion == about.motion)):
            return o
    return None


def answer(scene: Scene, question: Question, obj: Obj | None = None) -> str:
    """The correct short answer (about ``obj`` if given, for building wrong answers
    from a modified object)."""
    o = obj or find_object(scene, question.about) or (scene.objects[0] if scene.objects
                                                       else None)
    asks = question.asks
    if asks == "count":
        n = len(scene.objects)
        return "There is one shape." if n == 1 else f"There are {NUMBER_WORDS[n]} shapes."
    if asks == "describe":
        return describe_objects(scene.objects, scene.kind).capitalize() + "."
    if o is None:
        return "There is no shape."
    if asks == "colour":
        return f"It is {o.colour}."
    if asks == "shape":
        return f"It is a {o.shape}."
    if asks == "place":
        return f"It is {PLACE_PHRASES[o.place]}."
    if asks == "motion":
        return f"It is {MOTION_PHRASES[o.motion]}."
    raise ValueError(f"unknown question kind {asks!r}")
