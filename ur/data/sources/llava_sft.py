"""UnifiedReward SFT files (all four tasks, pairwise and pointwise, as judge conversations).

LLaVA-style rows ``{id?, conversations: [{from: human, value: "<image>\\n..."}, {from: gpt,
value: ...}], image | images | video}``. As for LLaVA-Critic, ``instruction`` is the
human turn with the ``<image>``/``<video>`` placeholders (each with its newline) removed,
``target`` the gpt turn verbatim, ``prompt`` the instruction, ``responses`` empty.

Media: ``video`` (a file, a frame folder, a list of frame paths, or for pairwise video
generation a list of two videos) makes the row a video task; ``images`` (a list) or
``image`` (a path or a list) an image task. A list of plain strings under ``video`` is
two videos when the task compares two videos, else one clip's frames.

Task and form, unless the option ``task=`` fixes the task:

* a "Final Score: X" in the target makes it pointwise, else a pairwise verdict makes it
  pairwise; a target with neither is an error on ``conversations`` (never defaulted);
* pairwise: the verdict's noun decides, "Image N"/"Video N" (or "Both images/videos")
  for generation, "Answer N"/"Response N" for understanding; a verdict without a noun
  ("It is a tie") goes by the media: two candidates is generation, one is understanding.
  A noun that contradicts the media (Video N over images) is an error;
* pointwise with one image or video is ambiguous. Heuristic: an instruction that
  mentions a ``question`` is understanding; else one that mentions a ``caption`` or a
  ``text prompt`` is generation; else the row is refused (field ``task``), and
  ``task=`` settles it.

Pointwise scales: the option ``scale=`` as one ``(low, high)`` for every task or a dict
by task; defaults per task as in the released prompts: image generation 1-5, video
generation 1-10, image understanding 0-100, video understanding 1-5. A score off its
scale is an error on ``conversations``.
"""

from __future__ import annotations

import re

from ur.data.answers import pairwise_verdicts
from ur.data.records import TASKS as ALL_TASKS
from ur.data.records import PreferenceRecord, RecordError, is_generation, task_modality
from ur.data.sources.common import (
    as_list,
    evidence_of,
    first_present,
    judge_turns,
    judgment,
    load_rows,
    map_rows,
    media_ref,
    row_id,
    scale_option,
    source_root,
    strip_placeholders,
    within,
)

NAME = "llava_sft"
TASKS = ALL_TASKS
DEFAULT_SCALES = {
    "image_generation": (1.0, 5.0),
    "video_generation": (1.0, 10.0),
    "image_understanding": (0.0, 100.0),
    "video_understanding": (1.0, 5.0),
}
_NOUN_KIND = {"image": "generation", "video": "generation", "answer": "understanding",
              "response": "understanding"}


def _scales(scale) -> dict[str, tuple[float, float]]:
    out = dict(DEFAULT_SCALES)
    if isinstance(scale, dict):
        for task, value in scale.items():
            if task not in DEFAULT_SCALES:
                raise RecordError(f"unknown task {task!r} in the scale option", field="scale")
            out[task] = scale_option(value)
    elif scale is not None:
        lo_hi = scale_option(scale)
        out = dict.fromkeys(DEFAULT_SCALES, lo_hi)
    return out


def _verdict_noun(target: str) -> tuple[str | None, str | None]:
    """(generation|understanding, modality noun) from the last verdict that names its
    candidates."""
    named = [v.noun for v in pairwise_verdicts(target) if v.noun is not None]
    if not named:
        return None, None
    return _NOUN_KIND[named[-1]], named[-1]


def _raw_media(row: dict) -> tuple[str, str, list]:
    """(modality, field, entries) where entries are raw references."""
    field = first_present(row, ("video", "videos"))
    if field is not None:
        value = row[field]
        entries = value if isinstance(value, list | tuple) else [value]
        return "video", field, list(entries)
    field = first_present(row, ("images", "image"))
    if field is None:
        raise RecordError("row has no image, images or video", field="image")
    value = row[field]
    if isinstance(value, str) and value.lstrip().startswith("["):
        value = as_list(value, field)
    entries = list(value) if isinstance(value, list | tuple) else [value]
    return "image", field, entries


def _guess_pointwise_task(instruction: str, modality: str) -> str:
    if re.search(r"\bquestion\b", instruction, re.IGNORECASE):
        return f"{modality}_understanding"
    if re.search(r"\bcaption\b|\btext prompt\b", instruction, re.IGNORECASE):
        return f"{modality}_generation"
    raise RecordError("a pointwise row with one item could be generation or understanding "
                      "and its instruction names neither a question nor a caption; pass "
                      "task=", field="task")


def read(path, *, split=None, media_root=None, task: str | None = None, scale=None):
    root = source_root(path, media_root)
    if task is not None and task not in ALL_TASKS:
        raise RecordError(f"unknown task {task!r}; expected one of {', '.join(ALL_TASKS)}",
                          field="task")
    scales = _scales(scale)

    def build(row, file, i):
        human, target = judge_turns(row)
        instruction = strip_placeholders(human)
        if not instruction.strip():
            raise RecordError("the human turn holds nothing but placeholders",
                              field="conversations")
        modality, field, entries = _raw_media(row)
        form, label, score = judgment(target, None, None)
        if task is not None:
            rtask = task
        elif form == "pairwise":
            kind, noun = _verdict_noun(target)
            if kind == "generation" and noun != modality:
                raise RecordError(f"the verdict compares {noun}s but the row holds "
                                  f"{modality} media", field="conversations")
            if kind is None:
                kind = "generation" if len(entries) == 2 else "understanding"
            rtask = f"{modality}_{kind}"
        else:
            rtask = _guess_pointwise_task(instruction, modality)
        if task_modality(rtask) != modality:
            raise RecordError(f"a {rtask} row cannot hold {modality} media", field=field)
        wanted = 2 if is_generation(rtask) and form == "pairwise" else 1
        if modality == "video" and wanted == 1 and len(entries) != 1 and all(
                isinstance(e, str) for e in entries):
            entries = [entries]  # one clip given as its frame list
        media = tuple(media_ref(e, kind=modality, root=root, field=field) for e in entries)
        if form == "pointwise":
            score = within(score, scales[rtask], "conversations")
        return PreferenceRecord(
            task=rtask, form=form, source=NAME, id=row_id(row, file, i),
            prompt=instruction, media=media, responses=(), label=label, score=score,
            scale=scales[rtask] if form == "pointwise" else None, instruction=instruction,
            target=target, evidence=evidence_of(row), meta={}, file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)
