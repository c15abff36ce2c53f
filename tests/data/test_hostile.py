"""Hostile files: each reader (JSON, JSONL, CSV, parquet, ``save_to_disk``) and each
adapter loses only what is bad (the row, the line, the row group, the shard, the file),
reports it once with its file, row and field, and reads the rest. ``ur corpus check``
on a folder of such files prints one BAD line per problem, exits 1, counts exactly
with ``--skip-bad``, and never prints a traceback or reaches the network."""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ur.cli import check_corpus, main
from ur.data.datamodule import CorpusError, SourceSpec, load_records
from ur.data.records import RecordError
from ur.data.sources import SOURCE_NAMES, read_source

HUGE_INT = "9" * 5000  # beyond Python's digit limit for int("...")
WIDE_INT = "9" * 400  # an int, but too large for a float
DEEP = "[" * 50_000 + "]" * 50_000  # deeper than the JSON reader's recursion allows


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _row(**changes) -> dict:
    return {"prompt": "a red square", "img_path": "a.png", "total_score": [4, 5], **changes}


def _line(**raw) -> bytes:
    """An EvalMuse row as one JSON text, with ``raw`` values written verbatim."""
    parts = [json.dumps(k) + ": " + v for k, v in
             {k: json.dumps(v) for k, v in _row().items()}.items() if k not in raw]
    parts += [json.dumps(k) + ": " + v for k, v in raw.items()]
    return ("{" + ", ".join(parts) + "}").encode()


# EvalMuse rows as JSON texts, and the field each bad one is reported on (None: the
# row cannot be told apart into fields).
JSON_ROWS: list[tuple[bytes, str | None]] = [
    (_line(), "ok"),
    (_line(prompt='"cafBYTE"').replace(b"BYTE", b"\xff"), "prompt"),  # invalid UTF-8
    (_line(total_score=HUGE_INT), "total_score"),
    (_line(total_score=DEEP), "total_score"),
    (_line(total_score=WIDE_INT), "total_score"),
    (_line(total_score="1e999"), "total_score"),
    (_line(total_score="tru"), None),
    (_line(img_path='{"bytes": "not bytes"}'), "img_path"),
    (_line(img_path="7"), "img_path"),
    (_line(img_path='{"path": 3}'), "img_path"),
    (_line(img_path='"a\\u0000b.png"'), "img_path"),
    (_line(), "ok"),
]


def _evalmuse_rows(n: int) -> list[dict]:
    return [_row(prompt=f"a red square {i}") for i in range(n)]


def _corrupt_row_group(path: Path, group: int) -> None:
    """Overwrite the page header of ``group``'s first column chunk."""
    col = pq.ParquetFile(path).metadata.row_group(group).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + 24] = b"\xab" * 24
    path.write_bytes(bytes(data))


def _pick_rows(n: int, png: bytes) -> list[dict]:
    return [dict(caption=f"pair {i}", jpg_0=png, jpg_1=png, label_0=1.0, label_1=0.0)
            for i in range(n)]


@pytest.fixture
def hostile(tmp_path) -> dict:
    """Hostile files per reader, each as ``(source, path, good records, {(file name,
    row): field})``: every problem the check must report, and nothing else."""
    png = _png()
    (tmp_path / "a.png").write_bytes(png)
    cases = {}

    texts = [text for text, _ in JSON_ROWS]
    bad = {("lines.jsonl", i): f for i, (_, f) in enumerate(JSON_ROWS) if f != "ok"}
    (tmp_path / "lines.jsonl").write_bytes(b"\n".join(texts) + b"\n")
    cases["jsonl"] = ("evalmuse", tmp_path / "lines.jsonl", 2, bad)

    (tmp_path / "list.json").write_bytes(b"[" + b",\n".join(texts) + b"]")
    cases["json"] = ("evalmuse", tmp_path / "list.json", 2,
                     {("list.json", i): f for (_, i), f in bad.items()})

    with (tmp_path / "table.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "img_path", "total_score"])
        w.writerow(["ok", "a.png", "4"])
        w.writerow(["x" * 200_000, "a.png", "4"])  # over the csv module's field limit
        w.writerow(["ok", "a.png", "4", "an extra value"])
        w.writerow(["ok", "a.png", HUGE_INT])
        w.writerow(["ok", "a.png", "-1e999"])
        w.writerow(["ok", "a\x00b.png", "4"])
        w.writerow(["ok", "a.png", "3"])
    data = (tmp_path / "table.csv").read_bytes().replace(b"ok,a.png,3", b"\xffk,a.png,3")
    (tmp_path / "table.csv").write_bytes(data + b"ok,a.png,5\n")
    cases["csv"] = ("evalmuse", tmp_path / "table.csv", 2,
                    {("table.csv", 1): "prompt", ("table.csv", 2): None,
                     ("table.csv", 3): "total_score", ("table.csv", 4): "total_score",
                     ("table.csv", 5): "img_path", ("table.csv", 6): "prompt"})

    # Pick-a-Pic shards: a corrupt one before good ones, one with a corrupt row group
    # between two good ones, one with a value Python cannot hold.
    shards = tmp_path / "pick"
    shards.mkdir()
    (shards / "a-0.parquet").write_bytes(b"PAR1 not a parquet file PAR1")
    pq.write_table(pa.Table.from_pylist(_pick_rows(2, png)), shards / "b-1.parquet")
    pq.write_table(pa.Table.from_pylist(_pick_rows(6, png)), shards / "c-2.parquet",
                   row_group_size=2)
    _corrupt_row_group(shards / "c-2.parquet", 1)
    odd = pa.Table.from_pylist(_pick_rows(2, png)).append_column(
        "when", pa.array([0, 2**62], pa.timestamp("ms")))
    pq.write_table(odd, shards / "d-3.parquet")
    cases["parquet"] = ("pickapic_v2", shards, 2 + 4 + 1,
                        {("a-0.parquet", None): None, ("c-2.parquet", 2): None,
                         ("d-3.parquet", 1): "when"})

    # save_to_disk: three shards, the middle one cut short; and a save that never wrote
    # its state.json.
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(_evalmuse_rows(9)).save_to_disk(str(saved), num_shards=3)
    cut = saved / "data-00001-of-00003.arrow"
    cut.write_bytes(cut.read_bytes()[:-40])
    cases["save_to_disk"] = ("evalmuse", saved, 6, {(cut.name, 3): None})

    unfinished = tmp_path / "unfinished"
    datasets.Dataset.from_list(_evalmuse_rows(4)).save_to_disk(str(unfinished), num_shards=2)
    (unfinished / "state.json").unlink()
    cases["unfinished save_to_disk"] = ("evalmuse", unfinished, 4, {("state.json", None): None})

    # Video generation: frame lists and paths of the wrong type.
    vrows = [dict(caption="a clip", chosen=["f/0.png"], rejected=["f/0.png"]),
             dict(caption="a clip", chosen=[1, 2], rejected=["f/0.png"]),
             dict(caption="a clip", chosen={"path": 5}, rejected=["f/0.png"]),
             dict(caption="a clip", chosen=["f/0.png"], rejected=12.5)]
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "0.png").write_bytes(png)
    (tmp_path / "clips.json").write_text(json.dumps(vrows))
    cases["video media"] = ("videodpo", tmp_path / "clips.json", 1,
                            {("clips.json", 1): "chosen", ("clips.json", 2): "chosen",
                             ("clips.json", 3): "rejected"})
    return cases


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _found(report) -> dict:
    return {(Path(p["file"]).name, p["row"]): p["field"] for p in report["bad"]}


@pytest.mark.parametrize("case", ["jsonl", "json", "csv", "parquet", "save_to_disk",
                                  "unfinished save_to_disk", "video media"])
def test_check_reports_each_bad_part_once_and_reads_the_rest(hostile, case, no_network):
    source, path, n_good, expected = hostile[case]
    report = check_corpus(source, path, media_root=path.parent)
    assert _found(report) == expected
    assert len(report["bad"]) == len(expected)
    assert report["records"] == n_good
    assert all(p["error"] and "\n" not in p["error"] for p in report["bad"])


@pytest.mark.parametrize("case", ["jsonl", "parquet", "save_to_disk"])
def test_corpus_check_strict_and_skip_bad(hostile, case, capsys, no_network):
    source, path, n_good, expected = hostile[case]
    args = ["corpus", "check", source, str(path), "--media-root", str(path.parent)]
    assert main(args) == 1
    out, err = capsys.readouterr()
    bad_lines = [line for line in out.splitlines() if line.startswith("BAD")]
    assert len(bad_lines) == len(expected)
    assert all(str(Path(path).parent) in line for line in bad_lines)
    assert "Traceback" not in out + err
    assert main([*args, "--skip-bad", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == len(expected) and report["records"] == n_good


def _hostile_lines() -> list[bytes]:
    return [b'{"x": "\xff"}', b'{"x": ' + HUGE_INT.encode() + b"}",
            b'{"x": ' + DEEP.encode() + b"}", b'{"x": ', b"[1, 2]"]


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_every_adapter_reads_past_hostile_lines(tmp_path, name):
    """Whatever the schema, a line that cannot be parsed is one error at its row (and
    its field, where the line shows it), and the adapter reads on."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(_hostile_lines()) + b"\n")
    items = list(read_source(name, path))
    assert all(isinstance(x, RecordError) for x in items)
    assert {(e.row, e.field) for e in items} == {(0, "x"), (1, "x"), (2, "x"), (3, None),
                                                 (4, None)}
    assert all(e.file == str(path) for e in items)


def test_training_skips_exactly_the_bad_parts(hostile):
    """The DataModules' reading: with skip_bad, a corrupt shard before good ones costs
    its own rows; strict, it stops setup naming every problem."""
    source, path, n_good, expected = hostile["parquet"]
    (records,), problems = load_records([SourceSpec(source, str(path))], skip_bad=True)
    assert len(records) == n_good and len(problems) == len(expected)
    with pytest.raises(CorpusError, match="a-0.parquet"):
        load_records([SourceSpec(source, str(path))])


def test_training_refuses_an_option_a_source_does_not_take(hostile):
    source, path, _, _ = hostile["jsonl"]
    with pytest.raises(ValueError, match="no option 'dimension'"):
        load_records([SourceSpec(source, str(path), options={"dimension": "Overall"})],
                     skip_bad=True)
