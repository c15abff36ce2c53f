"""The DPO pair schemas are written by the adapter that reads them: records written with
``write_pairs`` and read back with ``read_source`` are the same judgments (the preferred
candidate first where the schema has chosen and rejected), media stay where they are
(paths relative to the table's folder; Pick-a-Pic's images inline), and what cannot be
written as a pair (a tie, media outside the table's folder tree, image bytes in a path
schema) is refused before anything is written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ur.cli import main
from ur.data.media import load_media, write_frames, write_video
from ur.data.records import Media, PreferenceRecord, RecordError
from ur.data.sources import PAIR_SCHEMAS, get_source, read_source, write_pairs
from ur.data.synthetic.writer import SCHEMAS, write_world


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), colour, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_file(path: Path, colour) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(colour))
    return str(path.resolve())


def clip(shade: int) -> np.ndarray:
    frames = np.full((4, 16, 16, 3), shade, np.uint8)
    frames[:, :, :8] = 255 - shade
    return frames


def read_back(name: str, path, **options) -> list[PreferenceRecord]:
    items = list(read_source(name, path, **options))
    errors = [x for x in items if isinstance(x, RecordError)]
    assert not errors, errors
    return items


def chosen_first(record: PreferenceRecord) -> PreferenceRecord:
    return record if record.label == "first" else record.swapped()


def pair(task: str, source: str, rid: str, media, label: str, **fields) -> PreferenceRecord:
    return PreferenceRecord(task=task, form="pairwise", source=source, id=rid, media=media,
                            label=label, **fields)


# --- Pick-a-Pic v2 ---------------------------------------------------------------------

def _pick(rid, label, colours=((200, 0, 0), (0, 0, 200)), **fields):
    media = tuple(Media(kind="image", data=png(c), field=f"jpg_{k}")
                  for k, c in enumerate(colours))
    return pair("image_generation", "pickapic_v2", rid, media, label,
                prompt=f"a square {rid}", **fields)


def test_pickapic_round_trip(tmp_path):
    records = [
        _pick("p0", "first", evidence=("a red square", "a blue square"),
              meta={"model_0": "sd", "model_1": "sdxl", "ur_scores": [0.9, 0.4]}),
        _pick("p1", "second", colours=((0, 160, 0), (240, 200, 20))),
    ]
    out = write_pairs("pickapic_v2", tmp_path / "pairs" / "train.parquet", records)
    assert out == tmp_path / "pairs" / "train.parquet"
    back = read_back("pickapic_v2", out)
    # the record's order is kept: label_0/label_1 say which image is preferred
    assert back == records
    assert back[0].meta["model_0"] == "sd" and back[0].meta["ur_scores"] == (0.9, 0.4)
    assert back[1].media[0].data == records[1].media[0].data

    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pylist()
    assert [(r["label_0"], r["label_1"]) for r in table] == [(1.0, 0.0), (0.0, 1.0)]
    assert {"caption", "jpg_0", "jpg_1", "model_0", "model_1"} <= set(table[0])


def test_pickapic_stores_images_read_from_paths_as_bytes(tmp_path):
    a = png_file(tmp_path / "elsewhere" / "a.png", (10, 20, 30))
    b = png_file(tmp_path / "elsewhere" / "b.png", (30, 20, 10))
    record = pair("image_generation", "pickapic_v2", "p", (
        Media(kind="image", path=a, field="jpg_0"), Media(kind="image", path=b, field="jpg_1")),
        "second", prompt="two squares")
    out = write_pairs("pickapic_v2", tmp_path / "out" / "pairs.parquet", [record])
    (back,) = read_back("pickapic_v2", out)
    assert [m.data for m in back.media] == [Path(a).read_bytes(), Path(b).read_bytes()]
    assert back.label == "second"


def test_pickapic_writes_ties_only_when_asked(tmp_path):
    records = [_pick("p0", "first"), _pick("tied", "tie")]
    out = tmp_path / "pairs.parquet"
    with pytest.raises(ValueError, match="'tied'.*tie"):
        write_pairs("pickapic_v2", out, records)
    assert not out.exists()
    write_pairs("pickapic_v2", out, records, ties=True)
    assert [r.label for r in read_back("pickapic_v2", out)] == ["first", "tie"]


# --- VideoDPO --------------------------------------------------------------------------

def test_videodpo_round_trip(tmp_path):
    root = tmp_path / "videodpo"
    a = str(write_video(root / "clips" / "a.mp4", clip(40), fps=4).resolve())
    b = str((root / "frames" / "b").resolve())
    write_frames(b, clip(90), ext="png")
    c = tuple(str(p.resolve()) for p in write_frames(root / "frames" / "c", clip(140)))
    records = [
        pair("video_generation", "videodpo", "v0", (
            Media(kind="video", path=a, field="chosen"),
            Media(kind="frames", path=b, field="rejected")), "first",
            prompt="a red circle moving left", evidence=("good", "bad"),
            meta={"chosen_score": 0.8, "rejected_score": 0.3, "ur_scores": [0.8, 0.3]}),
        pair("video_generation", "videodpo", "v1", (
            Media(kind="frames", frames=c, field="rejected"),
            Media(kind="video", path=a, field="chosen")), "second",
            prompt="a blue square standing still", evidence=("worse", "better"),
            meta={"ur_scores": [0.2, 0.7]}),
    ]
    out = write_pairs("videodpo", root / "pairs.json", records)
    back = read_back("videodpo", out)
    assert back == [chosen_first(r) for r in records]
    assert back[1].label == "first" and back[1].media[1].frames == c
    assert back[1].evidence == ("better", "worse") and back[1].meta["ur_scores"] == (0.7, 0.2)
    assert back[0].meta["chosen_score"] == 0.8
    rows = json.loads(out.read_text())
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("clips/a.mp4", "frames/b")
    assert rows[1]["rejected"] == [f"frames/c/frame_{k:04d}.jpg" for k in range(4)]
    # the same clip decodes from the record read back
    assert np.array_equal(load_media(back[0].media[0], 4), load_media(records[0].media[0], 4))


# --- ShareGPTVideo DPO -----------------------------------------------------------------

def test_sharegptvideo_dpo_round_trip(tmp_path):
    root = tmp_path / "sharegpt"
    a = str(write_video(root / "videos" / "a.mp4", clip(60), fps=4).resolve())
    b = str((root / "frames" / "vid_b").resolve())
    write_frames(b, clip(120))
    records = [
        pair("video_understanding", "sharegptvideo_dpo", "s0",
             (Media(kind="video", path=a, field="video"),), "first",
             prompt="Which way does the circle move?",
             responses=("It is moving left.", "It is moving up."),
             evidence=("a red circle moving left",), response_scores=(1.0, 0.0),
             meta={"chosen_score": 1.0, "rejected_score": 0.0}),
        pair("video_understanding", "sharegptvideo_dpo", "s1",
             (Media(kind="frames", path=b, field="video"),), "second",
             prompt="What colour is the shape?", responses=("It is blue.", "It is green."),
             response_scores=(0.0, 1.0)),
    ]
    out = write_pairs("sharegptvideo_dpo", root / "dpo.jsonl", records)
    back = read_back("sharegptvideo_dpo", out)
    assert back == [chosen_first(r) for r in records]
    assert back[1].responses == ("It is green.", "It is blue.")
    assert back[1].response_scores == (1.0, 0.0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["video"] for r in rows] == ["videos/a.mp4", "frames/vid_b"]
    assert set(rows[1]) == {"id", "video", "prompt", "chosen", "rejected", "ur_scores"}


# --- image-understanding DPO -----------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_image_dpo_round_trip(tmp_path, suffix):
    root = tmp_path / "image_dpo"
    red = png_file(root / "images" / "red.png", (220, 40, 40))
    blue = png_file(root / "images" / "sub" / "blue.png", (40, 90, 220))
    records = [
        pair("image_understanding", "image_dpo", "i0",
             (Media(kind="image", path=red, field="image"),), "first",
             prompt="What colour is the shape?", responses=("It is red.", "It is blue."),
             evidence=("a red circle on the left",), response_scores=(1.0, 0.0)),
        pair("image_understanding", "image_dpo", "i1",
             (Media(kind="image", path=blue, field="image"),), "second",
             prompt="Describe the image.",
             responses=("A green square.", "A blue square at the top."),
             meta={"answer": "A blue square at the top."}),
    ]
    out = write_pairs("image_dpo", root / f"pairs{suffix}", records)
    back = read_back("image_dpo", out)
    assert back == [chosen_first(r) for r in records]
    assert back[1].meta == {"answer": "A blue square at the top."}
    assert load_media(back[0].media[0], 1).getpixel((0, 0)) == (220, 40, 40)
    text = out.read_text()
    rows = json.loads(text) if suffix == ".json" else [json.loads(x) for x in text.splitlines()]
    assert [r["image"] for r in rows] == ["images/red.png", "images/sub/blue.png"]
    assert rows[1]["chosen"] == "A blue square at the top."


def test_image_dpo_is_checked_by_the_corpus_command(tmp_path, capsys):
    red = png_file(tmp_path / "images" / "red.png", (220, 40, 40))
    records = [pair("image_understanding", "image_dpo", f"i{k}",
                    (Media(kind="image", path=red, field="image"),), label,
                    prompt="What colour is it?", responses=("It is red.", "It is blue."))
               for k, label in enumerate(["first", "second"])]
    out = write_pairs("image_dpo", tmp_path / "pairs.jsonl", records)
    assert main(["corpus", "check", "image_dpo", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 2 and report["by_task"] == {"image_understanding": 2}
    assert report["by_label"] == {"first": 2, "second": 0, "tie": 0}


def test_image_dpo_refuses_image_bytes(tmp_path):
    record = pair("image_understanding", "image_dpo", "inline",
                  (Media(kind="image", data=png((1, 2, 3)), field="image"),), "first",
                  prompt="What colour is it?", responses=("It is red.", "It is blue."))
    with pytest.raises(ValueError, match="'inline'.*bytes"):
        write_pairs("image_dpo", tmp_path / "pairs.jsonl", [record])
    assert not (tmp_path / "pairs.jsonl").exists()


# --- what every pair writer refuses ----------------------------------------------------

def _records_for(task: str, media_dir: Path, label: str, rid: str) -> PreferenceRecord:
    """One pairwise record of ``task`` whose media live in ``media_dir``."""
    source = PAIR_SCHEMAS[task]
    if task == "image_generation":
        return _pick(rid, label)
    if task == "video_generation":
        v = str(write_video(media_dir / f"{rid}.mp4", clip(50), fps=4).resolve())
        fields = ("rejected", "chosen") if label == "second" else ("chosen", "rejected")
        return pair(task, source, rid, tuple(Media(kind="video", path=v, field=f)
                                             for f in fields),
                    label, prompt="a red circle moving up")
    if task == "video_understanding":
        v = str(write_video(media_dir / f"{rid}.mp4", clip(50), fps=4).resolve())
        media = (Media(kind="video", path=v, field="video"),)
    else:
        media = (Media(kind="image", path=png_file(media_dir / f"{rid}.png", (9, 9, 9)),
                       field="image"),)
    return pair(task, source, rid, media, label, prompt="What colour is it?",
                responses=("It is red.", "It is blue."))


@pytest.mark.parametrize("task", sorted(PAIR_SCHEMAS))
def test_ties_are_refused(tmp_path, task):
    name = PAIR_SCHEMAS[task]
    out = tmp_path / ("pairs.parquet" if name == "pickapic_v2" else "pairs.jsonl")
    records = [_records_for(task, tmp_path / "media", "first", "ok"),
               _records_for(task, tmp_path / "media", "tie", "even-7")]
    with pytest.raises(ValueError, match="'even-7' is a tie"):
        write_pairs(name, out, records)
    assert not out.exists()


@pytest.mark.parametrize("task", ["video_generation", "video_understanding",
                                  "image_understanding"])
def test_media_outside_the_tables_folder_are_refused(tmp_path, task):
    name = PAIR_SCHEMAS[task]
    record = _records_for(task, tmp_path / "elsewhere", "second", "far")
    out = tmp_path / "pairs" / "dpo.jsonl"
    with pytest.raises(ValueError, match="'far'.*outside"):
        write_pairs(name, out, [record])
    assert not out.exists()
    # with a media root that holds both, paths are written relative to it
    write_pairs(name, out, [record], media_root=tmp_path)
    row = json.loads(out.read_text())
    media = row.get("video", row.get("image", row.get("chosen")))
    assert media.startswith("elsewhere/")
    assert read_back(name, out, media_root=tmp_path) == [chosen_first(record)]


def test_pairs_of_another_task_or_form_are_refused(tmp_path):
    record = _records_for("video_understanding", tmp_path, "first", "vu")
    with pytest.raises(ValueError, match="'vu'.*video_understanding"):
        write_pairs("image_dpo", tmp_path / "x.jsonl", [record])
    with pytest.raises(ValueError, match="read only"):
        write_pairs("hpdv2", tmp_path / "x.json", [record])


@pytest.mark.parametrize("name", sorted(PAIR_SCHEMAS.values()))
def test_no_pairs_is_an_empty_table(tmp_path, name):
    out = write_pairs(name, tmp_path / ("e.parquet" if name == "pickapic_v2" else "e.jsonl"), [])
    assert out.is_file() and read_back(name, out) == []


def test_every_pair_schema_is_registered_with_a_writer():
    for task, name in PAIR_SCHEMAS.items():
        adapter = get_source(name)
        assert task in adapter.TASKS and callable(adapter.write_pairs)


# --- the synthetic world ---------------------------------------------------------------

def test_the_worlds_pair_tables_are_what_the_writers_write(tmp_path):
    """Reading a world's DPO pair table and writing it back gives the same bytes: the
    world writes these schemas through the adapters' writers, and nothing is lost."""
    manifest = write_world(tmp_path / "world", size=96, seed=0, difficulty=1, workers=1)
    pair_sources = {SCHEMAS[(task, "pairwise")][0] for task in PAIR_SCHEMAS} & \
        set(PAIR_SCHEMAS.values())
    assert pair_sources == {"pickapic_v2", "videodpo", "sharegptvideo_dpo"}
    seen = set()
    for e in manifest["entries"]:
        if e["source"] not in pair_sources or e.get("benchmark"):
            continue
        table = tmp_path / "world" / e["path"]
        records = read_back(e["source"], table)
        assert len(records) == e["records"]
        again = table.with_name("again" + table.suffix)
        options = {"ties": True} if e["source"] == "pickapic_v2" else {}
        write_pairs(e["source"], again, records, **options)
        assert again.read_bytes() == table.read_bytes(), e["path"]
        seen.add(e["source"])
    assert seen == pair_sources
