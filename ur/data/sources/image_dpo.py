"""Image-understanding DPO pairs (image understanding, pairwise).

JSONL rows ``{id, image, prompt, chosen, rejected}``: a question about an image and two
answers, the chosen one preferred; the image twin of ShareGPTVideo DPO, and what
UnifiedReward's pair construction writes for a vision-language policy. ``image`` is a
path resolved against ``media_root`` if given, else the data set's folder (a path that
escapes it is refused); ``<image>`` placeholders in the prompt are removed. Responses
are (chosen, rejected), label ``first``; the DataModule swaps the order (seeded).
``chosen_score``, ``rejected_score`` and a reference ``answer``, where present, are kept
in ``meta``.

:func:`write_pairs` writes pairwise image-understanding records in this schema: the
preferred answer as ``chosen``, the image as a path relative to the output's folder (or
``media_root``). A tie, an image outside that folder's tree, or an image held only as
bytes is refused (ValueError naming the record).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ur.data.records import PreferenceRecord
from ur.data.sources.common import read_answer_pairs, write_answer_pairs

NAME = "image_dpo"
TASKS = ("image_understanding",)


def read(path, *, split=None, media_root=None):
    yield from read_answer_pairs(path, split=split, media_root=media_root, source=NAME,
                                 task="image_understanding", media_field="image")


def write_pairs(path: str | Path, pairs: Iterable[PreferenceRecord], *,
                media_root: str | Path | None = None) -> Path:
    """Write ``pairs`` to ``path`` (``.jsonl``, or a ``.json`` list) and return the path;
    image paths are written relative to ``media_root`` if given, else the output's folder,
    and an image outside that folder's tree is refused."""
    return write_answer_pairs(path, pairs, media_root=media_root,
                              task="image_understanding", media_field="image")
