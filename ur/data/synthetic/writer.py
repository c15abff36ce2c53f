"""Writing the synthetic world to disk in the public data sets' schemas, plus a manifest.

Layout of ``out_dir`` (every path in a table is relative to the table's folder, which
is the source root the adapters resolve media against)::

    manifest.json
    train/ val/ test/
        image_generation_pairwise.parquet     Pick-a-Pic v2 (images inline, PNG bytes)
        image_generation_pointwise.json       EvalMuse
        video_generation_pairwise.json        VideoDPO (ties dropped, counted)
        video_generation_pointwise.json       VideoFeedback (PNG frame folders)
        image_understanding_pairwise.json     VL-RewardBench
        image_understanding_pointwise.json    LLaVA-Critic pointwise conversations
        video_understanding_pairwise.jsonl    ShareGPTVideo DPO (ties dropped, counted)
        video_understanding_pointwise.json    UnifiedReward SFT (llava_sft) conversations
        media/<task>-<form>/...               PNG images, mp4 clips, frame folders
    test/ also holds the benchmark schemas of the same test items:
        genai_bench_image.json, genai_bench_video.json, videogen_rewardbench.csv

Every row carries ``ur_evidence`` (a JSON list of strings, one per media item in the
record's media order: what the oracle says each image or clip shows) and
``ur_scores`` (the oracle's scores in [0, 1], one per candidate, in the row's own
order: chosen first where the schema has chosen and rejected). The DPO pair schemas
(Pick-a-Pic v2, VideoDPO, ShareGPTVideo DPO) are written by their adapters'
``write_pairs``, as any set of pairs is. The conversation
schemas are built through :class:`ur.data.templates.PromptTemplates`, so their targets
state the evidence before "Final Score: X".

The manifest names, per split, task and form, the adapter (``source``), the relative
``path`` and the record count; the arguments the world was built with; and its
``contents``: the number of files, their bytes and a SHA-256 over their names and bytes.
Every ``path`` stays inside the world's folder (:func:`read_manifest` refuses one that
does not). The world is built in a temporary sibling folder that is renamed into place
only when complete, manifest last; rerunning with the same arguments returns the
manifest without writing anything when the files are still those it describes, and
rebuilds the world when they are not (a file truncated, deleted or changed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import current_process, get_context
from pathlib import Path

import numpy as np
from PIL import Image

from ur.data.media import write_frames, write_video
from ur.data.records import TASKS, Media, PreferenceRecord, RecordError
from ur.data.sources import pickapic_v2, sharegptvideo_dpo, videodpo
from ur.data.synthetic.world import FORMS, Item, build_item, pair_label, split_counts
from ur.data.templates import PromptTemplates
from ur.io import UnsafePathError, atomic_dir, safe_join

VERSION = 3
SPLITS = ("train", "val", "test")
CHUNK = 64
# Clips are encoded losslessly (libx264 at CRF 0): they decode to exactly their frames'
# yuv420p conversion, so the same world decodes to the same pixels on every run. Lossy
# CRF 18 did not: 10-30 of a world's clips came out with other pixels from run to run
# (one thread did not help; filling the row padding past the 84-pixel width removed most
# of it, not all), and the tiny base pretrained on them came out with other weights.
# Lossless costs about a third more bytes; CRF 18 had added little error (2.1 grey levels
# a pixel against 2.0 from the colour subsampling alone).
CRF = 0

SCHEMAS: dict[tuple[str, str], tuple[str, str]] = {
    ("image_generation", "pairwise"): ("pickapic_v2", "image_generation_pairwise.parquet"),
    ("image_generation", "pointwise"): ("evalmuse", "image_generation_pointwise.json"),
    ("video_generation", "pairwise"): ("videodpo", "video_generation_pairwise.json"),
    ("video_generation", "pointwise"): ("videofeedback", "video_generation_pointwise.json"),
    ("image_understanding", "pairwise"): ("vl_rewardbench", "image_understanding_pairwise.json"),
    ("image_understanding", "pointwise"): ("llava_critic",
                                           "image_understanding_pointwise.json"),
    ("video_understanding", "pairwise"): ("sharegptvideo_dpo",
                                          "video_understanding_pairwise.jsonl"),
    ("video_understanding", "pointwise"): ("llava_sft", "video_understanding_pointwise.json"),
}
# Schemas with no way to say "tie": tie pairs are left out of them and counted.
NO_TIES = {"videodpo", "sharegptvideo_dpo"}
# The DPO pair schemas, written by their adapters' own writers.
PAIR_WRITERS = {m.NAME: m for m in (pickapic_v2, videodpo, sharegptvideo_dpo)}
BENCHMARKS: dict[str, tuple[str, str, str]] = {  # name -> (source, task, file)
    "genai_bench_image": ("genai_bench", "image_generation", "genai_bench_image.json"),
    "genai_bench_video": ("genai_bench", "video_generation", "genai_bench_video.json"),
    "videogen_rewardbench": ("videogen_rewardbench", "video_generation",
                             "videogen_rewardbench.csv"),
}


# ------------------------------------------------------------------------------ media

def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image))


# ------------------------------------------------------------------------------- rows

def _model(errors) -> str:
    return "synthetic:" + ("+".join(errors) if errors else "clean")


def _conversation(item: Item, media: Media, placeholder: str) -> list[dict]:
    """The judge conversation of a pointwise understanding item: the instruction and the
    target (evidence, then "Final Score: X") of the shared prompt templates."""
    templates = PromptTemplates()
    record = item.record((media,))
    return [{"from": "human", "value": f"{placeholder}\n{templates.instruction(record)}"},
            {"from": "gpt", "value": templates.target(record)}]


def _ordered(item: Item) -> tuple[int, int]:
    """Indices (chosen, rejected) of a non-tie pair."""
    return (0, 1) if item.label == "first" else (1, 0)


def _pair(item: Item, source: str, media: tuple[Media, ...], meta: dict,
          response_scores=None) -> PreferenceRecord:
    """A pairwise item as the record its DPO pair schema's writer takes: media
    references (files already written, or image bytes), the oracle's label and
    evidence, and the columns the schema keeps in ``meta``."""
    return PreferenceRecord(
        task=item.task, form=item.form, source=source, id=item.id, prompt=item.prompt,
        media=media, responses=item.responses, label=item.label, evidence=item.evidence,
        response_scores=response_scores, meta=meta)


def _rows(item: Item, split_dir: Path, split: str,
          fps: int) -> dict[str, dict | PreferenceRecord]:
    """Write the item's media under ``split_dir`` and return its rows, by table name
    (the item's own schema, plus benchmark tables for the test split). A DPO pair
    schema's row is a pairwise record, which its adapter's ``write_pairs`` writes."""
    task, form = item.task, item.form
    source, _ = SCHEMAS[(task, form)]
    rel_dir = Path("media") / f"{task}-{form}"
    common = {"ur_evidence": list(item.evidence), "ur_scores": [round(s, 4) for s in
                                                                item.oracle_scores]}
    rows: dict[str, dict | PreferenceRecord] = {}
    if task == "image_generation" and form == "pairwise":
        media = tuple(Media(kind="image", data=png_bytes(m), field=f"jpg_{k}")
                      for k, m in enumerate(item.media))
        rows[source] = _pair(item, source, media, {
            "model_0": _model(item.errors[0]), "model_1": _model(item.errors[1]),
            "ur_scores": common["ur_scores"]})
        if split == "test":
            paths = [rel_dir / f"{item.id}_{k}.png" for k in range(2)]
            for p, m in zip(paths, item.media, strict=True):
                _write_png(split_dir / p, m)
            rows["genai_bench_image"] = {
                "id": item.id, "prompt": item.prompt, "left_image": str(paths[0]),
                "right_image": str(paths[1]), "vote_type": _vote(item.label),
                "left_model": _model(item.errors[0]), "right_model": _model(item.errors[1]),
                **common}
    elif task == "image_generation":
        path = rel_dir / f"{item.id}.png"
        _write_png(split_dir / path, item.media[0])
        checks = item.results[0].checks
        rows[source] = {"id": item.id, "prompt": item.prompt, "img_path": str(path),
                        "total_score": [item.score],
                        "element_score": {_element(name): float(ok) for name, ok in checks
                                          if " " in name and name != "extra object"},
                        **common}
    elif task == "video_generation" and form == "pairwise":
        paths = [rel_dir / f"{item.id}_{k}.mp4" for k in range(2)]
        for p, m in zip(paths, item.media, strict=True):
            write_video(split_dir / p, m, fps=fps, crf=CRF)
        if item.label != "tie":
            c, r = _ordered(item)
            media = tuple(Media(kind="video", path=str(split_dir / p),
                                field="chosen" if k == c else "rejected")
                          for k, p in enumerate(paths))
            rows[source] = _pair(item, source, media, {
                "chosen_score": round(item.oracle_scores[c], 4),
                "rejected_score": round(item.oracle_scores[r], 4),
                "ur_scores": common["ur_scores"]})
        if split == "test":
            rows["genai_bench_video"] = {
                "id": item.id, "prompt": item.prompt, "left_video": str(paths[0]),
                "right_video": str(paths[1]), "vote_type": _vote(item.label),
                "left_model": _model(item.errors[0]), "right_model": _model(item.errors[1]),
                **common}
            rows["videogen_rewardbench"] = {
                "id": item.id, "path_A": str(paths[0]), "path_B": str(paths[1]),
                "prompt": item.prompt, **_videogen_verdicts(item),
                "A_model": _model(item.errors[0]), "B_model": _model(item.errors[1]),
                "ur_evidence": json.dumps(item.evidence),
                "ur_scores": json.dumps(common["ur_scores"])}
    elif task == "video_generation":
        folder = rel_dir / item.id
        # PNG, not JPEG: lossless frames show exactly what the oracle measured.
        frames = write_frames(split_dir / folder, item.media[0], ext="png")
        rows[source] = {"id": item.id, "images": [str(folder / f.name) for f in frames],
                        "text prompt": item.prompt, **item.dims, **common}
    elif task == "image_understanding":
        path = rel_dir / f"{item.id}.png"
        _write_png(split_dir / path, item.media[0])
        if form == "pairwise":
            ranking = {"first": [0, 1], "second": [1, 0], "tie": [0, 0]}[item.label]
            rows[source] = {"id": item.id, "query": item.prompt,
                            "response": list(item.responses), "image": str(path),
                            "human_ranking": ranking, "query_source": "synthetic", **common}
        else:
            media = Media(kind="image", path=str(path), field="image")
            rows[source] = {"id": item.id, "image": str(path), "source": "synthetic",
                            "conversations": _conversation(item, media, "<image>"), **common}
    else:  # video_understanding
        path = rel_dir / f"{item.id}.mp4"
        write_video(split_dir / path, item.media[0], fps=fps, crf=CRF)
        if form == "pairwise":
            if item.label != "tie":
                c, r = _ordered(item)
                media = (Media(kind="video", path=str(split_dir / path), field="video"),)
                rows[source] = _pair(item, source, media, {
                    "chosen_score": item.oracle_scores[c],
                    "rejected_score": item.oracle_scores[r]},
                    response_scores=common["ur_scores"])
        else:
            media = Media(kind="video", path=str(path), field="video")
            rows[source] = {"id": item.id, "video": str(path),
                            "conversations": _conversation(item, media, "<video>"), **common}
    return rows


def _element(check: str) -> str:
    attr, value = check.split(" ", 1)
    return f"{value} ({attr})"


def _vote(label: str) -> str:
    return {"first": "leftvote", "second": "rightvote", "tie": "tievote"}[label]


def _videogen_verdicts(item: Item) -> dict[str, str]:
    """VQ / MQ / TA / Overall verdicts (A, B or same) from the oracle's parts: visual
    quality, temporal quality times the motion checks, alignment, and the label."""
    parts = {"VQ": lambda r: r.visual_quality,
             "MQ": lambda r: r.temporal_quality * r.motion_ok,
             "TA": lambda r: r.alignment}
    word = {"first": "A", "second": "B", "tie": "same"}
    out = {k: word[pair_label(part(item.results[0]), part(item.results[1]))]
           for k, part in parts.items()}
    out["Overall"] = word[item.label]
    return out


# ----------------------------------------------------------------------------- chunks

def _chunk(args) -> tuple[dict[str, list], dict]:
    """Build and write items [start, stop) of one (task, form, split): worker entry."""
    root, task, form, split, start, stop, world, fps = args
    split_dir = Path(root) / split
    tables: dict[str, list] = {}
    stats = {"ties": 0, "pairs": 0, "agree": 0, "items": 0}
    for i in range(start, stop):
        item = build_item(task, form, i, **world)
        stats["items"] += 1
        if form == "pairwise":
            stats["pairs"] += 1
            stats["ties"] += item.label == "tie"
            stats["agree"] += item.label == item.intended
        for name, row in _rows(item, split_dir, split, fps).items():
            tables.setdefault(name, []).append(row)
    return tables, stats


def _write_table(path: Path, rows: list, source: str) -> None:
    """Write one table: the DPO pair schemas through their adapters' writers (rows are
    pairwise records there), the others from row dicts."""
    if source in PAIR_WRITERS:
        # Pick-a-Pic holds ties (0.5/0.5), as the public set does.
        options = {"ties": True} if source == "pickapic_v2" else {}
        PAIR_WRITERS[source].write_pairs(path, rows, **options)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["id"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")


# ----------------------------------------------------------------------------- world

def _arguments(size, seed, difficulty, image_size, num_frames, fps, splits, tasks, forms):
    return {"version": VERSION, "size": int(size), "seed": int(seed),
            "difficulty": int(difficulty), "image_size": int(image_size),
            "num_frames": int(num_frames), "fps": int(fps),
            "splits": {k: float(v) for k, v in splits.items()},
            "tasks": list(tasks), "forms": list(forms)}


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a completely written world, or None.

    A manifest whose entries are malformed, or name a ``path`` outside ``out_dir``
    (``../..``, an absolute path, a link out), raises a :class:`RecordError` naming the
    entry and the field (the first of :func:`manifest_problems`).
    """
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    problems = manifest_problems(out_dir, manifest)
    if problems:
        raise problems[0]
    return manifest


def manifest_problems(out_dir: str | Path, manifest) -> list[RecordError]:
    """Every problem of a parsed manifest of the world in ``out_dir``: no list of
    entries, or per entry the first of: not an object, a ``split``, ``task``, ``form``,
    ``source`` or ``path`` that is not a non-empty string, a ``path`` outside
    ``out_dir``. Each names manifest.json, the entry as its row and the key as its field.
    """
    path = Path(out_dir) / "manifest.json"
    entries = manifest.get("entries") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        return [RecordError("not a synthetic world's manifest (no list of entries)",
                            file=path, field="entries")]
    problems = []
    for row, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(RecordError("an entry is an object of strings (split, task, form, "
                                        f"source, path), got {type(entry).__name__}",
                                        file=path, row=row))
            continue
        field = next((f for f in ("split", "task", "form", "source", "path")
                      if not isinstance(entry.get(f), str) or not entry[f].strip()), None)
        if field is not None:
            problems.append(RecordError("the entry needs a non-empty string here", file=path,
                                        row=row, field=field))
            continue
        try:
            safe_join(out_dir, entry["path"])
        except UnsafePathError:
            problems.append(RecordError(f"{entry['path']!r} leaves the world's folder",
                                        file=path, row=row, field="path"))
        except ValueError:  # a NUL character
            problems.append(RecordError(f"{entry['path']!r} is not a path", file=path, row=row,
                                        field="path"))
    return problems


def contents(out_dir: str | Path) -> dict:
    """What a world's folder holds, as its manifest records it: the number of files,
    their bytes, and a SHA-256 over each file's relative path, size and bytes, in path
    order. The manifest is left out, and so is everything hidden (a name starting with
    "."): the world writes nothing hidden, and others keep caches beside its tables
    (the DPO reference's ``.ur_reference``)."""
    root = Path(out_dir)
    names = sorted(rel for rel in (p.relative_to(root).as_posix() for p in root.rglob("*")
                                   if p.is_file())
                   if rel != "manifest.json" and not any(part.startswith(".")
                                                         for part in rel.split("/")))
    digest = hashlib.sha256()
    total = 0
    for name in names:
        data = (root / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
        total += len(data)
    return {"files": len(names), "bytes": total, "sha256": digest.hexdigest()}


def _changed(out: Path, manifest: dict) -> str | None:
    """How the files under ``out`` differ from what ``manifest`` records, or None."""
    recorded, found = manifest.get("contents"), contents(out)
    if not isinstance(recorded, dict):
        return "the manifest records no checksum of the files"
    if (found["files"], found["bytes"]) != (recorded.get("files"), recorded.get("bytes")):
        return (f"it holds {found['files']} files of {found['bytes']} bytes where the "
                f"manifest says {recorded.get('files')} of {recorded.get('bytes')} (a file "
                "was deleted, truncated or added)")
    if found["sha256"] != recorded.get("sha256"):
        return "a file's bytes differ from those written (checksum)"
    return None


def write_world(out_dir: str | Path, *, size: int = 4000, seed: int = 0, difficulty: int = 1,
                image_size: int = 84, num_frames: int = 4, fps: int = 4,
                splits: dict[str, float] | tuple[float, float, float] = (0.8, 0.1, 0.1),
                tasks=TASKS, forms=FORMS, workers: int | None = None,
                overwrite: bool = False) -> dict:
    """Build the synthetic world and write it under ``out_dir``; return the manifest.

    ``size`` is the number of items over all (task, form) pairs and splits, shared out
    evenly (before tie pairs are dropped from schemas that cannot hold them);
    ``splits`` the train/val/test fractions. ``workers`` processes build items
    (default: up to 2, the machine's cores). An existing world built with the same
    arguments is returned as it is while its files are those its manifest records; one
    whose files changed, or written in an older format (``VERSION``), is rebuilt (it is
    ur's cache); one built with other arguments is replaced only with
    ``overwrite=True``. A folder holding anything else is never touched. Temporary
    folders that interrupted builds left beside ``out`` are removed.
    """
    out = Path(out_dir)
    if not isinstance(splits, dict):
        splits = dict(zip(SPLITS, splits, strict=True))
    unknown = [t for t in tasks if t not in TASKS] + [f for f in forms if f not in FORMS]
    if unknown:
        raise ValueError(f"unknown tasks or forms: {unknown}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    args = _arguments(size, seed, difficulty, image_size, num_frames, fps, splits, tasks, forms)
    # A build killed between atomic_dir's two renames leaves the world it replaced here;
    # removing one that a live build is about to remove itself does no harm.
    for stale in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    existing = read_manifest(out)
    if existing is None:
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a synthetic world; choose an "
                                  "empty or new folder")
    elif all(existing.get(k) == v for k, v in args.items()):
        changed = _changed(out, existing)
        if changed is None:
            return existing
        print(f"{out}: {changed}; rebuilding the world", file=sys.stderr)
    elif existing.get("version") != VERSION:  # our own output in an older format: a cache
        print(f"{out}: the world was written by an older ur (format "
              f"{existing.get('version')}, now {VERSION}); rebuilding it", file=sys.stderr)
    elif not overwrite:
        raise FileExistsError(f"{out} holds a world built with other arguments "
                              f"({ {k: existing.get(k) for k in args} }); pass "
                              "overwrite=True")
    build_item("image_generation", "pointwise", 0, seed=seed, difficulty=difficulty,
               image_size=image_size, num_frames=num_frames)  # validate arguments early
    with atomic_dir(out) as tmp:
        manifest = _build(tmp, args, workers)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def _build(root: Path, args: dict, workers: int | None) -> dict:
    world = {"seed": args["seed"], "difficulty": args["difficulty"],
             "image_size": args["image_size"], "num_frames": args["num_frames"]}
    combos = [(t, f) for t in args["tasks"] for f in args["forms"]]
    per_combo = {c: args["size"] // len(combos) + (i < args["size"] % len(combos))
                 for i, c in enumerate(combos)}
    jobs, keys = [], []
    for task, form in combos:
        counts = split_counts(per_combo[(task, form)], args["splits"])
        start = 0
        for split in SPLITS:
            n = counts.get(split, 0)
            for lo in range(start, start + n, CHUNK):
                jobs.append((str(root), task, form, split, lo, min(lo + CHUNK, start + n),
                             world, args["fps"]))
                keys.append((task, form, split))
            start += n
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, workers)
    if current_process().daemon:
        workers = 1  # a daemonic process (a data-loader worker) may not start children
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: the caller may hold threads (torch) that fork would copy.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_chunk, jobs))
    else:
        results = [_chunk(j) for j in jobs]
    tables: dict[tuple, list] = {}
    stats: dict[tuple, dict] = {}
    for (task, form, split), (chunk_tables, chunk_stats) in zip(keys, results, strict=True):
        for name, rows in chunk_tables.items():
            tables.setdefault((split, task, form, name), []).extend(rows)
        acc = stats.setdefault((split, task, form), dict.fromkeys(chunk_stats, 0))
        for k, v in chunk_stats.items():
            acc[k] += v
    entries = []
    for (split, task, form), st in stats.items():
        source, file = SCHEMAS[(task, form)]
        rows = tables.get((split, task, form, source), [])
        _write_table(root / split / file, rows, source)
        entry = {"split": split, "task": task, "form": form, "source": source,
                 "path": f"{split}/{file}", "records": len(rows), "items": st["items"]}
        if form == "pairwise":
            entry.update(ties=st["ties"], oracle_agrees_with_construction=st["agree"])
            if source in NO_TIES:
                entry["dropped_ties"] = st["ties"]
        entries.append(entry)
        for name, (bsource, btask, bfile) in BENCHMARKS.items():
            brows = tables.get((split, task, form, name))
            if btask == task and brows:
                _write_table(root / split / bfile, brows, bsource)
                entries.append({"split": split, "task": task, "form": form,
                                "source": bsource, "path": f"{split}/{bfile}",
                                "records": len(brows), "benchmark": True,
                                "ties": sum(r.get("vote_type", r.get("Overall")) in
                                            ("tievote", "same") for r in brows)})
    pairs = sum(st["pairs"] for st in stats.values())
    ties = sum(st["ties"] for st in stats.values())
    return {"name": "ur-synthetic-world", **args, "entries": entries,
            "tie_fraction": round(ties / pairs, 4) if pairs else 0.0,
            "contents": contents(root)}


def synthesize(out: str | Path, size: int = 4000, seed: int = 0, difficulty: int = 1,
               image_size: int = 84, num_frames: int = 4, workers: int | None = None,
               overwrite: bool = False) -> Path:
    """Command-line entry (``ur corpus synth``): write the world, print a summary, and
    return the manifest's path."""
    start = time.perf_counter()
    manifest = write_world(out, size=size, seed=seed, difficulty=difficulty,
                           image_size=image_size, num_frames=num_frames, workers=workers,
                           overwrite=overwrite)
    total = sum(e["records"] for e in manifest["entries"] if not e.get("benchmark"))
    print(f"synthetic world: {total} records (difficulty {difficulty}, seed {seed}, "
          f"tie fraction {manifest['tie_fraction']}) in {out} "
          f"({time.perf_counter() - start:.1f} s)")
    return Path(out) / "manifest.json"
