"""Source adapters: each public schema, written small in tmp_path, read through
``read_source``. Good rows become records; bad rows become RecordErrors that name the
file, the row and the field, while the good rows of the same file still come through."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ur.data.media import write_video
from ur.data.records import PreferenceRecord, RecordError
from ur.data.sources import SOURCE_NAMES, get_source, read_source

# --- helpers ---------------------------------------------------------------------------

ESCAPE = "../../etc/passwd"


def image(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def video(path: Path, shade: int = 60) -> Path:
    frames = np.full((4, 16, 16, 3), shade, dtype=np.uint8)
    frames[:, :, :8] = 255 - shade
    return write_video(path, frames, fps=4)


def frame_folder(path: Path, n: int = 3) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.new("RGB", (8, 8), (20 * k, 90, 160)).save(path / f"{k:03d}.jpg", quality=90)
    return path


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows, extra_lines=()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                        for k, v in r.items()})
    return path


def read(name: str, path, **options) -> tuple[list[PreferenceRecord], list[RecordError]]:
    items = list(read_source(name, path, **options))
    records = [x for x in items if isinstance(x, PreferenceRecord)]
    errors = [x for x in items if isinstance(x, RecordError)]
    assert len(records) + len(errors) == len(items)
    return records, errors


def error_at(errors: list[RecordError], row) -> RecordError:
    found = [e for e in errors if e.row == row]
    assert len(found) == 1, f"expected one error at row {row}, got {errors}"
    return found[0]


def assert_errors(errors, file, expected: dict):
    """``expected`` maps row -> field; every error is located in ``file``."""
    assert sorted(e.row for e in errors) == sorted(expected), errors
    for row, field in expected.items():
        e = error_at(errors, row)
        assert e.file == str(file), e
        assert e.field == field, e


def by_id(records) -> dict[str, PreferenceRecord]:
    out = {r.id: r for r in records}
    assert len(out) == len(records), "ids must be unique"
    return out


# --- the registry ----------------------------------------------------------------------

def test_every_source_module_declares_itself():
    for name in SOURCE_NAMES:
        mod = get_source(name)
        assert mod.NAME == name
        assert mod.TASKS and callable(mod.read)


def test_missing_path_is_one_located_error(tmp_path):
    missing = tmp_path / "nope.json"
    records, errors = read("hpdv2", missing)
    assert records == [] and len(errors) == 1
    assert errors[0].file == str(missing)


# --- HPDv2 -----------------------------------------------------------------------------

def test_hpdv2_train_and_test_layouts(tmp_path):
    for k in range(4):
        image(tmp_path / "imgs" / f"{k}.png", (60 * k, 0, 0))
    rows = [
        {"prompt": "a red cube", "file_path": ["imgs/0.png", "imgs/1.png"],
         "human_preference": [1, 0]},
        {"prompt": "a red cube", "file_path": ["imgs/0.png", "imgs/1.png"],
         "human_preference": [0, 1], "ur_evidence": ["e0", "e1"]},
        {"prompt": "a red cube", "file_path": ["imgs/0.png", "imgs/1.png"],
         "human_preference": [1, 1]},
        {"file_path": ["imgs/0.png", "imgs/1.png"], "human_preference": [1, 0]},   # 3
        {"prompt": "p", "file_path": ["imgs/0.png", "imgs/1.png"],
         "human_preference": [2, 0]},                                             # 4
        {"prompt": "p", "file_path": ["imgs/0.png", ESCAPE],
         "human_preference": [1, 0]},                                             # 5
        {"prompt": "p", "file_path": ["imgs/0.png", "imgs/1.png"],
         "human_preference": ["yes", 0]},                                         # 6
        {"prompt": "three balls", "image_path": ["imgs/1.png", "imgs/2.png", "imgs/3.png"],
         "rank": [1, 2, 2], "ur_evidence": ["a", "b", "c"]},                      # 7
        {"prompt": "p", "image_path": ["imgs/1.png", "imgs/2.png"], "rank": [1]},  # 8
        {"prompt": "p"},                                                          # 9
    ]
    f = write_json(tmp_path / "train.json", rows)
    records, errors = read("hpdv2", f)
    assert_errors(errors, f, {3: "prompt", 4: "human_preference", 5: "file_path",
                              6: "human_preference", 8: "rank", 9: "file_path"})
    recs = by_id(records)
    assert recs["train-0"].label == "first"
    assert recs["train-1"].label == "second"
    assert recs["train-1"].evidence == ("e0", "e1")
    assert recs["train-2"].label == "tie"
    r0 = recs["train-0"]
    assert (r0.task, r0.form, r0.source, r0.row, r0.file) == (
        "image_generation", "pairwise", "hpdv2", 0, str(f))
    assert [m.path for m in r0.media] == [str((tmp_path / "imgs" / f"{k}.png").resolve())
                                         for k in (0, 1)]
    assert all(m.kind == "image" for m in r0.media)
    # test layout: all 3 pairs of the ranked row, equal ranks tie
    assert {i: recs[i].label for i in ("train-7-0-1", "train-7-0-2", "train-7-1-2")} == {
        "train-7-0-1": "first", "train-7-0-2": "first", "train-7-1-2": "tie"}
    pair = recs["train-7-1-2"]
    assert Path(pair.media[0].path).name == "2.png" and Path(pair.media[1].path).name == "3.png"
    assert pair.evidence == ("b", "c") and pair.row == 7


def test_hpdv2_media_root(tmp_path):
    image(tmp_path / "media" / "a.png")
    image(tmp_path / "media" / "b.png")
    data = tmp_path / "ann"
    data.mkdir()
    f = write_json(data / "test.json", [{"prompt": "x", "image_path": ["a.png", "b.png"],
                                         "rank": [2, 1]}])
    records, errors = read("hpdv2", f, media_root=tmp_path / "media")
    assert errors == [] and [r.label for r in records] == ["second"]
    assert records[0].media[0].path == str((tmp_path / "media" / "a.png").resolve())


# --- EvalMuse --------------------------------------------------------------------------

def test_evalmuse(tmp_path):
    image(tmp_path / "img" / "0.png")
    rows = [
        {"prompt": "a cat", "img_path": "img/0.png", "total_score": [3, 4, 5],
         "element_score": {"cat (animal)": [1, 1]}, "prompt_id": "p0"},
        {"prompt": "a cat", "img_path": "img/0.png", "total_score": 2, "id": "own-id"},
        {"prompt": "a cat", "img_path": "img/0.png", "total_score": [None, 1]},
        {"prompt": "a cat", "img_path": "img/0.png", "total_score": ["good"]},   # 3
        {"prompt": "a cat", "img_path": "img/0.png", "total_score": [4, 7]},     # 4
        {"prompt": "a cat", "total_score": 3},                                  # 5
        {"prompt": "a cat", "img_path": "img/0.png", "total_score": [None]},     # 6
    ]
    f = write_json(tmp_path / "evalmuse_train.json", rows)
    records, errors = read("evalmuse", f)
    assert_errors(errors, f, {3: "total_score", 4: "total_score", 5: "img_path",
                              6: "total_score"})
    recs = by_id(records)
    r = recs["evalmuse_train-0"]
    assert (r.task, r.form, r.score, r.scale) == ("image_generation", "pointwise", 4.0, (1, 5))
    assert r.meta["element_score"] == {"cat (animal)": [1, 1]} and r.meta["prompt_id"] == "p0"
    assert r.media[0].path == str((tmp_path / "img" / "0.png").resolve())
    assert recs["own-id"].score == 2.0
    assert recs["evalmuse_train-2"].score == 1.0


# --- VideoFeedback ---------------------------------------------------------------------

def _vf_row(i, scores, spaces=True, **extra):
    names = ["visual quality", "temporal consistency", "dynamic degree",
             "text-to-video alignment", "factual consistency"]
    if not spaces:
        names = [n.replace(" ", "_").replace("-", "_") for n in names]
    row = {"id": f"vf{i}", "images": [f"frames/{i}/000.jpg", f"frames/{i}/001.jpg"],
           ("text prompt" if spaces else "text_prompt"): "a ball rolls left"}
    row.update(dict(zip(names, scores, strict=True)))
    row.update(extra)
    return row


def test_videofeedback(tmp_path):
    for i in range(3):
        frame_folder(tmp_path / "frames" / str(i), 2)
    rows = [
        _vf_row(0, [4, 3, 2, 1, 2]),
        _vf_row(1, [1, 1, 1, 1, 1], spaces=False),
        _vf_row(2, [4, 4, 4, 4, "high"]),                        # 2: non-numeric
        _vf_row(2, [4, 4, 5, 4, 4]),                             # 3: off the 1-4 scale
        {k: v for k, v in _vf_row(2, [1, 2, 3, 4, 1]).items()
         if k != "dynamic degree"},                              # 4: missing dimension
        _vf_row(2, [1, 2, 3, 4, 1], images=[ESCAPE]),            # 5
    ]
    f = write_json(tmp_path / "vf.json", rows)
    records, errors = read("videofeedback", f)
    assert_errors(errors, f, {2: "factual consistency", 3: "dynamic degree",
                              4: "dynamic degree", 5: "images"})
    recs = by_id(records)
    r = recs["vf0"]
    assert (r.task, r.form, r.scale) == ("video_generation", "pointwise", (1, 4))
    assert r.score == pytest.approx(2.4)
    assert r.prompt == "a ball rolls left"
    assert r.media[0].kind == "frames" and len(r.media[0].frames) == 2
    assert r.media[0].frames[0] == str((tmp_path / "frames/0/000.jpg").resolve())
    assert recs["vf1"].score == 1.0 and recs["vf1"].meta["dimensions"]["dynamic degree"] == 1

    records, errors = read("videofeedback", f, dimension="visual_quality")
    recs = by_id(records)
    assert recs["vf0"].score == 4.0 and recs["vf0"].meta["dimension"] == "visual quality"
    # a row missing another dimension still serves the chosen one
    assert recs["vf2"].score == 1.0 and error_at(errors, 2).field == "factual consistency"

    records, errors = read("videofeedback", f, dimension="smell")
    assert records == [] and len(errors) == 1 and errors[0].field == "dimension"


# --- VideoDPO --------------------------------------------------------------------------

def test_videodpo(tmp_path):
    video(tmp_path / "v" / "a.mp4", 40)
    video(tmp_path / "v" / "b.mp4", 90)
    frame_folder(tmp_path / "v" / "c")
    rows = [
        {"id": "d0", "caption": "a dog runs", "chosen": "v/a.mp4", "rejected": "v/b.mp4",
         "ur_evidence": ["good", "bad"]},
        {"id": "d1", "caption": "a dog runs", "chosen": "v/c", "rejected": "v/a.mp4"},
        {"id": "d2", "caption": "a dog runs", "chosen": ESCAPE, "rejected": "v/a.mp4"},
        {"id": "d3", "chosen": "v/a.mp4", "rejected": "v/b.mp4"},
        {"id": "d4", "caption": "a dog", "chosen": "v/a.mp4"},
    ]
    f = write_json(tmp_path / "videodpo.json", rows)
    records, errors = read("videodpo", f)
    assert_errors(errors, f, {2: "chosen", 3: "caption", 4: "rejected"})
    recs = by_id(records)
    assert all(r.label == "first" and r.task == "video_generation" for r in records)
    assert [m.kind for m in recs["d0"].media] == ["video", "video"]
    assert recs["d0"].media[0].path == str((tmp_path / "v" / "a.mp4").resolve())
    assert recs["d0"].evidence == ("good", "bad")
    assert [m.kind for m in recs["d1"].media] == ["frames", "video"]
    # the DataModule swaps; the record supports it
    assert recs["d0"].swapped().label == "second"


# --- LLaVA-Critic ----------------------------------------------------------------------

def _conv(human, gpt):
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


def test_llava_critic(tmp_path):
    image(tmp_path / "coco" / "1.jpg")
    human = "<image>\nQuestion: [what colour?]\nAnswer 1: [red]\nAnswer 2: [blue]"
    rows = [
        {"id": "c0", "image": "coco/1.jpg", "source": "VLFeedback",
         "conversations": _conv(human, "Answer 2 names the colour.\nAnswer 2 is better")},
        {"id": "c1", "image": "coco/1.jpg",
         "conversations": _conv(human, "Both answers are equally good")},
        {"id": "c2", "image": "coco/1.jpg",
         "conversations": _conv("<image>\nRate the answer. Question: [q] Answer: [a]",
                                "Accurate and clear. Final Score: 85")},
        {"id": "c3", "image": "coco/1.jpg",
         "conversations": _conv(human, "Both have merits; hard to say.")},     # no verdict
        {"id": "c4", "image": "coco/1.jpg",
         "conversations": _conv(human, "Final Score: 150")},                  # off scale
        {"id": "c5", "conversations": _conv(human, "Answer 1 is better")},     # no image
        {"id": "c6", "image": ESCAPE, "conversations": _conv(human, "Answer 1 is better")},
        {"id": "c7", "image": "coco/1.jpg",
         "conversations": [{"from": "human", "value": human}]},               # no gpt turn
        {"id": "c8", "image": "coco/1.jpg", "conversations": _conv(human, "Final Score: abc")},
    ]
    f = write_json(tmp_path / "critic.json", rows)
    records, errors = read("llava_critic", f)
    assert_errors(errors, f, {3: "conversations", 4: "conversations", 5: "image", 6: "image",
                              7: "conversations", 8: "conversations"})
    recs = by_id(records)
    c0 = recs["c0"]
    assert (c0.task, c0.form, c0.label) == ("image_understanding", "pairwise", "second")
    assert c0.instruction == "Question: [what colour?]\nAnswer 1: [red]\nAnswer 2: [blue]"
    assert c0.prompt == c0.instruction
    assert c0.target == "Answer 2 names the colour.\nAnswer 2 is better"
    assert c0.responses == () and c0.meta["origin"] == "VLFeedback"
    assert c0.media[0].path == str((tmp_path / "coco" / "1.jpg").resolve())
    assert recs["c1"].label == "tie"
    c2 = recs["c2"]
    assert (c2.form, c2.score, c2.scale, c2.label) == ("pointwise", 85.0, (0, 100), None)

    # the form option: pointwise rows only parse as pointwise
    records, errors = read("llava_critic", f, form="pointwise", scale=(0, 200))
    assert by_id(records).keys() == {"c2", "c4"}
    assert by_id(records)["c4"].scale == (0, 200)
    assert error_at(errors, 0).field == "conversations"


# --- ShareGPTVideo DPO -----------------------------------------------------------------

def test_sharegptvideo_dpo(tmp_path):
    frame_folder(tmp_path / "frames" / "vid1")
    video(tmp_path / "clips" / "vid2.mp4")
    rows = [
        {"id": "s0", "video": "frames/vid1", "prompt": "<video>\nWhat happens?",
         "chosen": "A ball rolls.", "rejected": "Nothing.", "chosen_score": 4.5},
        {"id": "s1", "video": "clips/vid2.mp4", "prompt": "What colour is it?",
         "chosen": "Grey.", "rejected": "Pink."},
        {"id": "s2", "video": "frames/vid1", "prompt": "Q?", "chosen": "", "rejected": "x"},
        {"id": "s3", "video": ESCAPE, "prompt": "Q?", "chosen": "a", "rejected": "b"},
    ]
    f = write_jsonl(tmp_path / "dpo.jsonl", rows, extra_lines=["{not json"])
    records, errors = read("sharegptvideo_dpo", f)
    assert_errors(errors, f, {2: "chosen", 3: "video", 4: None})
    recs = by_id(records)
    s0 = recs["s0"]
    assert (s0.task, s0.form, s0.label) == ("video_understanding", "pairwise", "first")
    assert s0.prompt == "What happens?"
    assert s0.responses == ("A ball rolls.", "Nothing.")
    assert s0.media[0].kind == "frames"
    assert s0.media[0].path == str((tmp_path / "frames" / "vid1").resolve())
    assert s0.meta["chosen_score"] == 4.5
    assert recs["s1"].media[0].kind == "video"
    assert recs["s1"].swapped().responses == ("Pink.", "Grey.")


# --- image-understanding DPO pairs -----------------------------------------------------

def test_image_dpo(tmp_path):
    image(tmp_path / "imgs" / "1.png")
    rows = [
        {"id": "i0", "image": "imgs/1.png", "prompt": "<image>\nWhat colour is it?",
         "chosen": "It is red.", "rejected": "It is blue.", "chosen_score": 1.0,
         "ur_evidence": ["a red square in the center"], "ur_scores": [1.0, 0.0]},
        {"id": "i1", "image": "imgs/1.png", "prompt": "Q?", "chosen": "a", "rejected": " "},
        {"id": "i2", "image": ESCAPE, "prompt": "Q?", "chosen": "a", "rejected": "b"},
        {"id": "i3", "prompt": "Q?", "chosen": "a", "rejected": "b"},
        {"id": "i4", "image": "imgs/1.png", "prompt": "<image>", "chosen": "a",
         "rejected": "b"},
        {"id": "i5", "image": ["imgs/1.png"], "prompt": "Q?", "chosen": "a", "rejected": "b"},
    ]
    f = write_jsonl(tmp_path / "pairs.jsonl", rows, extra_lines=["[1, 2]"])
    records, errors = read("image_dpo", f)
    assert_errors(errors, f, {1: "rejected", 2: "image", 3: "image", 4: "prompt",
                              5: "image", 6: None})
    (i0,) = records
    assert (i0.task, i0.form, i0.label, i0.source) == ("image_understanding", "pairwise",
                                                        "first", "image_dpo")
    assert i0.prompt == "What colour is it?" and i0.responses == ("It is red.", "It is blue.")
    assert i0.media[0].kind == "image"
    assert i0.media[0].path == str((tmp_path / "imgs" / "1.png").resolve())
    assert i0.evidence == ("a red square in the center",) and i0.response_scores == (1.0, 0.0)
    assert i0.meta == {"chosen_score": 1.0}


# --- GenAI-Bench -----------------------------------------------------------------------

def test_genai_bench(tmp_path):
    image(tmp_path / "l.png", (255, 0, 0))
    image(tmp_path / "r.png", (0, 0, 255))
    video(tmp_path / "lv.mp4")
    video(tmp_path / "media" / "rv.mp4")
    img = {"prompt": "a red square", "left_image": "l.png", "right_image": "r.png"}
    vid = {"prompt": "a spinning top", "left_video": "lv.mp4", "right_video": "media/rv.mp4"}
    rows = [
        {**img, "vote_type": "leftvote", "left_model": "m1", "right_model": "m2"},
        {**img, "vote_type": "rightvote"},
        {**img, "vote_type": "tievote"},
        {**img, "vote_type": "bothbad_vote"},
        {**vid, "vote_type": "rightvote"},
        {**img, "vote_type": "maybe"},                                          # 5
        {"prompt": "x", "vote_type": "leftvote"},                               # 6
        {**vid, "right_video": ESCAPE, "vote_type": "leftvote"},                # 7
        {**img, "left_image": None, "vote_type": "leftvote"},                   # 8
        {**vid, "right_video": "https://example.org/files/missing.mp4",
         "vote_type": "leftvote"},                                              # 9
    ]
    f = write_json(tmp_path / "genai.json", rows)
    records, errors = read("genai_bench", f)
    assert_errors(errors, f, {5: "vote_type", 6: "left_image", 7: "right_video",
                              8: "left_image", 9: "right_video"})
    recs = by_id(records)
    assert [recs[f"genai-{i}"].label for i in range(4)] == ["first", "second", "tie", "tie"]
    assert recs["genai-3"].meta["vote_type"] == "bothbad_vote"
    assert recs["genai-0"].meta["left_model"] == "m1"
    assert recs["genai-0"].task == "image_generation"
    v = recs["genai-4"]
    assert (v.task, v.label) == ("video_generation", "second")
    assert [m.kind for m in v.media] == ["video", "video"]
    assert v.media[1].path == str((tmp_path / "media" / "rv.mp4").resolve())

    # a URL reads as the file of that name in the media root, never downloaded
    url_rows = [{**vid, "left_video": "https://example.org/a/lv.mp4",
                 "right_video": "https://example.org/b/rv.mp4", "vote_type": "tievote"}]
    f2 = write_json(tmp_path / "urls.json", url_rows)
    records, errors = read("genai_bench", f2, media_root=tmp_path / "media")
    assert [e.field for e in errors] == ["left_video"]   # lv.mp4 is not in media/
    video(tmp_path / "media" / "lv.mp4")
    records, errors = read("genai_bench", f2, media_root=tmp_path / "media")
    assert errors == [] and records[0].label == "tie"
    assert records[0].media[0].path == str((tmp_path / "media" / "lv.mp4").resolve())


# --- VideoGen-RewardBench --------------------------------------------------------------

def test_videogen_rewardbench(tmp_path):
    video(tmp_path / "videos" / "a.mp4")
    video(tmp_path / "videos" / "b.mp4", 120)
    base = {"path_A": "videos/a.mp4", "path_B": "videos/b.mp4", "prompt": "waves crash",
            "A_model": "gen1", "B_model": "gen2"}
    rows = [
        {**base, "VQ": "B", "MQ": "A", "TA": "same", "Overall": "A"},
        {**base, "VQ": "A", "MQ": "A", "TA": "A", "Overall": "B"},
        {**base, "VQ": "same", "MQ": "B", "TA": "A", "Overall": "same"},
        {**base, "VQ": "A", "MQ": "A", "TA": "A", "Overall": "C"},              # 3
        {**base, "path_A": ESCAPE, "VQ": "A", "MQ": "A", "TA": "A", "Overall": "A"},  # 4
        {**base, "prompt": "", "VQ": "A", "MQ": "A", "TA": "A", "Overall": "A"},  # 5
    ]
    f = write_csv(tmp_path / "videogen-rewardbench.csv", rows)
    records, errors = read("videogen_rewardbench", f)
    assert_errors(errors, f, {3: "Overall", 4: "path_A", 5: "prompt"})
    recs = by_id(records)
    stem = "videogen-rewardbench"
    assert [recs[f"{stem}-{i}"].label for i in range(3)] == ["first", "second", "tie"]
    r = recs[f"{stem}-0"]
    assert r.meta["verdicts"] == {"VQ": "B", "MQ": "A", "TA": "same", "Overall": "A"}
    assert r.meta["A_model"] == "gen1" and r.task == "video_generation"
    assert r.media[1].path == str((tmp_path / "videos" / "b.mp4").resolve())

    records, errors = read("videogen_rewardbench", f, dimension="vq")
    labels = {r.row: r.label for r in records}
    assert labels[0] == "second" and labels[2] == "tie" and labels[3] == "first"
    assert {e.row for e in errors} == {4, 5}

    records, errors = read("videogen_rewardbench", f, dimension="smell")
    assert records == [] and [e.field for e in errors] == ["dimension"]


# --- VL-RewardBench --------------------------------------------------------------------

def _vl_rows():
    return [
        {"id": "RLAIF-V_1", "query": "What is on the table?", "response": ["A cup.", "A cat."],
         "image": "imgs/q.png", "human_ranking": [0, 1], "query_source": "rlaif-v"},
        {"id": "wildvision_2", "query": "Describe.", "response": ["Red.", "Blue."],
         "image": "imgs/q.png", "human_ranking": [1, 0], "query_source": "wildvision-battle"},
        {"id": "mathverse_3", "query": "Solve.", "response": ["4", "5"],
         "image": "imgs/q.png", "human_ranking": [0, 1], "query_source": "mathverse"},
        {"id": "x_4", "query": "Q?", "response": ["a", "b"], "image": "imgs/q.png",
         "human_ranking": [0, 2], "query_source": "vlfeedback"},                # 3
        {"id": "x_5", "query": "Q?", "response": ["only one"], "image": "imgs/q.png",
         "human_ranking": [0, 1], "query_source": "vlfeedback"},                # 4
        {"id": "x_6", "response": ["a", "b"], "image": "imgs/q.png",
         "human_ranking": [0, 1], "query_source": "vlfeedback"},                # 5
    ]


def test_vl_rewardbench(tmp_path):
    image(tmp_path / "imgs" / "q.png")
    f = write_json(tmp_path / "vlrb.json", _vl_rows())
    records, errors = read("vl_rewardbench", f)
    assert_errors(errors, f, {3: "human_ranking", 4: "response", 5: "query"})
    recs = by_id(records)
    r = recs["RLAIF-V_1"]
    assert (r.task, r.form, r.label) == ("image_understanding", "pairwise", "first")
    assert r.responses == ("A cup.", "A cat.") and r.prompt == "What is on the table?"
    assert r.meta == {"group": "hallucination", "query_source": "rlaif-v"}
    assert recs["wildvision_2"].label == "second"
    assert recs["wildvision_2"].meta["group"] == "general"
    assert recs["mathverse_3"].meta["group"] == "reasoning"
    assert r.media[0].path == str((tmp_path / "imgs" / "q.png").resolve())


def test_vl_rewardbench_groups():
    from ur.data.sources.vl_rewardbench import group_of

    assert group_of("povid") == "hallucination"
    assert group_of("RLHF-V") == "hallucination"
    assert group_of("reasoning_tasks") == "reasoning"
    assert group_of("mmmu-pro") == "reasoning"
    assert group_of("VLFeedback") == "general"
    assert group_of(None, "RLHF_12") == "hallucination"
    assert group_of("something-new") == "general"


# --- the UnifiedReward SFT format ------------------------------------------------------

def test_llava_sft(tmp_path):
    image(tmp_path / "i" / "a.png")
    image(tmp_path / "i" / "b.png", (0, 200, 0))
    video(tmp_path / "v" / "a.mp4")
    video(tmp_path / "v" / "b.mp4", 150)
    frame_folder(tmp_path / "v" / "frames")
    frames = [f"v/frames/{k:03d}.jpg" for k in range(3)]
    gen_pair = "<image>\n<image>\nText Caption: [a green cube]. Which image is better?"
    rows = [
        {"id": "ig", "images": ["i/a.png", "i/b.png"],
         "conversations": _conv(gen_pair, "Image 1 has the cube. Image 2 is better")},
        {"id": "vg", "video": ["v/a.mp4", "v/b.mp4"],
         "conversations": _conv("<video>\n<video>\nCaption: [waves]. Compare.",
                                "Video 1 is better")},
        {"id": "iu", "image": "i/a.png",
         "conversations": _conv("<image>\nQuestion: [q]\nAnswer 1: [x]\nAnswer 2: [y]",
                                "Overall Judgment: Answer 1 is better")},
        {"id": "vu", "video": "v/frames",
         "conversations": _conv("<video>\nQuestion: [what moves?] Answer: [a ball]",
                                "Correct. Final Score: 4")},
        {"id": "ip", "image": "i/b.png",
         "conversations": _conv("<image>\nText Caption: [a green cube]. Rate it.",
                                "Final Score: 3")},
        {"id": "vp", "video": frames,
         "conversations": _conv("<video>\nRate this video for the caption [waves].",
                                "Final Score: 7")},
        {"id": "tie", "images": ["i/a.png", "i/b.png"],
         "conversations": _conv(gen_pair, "It's a tie.")},
        # bad rows
        {"id": "b7", "images": ["i/a.png", "i/b.png"],
         "conversations": _conv(gen_pair, "Video 1 is better")},
        {"id": "b8", "images": ["i/a.png", "i/b.png"],
         "conversations": _conv(gen_pair, "They differ in many ways.")},
        {"id": "b9", "image": "i/a.png",
         "conversations": _conv("<image>\nRate this.", "Final Score: 3")},
        {"id": "b10", "image": "i/a.png",
         "conversations": _conv("<image>\nText Caption: [x]. Rate it.", "Final Score: 9")},
        {"id": "b11", "image": "i/a.png"},
        {"id": "b12", "image": ESCAPE,
         "conversations": _conv("<image>\nQuestion: [q] Answer 1: [a] Answer 2: [b]",
                                "Answer 2 is better")},
    ]
    f = write_json(tmp_path / "sft.json", rows)
    records, errors = read("llava_sft", f)
    assert_errors(errors, f, {7: "conversations", 8: "conversations", 9: "task",
                              10: "conversations", 11: "conversations", 12: "image"})
    recs = by_id(records)
    got = {k: (r.task, r.form, r.label, r.score, r.scale) for k, r in recs.items()}
    assert got == {
        "ig": ("image_generation", "pairwise", "second", None, None),
        "vg": ("video_generation", "pairwise", "first", None, None),
        "iu": ("image_understanding", "pairwise", "first", None, None),
        "vu": ("video_understanding", "pointwise", None, 4.0, (1, 5)),
        "ip": ("image_generation", "pointwise", None, 3.0, (1, 5)),
        "vp": ("video_generation", "pointwise", None, 7.0, (1, 10)),
        "tie": ("image_generation", "pairwise", "tie", None, None),
    }
    ig = recs["ig"]
    assert ig.instruction == "Text Caption: [a green cube]. Which image is better?"
    assert ig.target == "Image 1 has the cube. Image 2 is better" and ig.prompt == ig.instruction
    assert [m.path for m in ig.media] == [str((tmp_path / "i" / n).resolve())
                                         for n in ("a.png", "b.png")]
    assert [m.kind for m in recs["vg"].media] == ["video", "video"]
    assert recs["vu"].media[0].kind == "frames"
    vp = recs["vp"].media
    assert len(vp) == 1 and vp[0].kind == "frames" and len(vp[0].frames) == 3

    # options: task= settles the ambiguous row, scale= per task
    records, errors = read("llava_sft", f, task="image_generation",
                           scale={"image_generation": (0, 10)})
    recs = by_id(records)
    assert recs["b9"].task == "image_generation" and recs["b10"].score == 9.0
    assert recs["b10"].scale == (0, 10)
    # a forced task that contradicts the media is refused, naming the media field
    assert error_at(errors, 1).field == "video"


def test_llava_critic_labels_come_from_the_verdict_sentence(tmp_path):
    """A negated tie neither makes the label a tie nor hides the verdict; a target whose
    only verdicts are denied is an error, never a tie or candidate 1."""
    image(tmp_path / "i" / "a.png")
    human = "<image>\nQuestion: [q]\nAnswer 1: [x]\nAnswer 2: [y]"
    rows = [
        {"id": "not-a-tie", "image": "i/a.png",
         "conversations": _conv(human, "Answer 1 is better; this is not a tie.")},
        {"id": "denied", "image": "i/a.png",
         "conversations": _conv(human, "I don't think Answer 1 is better. It is not a tie.")},
    ]
    f = write_json(tmp_path / "critic.json", rows)
    records, errors = read("llava_critic", f)
    assert [(r.id, r.label) for r in records] == [("not-a-tie", "first")]
    assert_errors(errors, f, {1: "conversations"})


def test_llava_sft_task_and_label_come_from_the_verdict_sentence(tmp_path):
    """A "tie-break" is no tie, and a quoted verdict names neither the label nor the kind
    of candidates (a quoted "Video 1" over two images is no contradiction)."""
    image(tmp_path / "i" / "a.png")
    image(tmp_path / "i" / "b.png")
    human = "<image>\n<image>\nText Caption: [a green cube]. Which image is better?"
    rows = [
        {"id": "tie-break", "images": ["i/a.png", "i/b.png"],
         "conversations": _conv(human, "Image 2 is better after a tie-break.")},
        {"id": "quoted", "images": ["i/a.png", "i/b.png"],
         "conversations": _conv(human, "The caption says \"Video 1 is better\". Tie.")},
    ]
    f = write_json(tmp_path / "sft.json", rows)
    records, errors = read("llava_sft", f)
    assert errors == []
    assert {r.id: (r.task, r.label) for r in records} == {
        "tie-break": ("image_generation", "second"), "quoted": ("image_generation", "tie")}


# --- file forms ------------------------------------------------------------------------

def test_file_forms_give_the_same_records(tmp_path):
    """VL-RewardBench as JSON, JSONL, CSV, parquet, a folder with split files, and
    save_to_disk folders (a Dataset, and a DatasetDict with splits)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    image(tmp_path / "imgs" / "q.png")
    rows = _vl_rows()[:3]
    media_root = tmp_path

    def summary(path, **kw):
        records, errors = read("vl_rewardbench", path, media_root=media_root, **kw)
        assert errors == []
        return [(r.id, r.label, r.responses, r.media[0].path, r.meta["group"]) for r in records]

    expected = summary(write_json(tmp_path / "a.json", rows))
    assert len(expected) == 3
    assert summary(write_jsonl(tmp_path / "a.jsonl", rows)) == expected
    assert summary(write_csv(tmp_path / "a.csv", rows)) == expected
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    assert summary(tmp_path / "a.parquet") == expected

    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows[:1])
    write_jsonl(folder / "test.jsonl", rows)
    assert summary(folder, split="test") == expected
    assert len(summary(folder)) == 4

    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "saved"))
    assert summary(tmp_path / "saved") == expected
    datasets.DatasetDict({"train": ds.select([0]), "test": ds}).save_to_disk(
        str(tmp_path / "saved_dict"))
    assert summary(tmp_path / "saved_dict", split="test") == expected
    records, errors = read("vl_rewardbench", tmp_path / "saved_dict")
    assert records == [] and [e.field for e in errors] == ["split"]

    # inline image bytes (the datasets Image struct in parquet) need no media on disk
    blob = (tmp_path / "imgs" / "q.png").read_bytes()
    inline = [{**r, "image": {"bytes": blob, "path": None}} for r in rows]
    pq.write_table(pa.Table.from_pylist(inline), tmp_path / "inline.parquet")
    records, errors = read("vl_rewardbench", tmp_path / "inline.parquet")
    assert errors == [] and len(records) == 3
    assert records[0].media[0].data == blob and records[0].media[0].path is None


def test_csv_cells_hold_lists_and_evidence(tmp_path):
    """HPDv2 rows as CSV: list-valued fields and the ur_evidence column are JSON cells."""
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    rows = [{"prompt": "p", "file_path": ["a.png", "b.png"], "human_preference": [0, 1],
             "ur_evidence": ["x", "y"]},
            {"prompt": "p", "file_path": "a.png", "human_preference": [0, 1]}]
    f = write_csv(tmp_path / "hpd.csv", rows)
    records, errors = read("hpdv2", f)
    assert [r.label for r in records] == ["second"] and records[0].evidence == ("x", "y")
    assert_errors(errors, f, {1: "file_path"})
