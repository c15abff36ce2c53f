"""HPDv2, Human Preference Dataset v2 (image generation, pairwise).

Two layouts, told apart per row by their fields:

* train: a JSON list of ``{prompt, file_path: [2 images], human_preference: [1, 0]}``;
  the 1 marks the preferred image. ``[1, 1]`` and ``[0, 0]`` (not expected in the
  release, but not meaningless) are read as ties; any other value is an error.
* test: ``{prompt, image_path: [k images], rank: [k]}``, lower rank better. Every one of
  the k*(k-1)/2 pairs becomes a record (id ``<row id>-<i>-<j>``, images i before j);
  equal ranks are ties.

Image paths are resolved against ``media_root`` if given, else the data set's folder.
Rows that hold the images themselves (an ``image`` list of the ``datasets`` Image
struct, as the hub copy does) are read too. Rows have no id field in the release; ids
are ``<file stem>-<row>`` unless a row carries ``id``.
"""

from __future__ import annotations

from itertools import combinations

from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources.common import (
    as_list,
    evidence_of,
    first_present,
    load_rows,
    map_rows,
    media_ref,
    number,
    require,
    row_id,
    source_root,
)

NAME = "hpdv2"
TASKS = ("image_generation",)


def _preference_label(row: dict) -> str:
    values = as_list(require(row, "human_preference"), "human_preference", length=2)
    a, b = (number(v, "human_preference") for v in values)
    if a not in (0.0, 1.0) or b not in (0.0, 1.0):
        raise RecordError(f"human_preference must hold 1/0 per image, got {values}",
                          field="human_preference")
    if a == b:
        return "tie"
    return "first" if a == 1.0 else "second"


def _images(row: dict, field: str, root, length: int | None = None) -> list:
    name = field if row.get(field) is not None else first_present(row, ("image",)) or field
    values = as_list(require(row, name), name, length=length)
    return [media_ref(v, kind="image", root=root, field=name) for v in values]


def read(path, *, split=None, media_root=None):
    root = source_root(path, media_root)

    def build(row, file, i):
        prompt = require(row, "prompt", str)
        rid = row_id(row, file, i)
        evidence = evidence_of(row)
        if "human_preference" in row or "file_path" in row:
            return PreferenceRecord(
                task="image_generation", form="pairwise", source=NAME, id=rid, prompt=prompt,
                media=tuple(_images(row, "file_path", root, length=2)),
                label=_preference_label(row), evidence=evidence,
                meta={"layout": "train"}, file=file, row=i)
        if "rank" in row or "image_path" in row:
            return _ranked_pairs(row, file, i, prompt, rid, evidence, root)
        raise RecordError("row has neither the train fields (file_path, human_preference) "
                          "nor the test fields (image_path, rank)", field="file_path")

    yield from map_rows(load_rows(path, split=split), build)


def _ranked_pairs(row, file, i, prompt, rid, evidence, root) -> list[PreferenceRecord]:
    images = _images(row, "image_path", root)
    ranks = [number(r, "rank") for r in as_list(require(row, "rank"), "rank")]
    if len(ranks) != len(images):
        raise RecordError(f"{len(ranks)} ranks for {len(images)} images", field="rank")
    if len(images) < 2:
        raise RecordError("a ranked row needs at least two images", field="image_path")
    if evidence is not None and len(evidence) != len(images):
        raise RecordError(f"evidence needs one entry per image ({len(images)}), got "
                          f"{len(evidence)}", field="ur_evidence")
    records = []
    for a, b in combinations(range(len(images)), 2):
        if ranks[a] == ranks[b]:
            label = "tie"
        else:
            label = "first" if ranks[a] < ranks[b] else "second"
        records.append(PreferenceRecord(
            task="image_generation", form="pairwise", source=NAME, id=f"{rid}-{a}-{b}",
            prompt=prompt, media=(images[a], images[b]), label=label,
            evidence=None if evidence is None else (evidence[a], evidence[b]),
            meta={"layout": "test", "ranks": (ranks[a], ranks[b]), "pair": (a, b)},
            file=file, row=i))
    return records
