"""`ur corpus check` on broken inputs: one clear problem per broken row, exact counts."""

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ur.cli import main
from ur.data.media import write_video


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def broken(tmp_path):
    """Three sources, each with good rows and the broken inputs the issue lists."""
    # Pick-a-Pic v2: 2 good rows (one a tie), a truncated JPEG, a label out of range,
    # a row without caption.
    good = _png((200, 0, 0))
    rows = [
        dict(caption="a red square", jpg_0=good, jpg_1=good, label_0=1.0, label_1=0.0),
        dict(caption="a tie", jpg_0=good, jpg_1=good, label_0=0.5, label_1=0.5),
        dict(caption="truncated", jpg_0=_jpeg(0)[:300], jpg_1=good, label_0=0.0, label_1=1.0),
        dict(caption="bad label", jpg_0=good, jpg_1=good, label_0=2.0, label_1=0.0),
        dict(caption=None, jpg_0=good, jpg_1=good, label_0=1.0, label_1=0.0),
    ]
    pick = tmp_path / "pick" / "train-0.parquet"
    pick.parent.mkdir()
    pd.DataFrame(rows).to_parquet(pick)

    # VideoDPO: 1 good row, a zero-byte video, a zero-frame video, a missing file, a path
    # escaping the source root.
    vdir = tmp_path / "videodpo"
    (vdir / "v").mkdir(parents=True)
    clip = np.zeros((4, 32, 32, 3), np.uint8)
    write_video(vdir / "v" / "ok.mp4", clip)
    (vdir / "v" / "empty.mp4").write_bytes(b"")
    import av

    with av.open(str(vdir / "v" / "noframes.avi"), "w") as c:  # a stream, no frames
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
    vrows = [
        dict(id="ok", caption="a clip", chosen="v/ok.mp4", rejected="v/ok.mp4"),
        dict(id="zero-byte", caption="a clip", chosen="v/empty.mp4", rejected="v/ok.mp4"),
        dict(id="zero-frame", caption="a clip", chosen="v/ok.mp4", rejected="v/noframes.avi"),
        dict(id="missing", caption="a clip", chosen="v/gone.mp4", rejected="v/ok.mp4"),
        dict(id="escape", caption="a clip", chosen="../../etc/passwd", rejected="v/ok.mp4"),
    ]
    (vdir / "data.json").write_text(json.dumps(vrows))

    # EvalMuse: 1 good row, a non-numeric score, a missing field.
    edir = tmp_path / "evalmuse"
    edir.mkdir()
    (edir / "a.png").write_bytes(good)
    erows = [dict(prompt="a red square", img_path="a.png", total_score=[4, 5]),
             dict(prompt="a red square", img_path="a.png", total_score=["great"]),
             dict(prompt="a red square", total_score=[3])]
    (edir / "data.json").write_text(json.dumps(erows))
    return {"pickapic_v2": (pick, 2, {2: "jpg_0", 3: "label_0", 4: "caption"}),
            "videodpo": (vdir / "data.json", 1, {1: "chosen", 2: "rejected", 3: "chosen",
                                                 4: "chosen"}),
            "evalmuse": (edir / "data.json", 1, {1: "total_score", 2: "img_path"})}


@pytest.mark.parametrize("source", ["pickapic_v2", "videodpo", "evalmuse"])
def test_strict_check_lists_every_problem_with_file_row_field(broken, source, capsys):
    path, n_good, problems = broken[source]
    assert main(["corpus", "check", source, str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == n_good
    found = {p["row"]: p["field"] for p in report["bad"]}
    assert found == problems
    for p in report["bad"]:
        assert p["file"].endswith(path.name) and p["error"]


def test_messages_say_what_is_wrong(broken, capsys):
    path, _, _ = broken["videodpo"]
    main(["corpus", "check", "videodpo", str(path)])
    out = capsys.readouterr().out
    assert "empty (0 bytes)" in out
    assert "escapes the source root" in out
    assert "no decodable frames" in out or "no frames" in out
    assert "Traceback" not in out


def test_skip_bad_counts_exactly_and_exits_zero(broken, capsys):
    path, n_good, problems = broken["pickapic_v2"]
    assert main(["corpus", "check", "pickapic_v2", str(path), "--json", "--skip-bad"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == len(problems) == len(report["bad"])
    assert report["by_label"] == {"first": 1, "second": 0, "tie": 1}
    assert report["by_task"] == {"image_generation": 2} and report["by_form"] == {"pairwise": 2}


def test_missing_path_is_one_clear_problem(tmp_path, capsys):
    assert main(["corpus", "check", "vl_rewardbench", str(tmp_path / "nope.json"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert len(report["bad"]) == 1 and "no such file" in report["bad"][0]["error"]


def test_ur_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "ur.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("fit", "validate", "test", "predict", "corpus"):
        assert command in out
    out = subprocess.run([sys.executable, "-m", "ur.cli", "corpus", "check", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--skip-bad" in out and "pickapic_v2" in out


def _evalmuse(folder, rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(_png((0, 200, 0)))
    rows = rows or [dict(prompt="a green square", img_path="a.png", total_score=[4])]
    (folder / "data.json").write_text(json.dumps(rows))
    return folder / "data.json"


def _check(capsys, *args) -> tuple[int, str, list[str]]:
    code = main(["corpus", "check", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err, [line for line in out.splitlines() if line.startswith("BAD")]


@pytest.mark.parametrize("content", [None, "{not json", '{"entries": 3}'])
def test_missing_or_malformed_manifest_is_one_problem(tmp_path, capsys, content):
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    code, out, bad = _check(capsys, "manifest", tmp_path)
    assert code == 1 and len(bad) == 1 and "manifest.json" in bad[0]


def test_manifest_entries_are_checked_one_by_one(tmp_path, capsys):
    _evalmuse(tmp_path / "world" / "evalmuse")
    kinds = dict(split="train", task="image_generation", form="pointwise")
    entries = [{**kinds, "source": "evalmuse", "path": "evalmuse/data.json"},
               {**kinds, "source": "no_such_source", "path": "evalmuse/data.json"},
               {**kinds, "source": "evalmuse", "path": "../outside.json"},
               {**kinds, "source": "evalmuse"},
               "not an entry"]
    (tmp_path / "world" / "manifest.json").write_text(json.dumps({"entries": entries}))
    assert main(["corpus", "check", "manifest", str(tmp_path / "world"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 1
    assert {(p["row"], p["field"]) for p in report["bad"]} == {
        (1, "source"), (2, "path"), (3, "path"), (4, None)}
    assert all(p["file"].endswith("manifest.json") for p in report["bad"])


def test_unknown_option_is_a_problem_naming_it(tmp_path, capsys):
    path = _evalmuse(tmp_path / "e")
    code, out, bad = _check(capsys, "evalmuse", path, "--option", "dimenson=Overall")
    assert code == 1 and len(bad) == 1 and "field 'dimenson'" in bad[0]
    code, out, bad = _check(capsys, "videogen_rewardbench", path, "--option",
                            "dimension=" + "9" * 5000)
    assert code == 1 and len(bad) == 1 and "field 'dimension'" in bad[0]


@pytest.mark.parametrize("option", ["=Overall", "dimension"])
def test_malformed_option_is_refused_with_a_message(tmp_path, option):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["corpus", "check", "evalmuse", str(_evalmuse(tmp_path / "e")),
              "--option", option])


@pytest.mark.parametrize("frames", ["0", "-2", "two"])
def test_num_frames_must_be_positive(tmp_path, capsys, frames):
    with pytest.raises(SystemExit) as stop:
        main(["corpus", "check", "evalmuse", str(_evalmuse(tmp_path / "e")),
              "--num-frames", frames])
    assert stop.value.code == 2
    assert "--num-frames" in capsys.readouterr().err


def test_a_bad_image_shared_by_pairs_is_one_problem(tmp_path, capsys):
    """HPDv2's test layout makes a pair of every two images of a row: one broken image
    spoils two pairs, and is one problem."""
    folder = tmp_path / "hpd"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(_png((0, 0, 200)))
    (folder / "broken.png").write_bytes(b"not an image")
    rows = [dict(prompt="a blue square", image_path=["a.png", "b.png", "broken.png"],
                 rank=[1, 2, 3])]
    (folder / "test.json").write_text(json.dumps(rows))
    assert main(["corpus", "check", "hpdv2", str(folder / "test.json"), "--json",
                 "--skip-bad"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 1 and report["skipped"] == 1
    assert report["bad"][0]["row"] == 0 and report["bad"][0]["field"] == "image_path"


def test_text_that_cannot_be_tokenized_is_a_problem_at_its_row(tmp_path, capsys):
    """A JSON escape of a lone surrogate (in the prompt or a media path) and a prompt of
    zero-width characters: each a BAD line naming file, row and field; --skip-bad
    skips exactly those rows."""
    ok = dict(prompt="a green square", img_path="a.png", total_score=[4])
    rows = [ok, {**ok, "prompt": "a green \ud800 square"}, {**ok, "img_path": "a\udc00.png"},
            {**ok, "prompt": "\u200b\u200c\u200d\u2060\ufeff "}, ok]
    path = _evalmuse(tmp_path / "e", rows)
    assert "\\ud800" in path.read_text()  # json.dumps writes the escape, as a data set would
    code, out, bad = _check(capsys, "evalmuse", path)
    assert code == 1 and len(bad) == 3
    assert "row 1, field 'prompt': " in bad[0] and "lone surrogate (U+D800)" in bad[0]
    assert "row 2, field 'img_path': " in bad[1] and "lone surrogate" in bad[1]
    assert "row 3, field 'prompt': empty prompt" in bad[2]
    assert main(["corpus", "check", "evalmuse", str(path), "--json", "--skip-bad"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["records"], report["skipped"]) == (2, 3)


def test_an_id_that_several_rows_use_is_one_warning_naming_them(tmp_path, capsys):
    ok = dict(prompt="a green square", img_path="a.png", total_score=[4])
    path = _evalmuse(tmp_path / "e", [{**ok, "id": i} for i in ("a", "b", "a", "c", "a")])
    code, out, bad = _check(capsys, "evalmuse", path)
    warn = [line for line in out.splitlines() if line.startswith("WARN")]
    assert code == 0 and not bad
    assert warn == [f"WARN {path}, rows 0, 2, 4, field 'id': id 'a' of evalmuse is used by 3 rows"]
    main(["corpus", "check", "evalmuse", str(path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 5 and report["repeated_ids"][0]["rows"] == [
        [str(path), 0], [str(path), 2], [str(path), 4]]


def test_media_a_train_and_a_test_record_share_are_problems(tmp_path, capsys):
    """The same file used by a train and a test row of a world is a BAD line naming both
    rows; a copy of a train image under another name is a WARN line (equal bytes may be
    chance: the world's blank frames are equal)."""
    world = tmp_path / "world"
    world.mkdir()
    for name, colour in (("a.png", 10), ("b.png", 20), ("copy_of_b.png", 20), ("c.png", 30)):
        (world / name).write_bytes(_png((colour, 0, 0)))
    def rows(*images):
        return json.dumps([dict(prompt="a square", img_path=i, total_score=[4]) for i in images])
    (world / "train.json").write_text(rows("a.png", "b.png"))
    (world / "test.json").write_text(rows("c.png", "a.png", "copy_of_b.png"))
    kinds = dict(task="image_generation", form="pointwise", source="evalmuse")
    (world / "manifest.json").write_text(json.dumps({"entries": [
        {**kinds, "split": "train", "path": "train.json"},
        {**kinds, "split": "test", "path": "test.json"}]}))
    code, out, bad = _check(capsys, "manifest", world)
    assert code == 1 and len(bad) == 1, out
    train = world / "train.json"
    assert bad[0].startswith(f"BAD  {world / 'test.json'}, row 1, field 'img_path': test "
                             f"record uses the same image as train record {train}, row 0")
    warned = [line for line in out.splitlines() if line.startswith("WARN")]
    assert len(warned) == 1 and warned[0].startswith(
        f"WARN {world / 'test.json'}, row 2, field 'img_path': test record's image has the "
        "bytes of") and f"b.png of train record {train}, row 1" in warned[0]
    code, out, bad = _check(capsys, "manifest", world, "--no-media")  # by path only
    assert code == 1 and len(bad) == 1 and "row 1" in bad[0]
    assert "WARN" not in out


def test_a_fresh_world_passes_its_strict_check(tmp_path, capsys):
    """The README's `ur corpus synth` then `ur corpus check manifest`: the world's blank
    frames are equal across splits by chance, a warning, not a problem."""
    assert main(["corpus", "synth", "--out", str(tmp_path / "w"), "--size", "96"]) == 0
    capsys.readouterr()
    code, out, bad = _check(capsys, "manifest", tmp_path / "w")
    assert code == 0 and not bad, out
