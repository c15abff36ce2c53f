"""ShareGPTVideo DPO (video understanding, pairwise).

JSONL rows ``{id, video, prompt, chosen, rejected}``: a question about a video and two
answers, the chosen one preferred. ``video`` is a video file or a folder of extracted
frames (the release ships frame folders named by video id), resolved against
``media_root`` if given, else the data set's folder. ``<video>``/``<image>`` placeholders
in the prompt (a model-format artefact) are removed. Responses are (chosen, rejected),
label ``first``; the DataModule swaps the order (seeded). Scores and the reference
``answer``, where present, are kept in ``meta``.

:func:`write_pairs` writes pairwise video-understanding records in this schema: the
preferred answer as ``chosen``, the video as a path relative to the output's folder (or
``media_root``), ``meta``'s scores and ``answer`` back in their columns. A tie cannot be
written (ValueError naming the record).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ur.data.records import PreferenceRecord
from ur.data.sources.common import read_answer_pairs, write_answer_pairs

NAME = "sharegptvideo_dpo"
TASKS = ("video_understanding",)


def read(path, *, split=None, media_root=None):
    yield from read_answer_pairs(path, split=split, media_root=media_root, source=NAME,
                                 task="video_understanding", media_field="video")


def write_pairs(path: str | Path, pairs: Iterable[PreferenceRecord], *,
                media_root: str | Path | None = None) -> Path:
    """Write ``pairs`` to ``path`` (``.jsonl``, or a ``.json`` list) and return the path;
    video paths are written relative to ``media_root`` if given, else the output's folder,
    and a video outside that folder's tree is refused."""
    return write_answer_pairs(path, pairs, media_root=media_root,
                              task="video_understanding", media_field="video")
