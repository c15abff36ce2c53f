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
