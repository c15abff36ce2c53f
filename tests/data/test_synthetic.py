"""The synthetic world: items, labels, difficulty, determinism, and the files it writes
read back through the real source adapters."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ur.data.records import TASKS, RecordError
from ur.data.synthetic.scene import parse_question
from ur.data.synthetic.world import (
    DIFFERENCE_KINDS,
    SCALES,
    TIE_MARGIN,
    build_item,
    difference_kind,
    pair_label,
    split_counts,
)
from ur.data.synthetic.writer import BENCHMARKS, SCHEMAS, read_manifest, synthesize, write_world


def test_items_are_deterministic_and_seeded():
    for task in TASKS:
        a = build_item(task, "pairwise", 5, seed=1, difficulty=1)
        b = build_item(task, "pairwise", 5, seed=1, difficulty=1)
        c = build_item(task, "pairwise", 5, seed=2, difficulty=1)
        assert all(np.array_equal(x, y) for x, y in zip(a.media, b.media, strict=True))
        assert (a.prompt, a.responses, a.label, a.evidence) == \
            (b.prompt, b.responses, b.label, b.evidence)
        assert not all(np.array_equal(x, y) for x, y in zip(a.media, c.media, strict=True))


def test_labels_follow_the_oracle_and_the_construction():
    agree = n = 0
    for task in TASKS:
        for i in range(40):
            item = build_item(task, "pairwise", i, difficulty=1)
            s1, s2 = item.oracle_scores
            want = "tie" if abs(s1 - s2) <= TIE_MARGIN else ("first" if s1 > s2 else "second")
            assert item.label == want
            assert len(item.evidence) == (2 if task.endswith("generation") else 1)
            agree += item.label == item.intended
            n += 1
    assert agree / n >= 0.95


@pytest.mark.parametrize("task", TASKS)
def test_pointwise_scores_are_integers_on_the_task_scale(task):
    scores = [build_item(task, "pointwise", i, difficulty=1).score for i in range(30)]
    lo, hi = SCALES[task]
    assert all(isinstance(s, int) and lo <= s <= hi for s in scores)
    assert len(set(scores)) >= 3  # spread, not a constant
    if task == "image_understanding":
        assert all(s % 25 == 0 for s in scores)
    if task == "video_generation":
        dims = build_item(task, "pointwise", 0, difficulty=1).dims
        assert len(dims) == 5 and all(1 <= v <= 4 for v in dims.values())


def test_tie_fraction_is_a_minority():
    for difficulty in (0, 1, 2):
        labels = Counter(build_item(t, "pairwise", i, difficulty=difficulty).label
                         for t in TASKS for i in range(60 if t.startswith("image") else 15))
        ties = labels["tie"] / sum(labels.values())
        assert 0.02 <= ties <= 0.16, (difficulty, labels)
        assert min(labels["first"], labels["second"]) / sum(labels.values()) >= 0.3


def test_difficulty_changes_the_distribution():
    def stats(difficulty):
        items = [build_item("image_generation", "pairwise", i, difficulty=difficulty)
                 for i in range(60)]
        gaps = [abs(a - b) for a, b in (it.oracle_scores for it in items)]
        two = np.mean([len(it.scene.objects) == 2 for it in items])
        shared = np.mean([bool(set(it.errors[0]) & set(it.errors[1])) for it in items])
        return float(np.mean(gaps)), two, shared

    gap0, two0, shared0 = stats(0)
    gap2, two2, shared2 = stats(2)
    assert gap0 > gap2 + 0.05  # harder pairs are closer
    assert two0 == 0 and two2 > 0.2
    assert shared0 == 0 and shared2 > 0.2
    with pytest.raises(ValueError, match="difficulty"):
        build_item("image_generation", "pairwise", 0, difficulty=7)


def test_a_pairs_kind_is_what_tells_its_candidates_apart():
    seen = Counter()
    for task in TASKS:
        for index in range(60):
            item = build_item(task, "pairwise", index, seed=4, difficulty=1)
            assert item.kind in DIFFERENCE_KINDS
            seen[task, item.kind] += 1
            if item.intended == "tie":
                assert item.kind == "tie"
            elif task.endswith("generation"):
                better, worse = (0, 1) if item.intended == "first" else (1, 0)
                # the worse candidate carries the better one's errors and exactly one more
                assert set(item.errors[worse]) - set(item.errors[better]) == {item.kind}
                assert set(item.errors[better]) <= set(item.errors[worse])
            else:
                # what the question asks, as the oracle reads the question
                assert parse_question(item.prompt).asks == item.kind, (item.kind, item.prompt)
            # the id alone gives the kind back, from the world's settings
            assert difference_kind(item.id, seed=4, difficulty=1) == item.kind
    # every task has pairs of several kinds
    for task in TASKS:
        assert sum(1 for (t, _), n in seen.items() if t == task) >= 4, seen
    assert difference_kind("image_generation-pointwise-000001") is None
    assert difference_kind("pickapic-12345") is None


def test_split_counts():
    assert split_counts(10, {"train": 0.8, "val": 0.1, "test": 0.1}) == \
        {"train": 8, "val": 1, "test": 1}
    assert sum(split_counts(37, {"train": 0.8, "val": 0.1, "test": 0.1}).values()) == 37
    assert split_counts(3, {"train": 0.8, "val": 0.1, "test": 0.1}) == \
        {"train": 1, "val": 1, "test": 1}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "world"
    manifest = write_world(out, size=96, seed=4, difficulty=1, workers=1)
    return out, manifest


def test_writer_writes_every_schema_and_a_manifest(world):
    out, manifest = world
    assert read_manifest(out) == manifest
    for key in ("seed", "size", "difficulty", "image_size", "num_frames", "version"):
        assert key in manifest
    seen = {(e["task"], e["form"], e["source"]) for e in manifest["entries"]}
    for (task, form), (source, _) in SCHEMAS.items():
        assert (task, form, source) in seen
    for source, task, _ in BENCHMARKS.values():
        assert any(e["source"] == source and e["task"] == task and e["split"] == "test"
                   for e in manifest["entries"])
    for e in manifest["entries"]:
        assert (out / e["path"]).is_file()
        assert e["split"] in ("train", "val", "test")
    # Every row carries one evidence string per media item.
    rows = json.loads((out / "train" / "image_generation_pointwise.json").read_text())
    assert all(len(r["ur_evidence"]) == 1 for r in rows)
    assert (out / "train" / rows[0]["img_path"]).is_file()


def test_writer_is_deterministic_idempotent_and_careful(world, tmp_path):
    out, manifest = world
    before = _digest(out)
    assert write_world(out, size=96, seed=4, difficulty=1, workers=1) == manifest
    assert _digest(out) == before  # the rerun was a no-op
    again = tmp_path / "again"
    write_world(again, size=96, seed=4, difficulty=1, workers=2)
    assert _digest(again) == before  # byte-identical, whatever the number of workers
    with pytest.raises(FileExistsError, match="other arguments"):
        write_world(again, size=96, seed=5, difficulty=1, workers=1)
    write_world(again, size=96, seed=5, difficulty=1, workers=1, overwrite=True)
    assert read_manifest(again)["seed"] == 5 and _digest(again) != before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a synthetic world"):
        write_world(foreign, size=96, workers=1)
    # A world written in an older format is ur's own cache: it is rebuilt, not refused.
    old = json.loads((again / "manifest.json").read_text())
    (again / "manifest.json").write_text(json.dumps({**old, "version": 0}))
    assert write_world(again, size=96, seed=5, difficulty=1, workers=1)["version"] == old["version"]


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_leftovers_of_interrupted_builds_are_removed(tmp_path):
    """A half-written world of a killed build is never taken for a world, and goes; so
    does the old world a build killed between its two renames left; a live build's
    folder stays."""
    dead = _dead_pid()
    half, replaced, live = (tmp_path / f".fresh.tmp-{dead}", tmp_path / f".fresh.old-{dead}",
                            tmp_path / ".fresh.tmp-1")
    for folder in (half, replaced, live):
        (folder / "train").mkdir(parents=True)
    write_world(tmp_path / "fresh", size=16, workers=1)
    assert read_manifest(tmp_path / "fresh") is not None
    assert not half.exists() and not replaced.exists() and live.exists()


@pytest.fixture
def small_world(tmp_path):
    out = tmp_path / "world"
    write_world(out, size=16, seed=3, workers=1)
    return out, _digest(out)


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_a_damaged_world_is_rebuilt(small_world, damage, capsys):
    out, before = small_world
    manifest = read_manifest(out)
    assert manifest["contents"]["files"] == len(before) - 1  # all but the manifest
    table = out / manifest["entries"][0]["path"]
    clip = next(out.rglob("*.mp4"))
    if damage == "truncate":
        clip.write_bytes(clip.read_bytes()[:100])
    elif damage == "delete":
        table.unlink()
    else:  # the same size, one byte changed
        data = bytearray(table.read_bytes())
        data[len(data) // 2] ^= 1
        table.write_bytes(bytes(data))
    assert _digest(out) != before
    assert write_world(out, size=16, seed=3, workers=1) == manifest
    assert _digest(out) == before
    assert "rebuilding the world" in capsys.readouterr().err


def test_hidden_caches_beside_the_tables_are_not_damage(small_world, capsys):
    out, _ = small_world
    cache = out / "train" / ".ur_reference"
    cache.mkdir()
    (cache / "ref_logps-0.pt").write_bytes(b"cached")
    write_world(out, size=16, seed=3, workers=1)
    assert (cache / "ref_logps-0.pt").exists()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "out/passwd",
                                  "train/\0.json"])
def test_manifest_entries_stay_inside_the_world(world, tmp_path, path):
    _, manifest = world
    hostile = tmp_path / "world"
    hostile.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (hostile / "out").symlink_to(tmp_path / "elsewhere")  # a link out of the world
    entries = [dict(e) for e in manifest["entries"]]
    entries[3]["path"] = path
    (hostile / "manifest.json").write_text(json.dumps({**manifest, "entries": entries}))
    for read in (read_manifest, lambda out: write_world(out, size=96, seed=4, workers=1)):
        with pytest.raises(RecordError, match="leaves the world's folder|not a path") as info:
            read(hostile)
        assert (info.value.row, info.value.field) == (3, "path")
        assert info.value.file == str(hostile / "manifest.json")
    entries[3] = "train/x.json"
    (hostile / "manifest.json").write_text(json.dumps({**manifest, "entries": entries}))
    with pytest.raises(RecordError, match="string") as info:
        read_manifest(hostile)
    assert info.value.row == 3


def test_clips_decode_to_exactly_their_frames(world):
    """Clips are lossless: each decodes to its item's frames as yuv420p, bit for bit (a
    lossy encoder gave other pixels from run to run, and a base trained on them other
    weights)."""
    import av

    out, manifest = world
    rows = json.loads((out / "train" / "video_generation_pairwise.json").read_text())
    assert rows
    for row in rows[:4]:
        item = build_item("video_generation", "pairwise", int(row["id"].rsplit("-", 1)[1]),
                          seed=4, difficulty=1, image_size=manifest["image_size"],
                          num_frames=manifest["num_frames"])
        for rel in (row["chosen"], row["rejected"]):
            frames = item.media[int(Path(rel).stem.rsplit("_", 1)[1])]
            with av.open(str(out / "train" / rel)) as container:
                decoded = [f.to_ndarray() for f in container.decode(video=0)]
            assert len(decoded) == len(frames)
            for got, frame in zip(decoded, frames, strict=True):
                want = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                    format="yuv420p").to_ndarray()
                np.testing.assert_array_equal(got, want)


def test_synthesize_entry_point(world, capsys):
    out, manifest = world
    path = synthesize(out, size=96, seed=4, difficulty=1, workers=1)
    assert path == out / "manifest.json"
    assert "records" in capsys.readouterr().out


def test_every_manifest_entry_reads_back_through_its_adapter(world):
    from ur.data.sources import read_source

    out, manifest = world
    for e in manifest["entries"]:
        items = list(read_source(e["source"], out / e["path"]))
        errors = [x for x in items if isinstance(x, RecordError)]
        assert not errors, (e["path"], errors[:3])
        assert len(items) == e["records"], e
        assert e["records"] > 0 or e["source"] in ("videodpo", "sharegptvideo_dpo")
        for r in items:
            assert (r.task, r.form) == (e["task"], e["form"]), e["path"]
            assert r.evidence is not None and len(r.evidence) == len(r.media)
            if r.form == "pairwise":
                assert r.label in ("first", "second", "tie")
            else:
                assert r.scale[0] <= r.score <= r.scale[1]
            if r.task.endswith("understanding") and r.form == "pairwise":
                # The scores follow the responses whatever order the schema keeps them in.
                assert r.response_scores is not None
                assert r.label == pair_label(*r.response_scores), (e["path"], r.id)
        if e["form"] == "pairwise" and e["source"] in ("pickapic_v2", "vl_rewardbench",
                                                       "genai_bench"):
            rows = {r.id: r for r in items}
            assert Counter(r.label for r in rows.values())["tie"] == e.get("ties", 0)
        if e["source"] in ("llava_critic", "llava_sft"):
            # The judge's target states the evidence, then the score.
            assert all(r.target.startswith(f"The {r.modality} shows {r.evidence[0]}.")
                       and "Final Score:" in r.target for r in items)


def test_the_templates_load_the_worlds_language_only():
    """The prompt templates read answers with the world's grammar, without loading the
    oracle, the world or its writer (which imports the templates)."""
    code = ("import sys, ur.data.templates; print(' '.join(sorted(m for m in sys.modules "
            "if m.startswith('ur.data.synthetic'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["ur.data.synthetic", "ur.data.synthetic.language", "ur.data.synthetic.scene"]
