"""What every source adapter shares: reading rows from the files a public data set
ships, resolving media references safely, and locating errors.

Rows come from a single file (parquet, JSON list or dict-of-columns, JSONL, CSV), a
folder of such files, a ``datasets.save_to_disk`` folder, or, when the path does not
exist locally and looks like ``owner/name``, a Hugging Face hub id loaded through
``datasets`` (the only code path that touches the network, and only on request).

The DPO pair schemas are written as well as read: :func:`write_json_rows` and the
helpers after it are what their ``write_pairs`` functions share (the preferred candidate
first, media as paths relative to the folder the reader resolves against, the synthetic
world's extra columns, files replaced atomically).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from ur.data.answers import parse_pairwise, parse_score
from ur.data.records import Media, PreferenceRecord, RecordError, task_modality
from ur.io import UnsafePathError, safe_join, write_text_atomic

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
Item = PreferenceRecord | RecordError


def _json_rows(file: Path) -> Iterator[tuple[int, dict]]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON ({e.msg} at line {e.lineno})", file=file) from e
    if isinstance(data, dict):
        if "data" in data and isinstance(data["data"], list):
            data = data["data"]
        elif data and all(isinstance(v, list) for v in data.values()):
            lengths = {len(v) for v in data.values()}
            if len(lengths) != 1:
                raise RecordError("columns of a dict-of-lists JSON differ in length", file=file)
            keys = list(data)
            data = [dict(zip(keys, vals, strict=True)) for vals in zip(*data.values(), strict=True)]
        else:
            data = [data]
    if not isinstance(data, list):
        raise RecordError("expected a JSON list of rows", file=file)
    yield from enumerate(data)


def _jsonl_rows(file: Path) -> Iterator[tuple[int, dict | RecordError]]:
    with file.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                yield i, RecordError(f"not valid JSON ({e.msg})", file=file, row=i)


def _csv_rows(file: Path) -> Iterator[tuple[int, dict]]:
    with file.open(encoding="utf-8", newline="") as fh:
        yield from enumerate(csv.DictReader(fh))


def _parquet_rows(file: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise RecordError(f"not a readable parquet file ({e})", file=file) from e
    i = 0
    for batch in pf.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            yield i, row
            i += 1


_READERS = {".json": _json_rows, ".jsonl": _jsonl_rows, ".csv": _csv_rows,
            ".parquet": _parquet_rows}


def _dataset_rows(ds, label: str) -> Iterator[tuple[str, int, dict]]:
    for i, row in enumerate(ds):
        yield label, i, row


def looks_like_hub_id(path: str | Path) -> bool:
    s = str(path)
    return (not Path(s).exists() and s.count("/") == 1 and not s.startswith((".", "/"))
            and not Path(s).suffix)


def load_rows(path: str | Path, *, split: str | None = None,
              hub_config: str | None = None) -> Iterator[tuple[str, int, dict | RecordError]]:
    """Yield ``(file, row_index, row)`` for every row under ``path``.

    ``split`` picks a split of a ``save_to_disk`` DatasetDict or a hub data set, and
    for a folder of files, the files whose name contains it (``train.parquet``,
    ``test-00000.parquet``). A row that cannot be parsed is yielded as a RecordError.
    """
    p = Path(path)
    if looks_like_hub_id(path):
        import datasets

        ds = datasets.load_dataset(str(path), hub_config, split=split or "train")
        yield from _dataset_rows(ds, str(path))
        return
    if not p.exists():
        raise RecordError("no such file or folder", file=p)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
        import datasets

        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                if len(ds) != 1:
                    raise RecordError(f"this DatasetDict has splits {list(ds)}; name one",
                                      file=p, field="split")
                split = next(iter(ds))
            if split not in ds:
                raise RecordError(f"no split {split!r}; it has {list(ds)}", file=p, field="split")
            ds = ds[split]
        yield from _dataset_rows(ds, str(p))
        return
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in TABLE_SUFFIXES and f.is_file()
                       and f.name not in ("manifest.json", "dataset_info.json", "state.json"))
        if split is not None:
            files = [f for f in files if split in f.stem]
        if not files:
            raise RecordError(f"no {'/'.join(TABLE_SUFFIXES)} files"
                              + (f" for split {split!r}" if split else ""), file=p)
    else:
        files = [p]
    for f in files:
        reader = _READERS.get(f.suffix)
        if reader is None:
            raise RecordError(f"unsupported file type {f.suffix!r}; expected one of "
                              f"{', '.join(TABLE_SUFFIXES)}", file=f)
        for i, row in reader(f):
            if not isinstance(row, dict | RecordError):
                row = RecordError(f"expected an object per row, got {type(row).__name__}",
                                  file=f, row=i)
            yield str(f), i, row


def source_root(path: str | Path, media_root: str | Path | None) -> Path:
    """The folder media references are resolved against: the media root if given,
    else the data set's folder (the file's parent for a single file)."""
    if media_root is not None:
        return Path(media_root).resolve()
    p = Path(path)
    return (p if p.is_dir() else p.parent).resolve()


def resolve_path(value: str, root: Path, field: str) -> str:
    """An absolute path for a media reference, refusing one that escapes ``root``."""
    if not isinstance(value, str) or not value.strip():
        raise RecordError("media path is missing or empty", field=field)
    try:
        return str(safe_join(root, value))
    except UnsafePathError:
        raise RecordError(f"media path {value!r} escapes the source root {str(root)!r}",
                          field=field) from None


_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _local_copy(url: str, root: Path, field: str) -> str:
    """The file name of a remote media URL, when a file of that name is in ``root``.

    Some data sets (GenAI-Bench video) store URLs. Nothing is downloaded here: a user
    fetches the files into the media root, keeping their names, and the URL is read as
    that local file; otherwise the row is refused, naming the field."""
    name = PurePosixPath(urlparse(url).path).name
    if not name or not (root / name).exists():
        raise RecordError(f"remote media {url!r} is not fetched; download it into the media "
                          f"root {str(root)!r} under its file name", field=field)
    return name


def media_ref(value, *, kind: str, root: Path, field: str) -> Media:
    """Turn what a data set stores for one image or video into a :class:`Media`.

    Accepts a path string, raw bytes, the ``datasets`` Image feature's
    ``{"bytes": ..., "path": ...}`` struct, a PIL image (from a hub data set), or for
    videos a list of frame paths. A URL is read as the file of the same name in the
    root (never downloaded).
    """
    if value is None:
        raise RecordError("media reference is missing", field=field)
    if isinstance(value, bytes | bytearray | memoryview):
        return Media(kind="image", data=bytes(value), field=field)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Media(kind="image", data=bytes(value["bytes"]), field=field)
        if value.get("path"):
            return media_ref(value["path"], kind=kind, root=root, field=field)
        raise RecordError("image struct has neither bytes nor path", field=field)
    if isinstance(value, list | tuple):
        if kind == "image":
            raise RecordError("expected one image, got a list", field=field)
        if not value:
            raise RecordError("frame list is empty", field=field)
        frames = tuple(resolve_path(v, root, field) for v in value)
        return Media(kind="frames", frames=frames, field=field)
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image from a hub data set
        import io

        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return Media(kind="image", data=buf.getvalue(), field=field)
    if isinstance(value, str):
        if _URL_RE.match(value):
            value = _local_copy(value, root, field)
        full = resolve_path(value, root, field)
        if kind == "image":
            return Media(kind="image", path=full, field=field)
        return Media(kind="frames" if Path(full).is_dir() else "video", path=full, field=field)
    raise RecordError(f"cannot read a media reference from {type(value).__name__}", field=field)


def require(row: dict, field: str, types: type | tuple = object):
    """``row[field]``, or a RecordError naming the field."""
    if field not in row or row[field] is None:
        raise RecordError("required field is missing", field=field)
    value = row[field]
    if not isinstance(value, types):
        raise RecordError(f"expected {getattr(types, '__name__', types)}, got "
                          f"{type(value).__name__}", field=field)
    return value


def number(value, field: str) -> float:
    """A finite float from a number or numeric string, else a RecordError naming the field."""
    if isinstance(value, bool):
        raise RecordError(f"expected a number, got {value!r}", field=field)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise RecordError(f"expected a number, got {value!r}", field=field) from None
    if not math.isfinite(out):
        raise RecordError(f"expected a finite number, got {value!r}", field=field)
    return out


def _extra_list(row: dict, key: str) -> list | None:
    """A list kept in one of the synthetic world's extra columns (a list, an array, or
    JSON text), or None when the column is absent or empty."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):  # an empty CSV cell
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError(f"{key} is not a JSON list", field=key) from None
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise RecordError(f"{key} must be a list, got {type(value).__name__}", field=key)
    return list(value)


def evidence_of(row: dict) -> tuple[str, ...] | None:
    """The synthetic world's element-level evidence, stored in an extra ``ur_evidence``
    column next to a public schema's own fields (absent from real data sets)."""
    ev = _extra_list(row, "ur_evidence")
    return None if ev is None else tuple(ev)


def response_scores_of(row: dict) -> tuple[float, ...] | None:
    """How right each response is (the synthetic world's oracle, in [0, 1]), from the
    extra ``ur_scores`` column, in the order the record holds its responses."""
    scores = _extra_list(row, "ur_scores")
    if scores is None:
        return None
    return tuple(number(v, "ur_scores") for v in scores)


def map_rows(rows: Iterable[tuple[str, int, dict | RecordError]],
             build: Callable[[dict, str, int], PreferenceRecord | Iterable[PreferenceRecord]],
             ) -> Iterator[Item]:
    """Apply ``build(row, file, index)`` to every row, turning a RecordError it raises
    into an item located at that file and row. ``build`` may return one record or
    several (a row that holds several judgments)."""
    for file, i, row in rows:
        if isinstance(row, RecordError):
            yield row.located(file=file, row=i)
            continue
        try:
            out = build(row, file, i)
        except RecordError as e:
            yield e.located(file=file, row=i)
            continue
        if isinstance(out, PreferenceRecord):
            yield out
        else:
            try:
                yield from out
            except RecordError as e:
                yield e.located(file=file, row=i)


def row_id(row: dict, file: str, index: int, *keys: str) -> str:
    """The row's own id from the first of ``keys`` (default ``id``) it holds, else
    ``<file stem>-<row>``."""
    for key in keys or ("id",):
        value = row.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return f"{Path(file).stem}-{index}"


def first_present(row: dict, names: Iterable[str]) -> str | None:
    """The first of ``names`` that the row holds with a non-null value."""
    for name in names:
        if row.get(name) is not None:
            return name
    return None


def as_list(value, field: str, length: int | None = None) -> list:
    """A list from a list/tuple, or from a JSON-encoded list (how CSV cells hold
    lists); a RecordError naming the field otherwise, or when the length is wrong."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError(f"expected a list, got {value!r}", field=field) from None
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # numpy arrays
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise RecordError(f"expected a list, got {type(value).__name__}", field=field)
    if length is not None and len(value) != length:
        raise RecordError(f"expected {length} entries, got {len(value)}", field=field)
    return list(value)


def scale_option(value, field: str = "scale") -> tuple[float, float]:
    """A ``(low, high)`` scale given as an adapter option, checked."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RecordError(f"a scale is (low, high), got {value!r}", field=field) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise RecordError(f"a scale needs finite low < high, got {value!r}", field=field)
    return lo, hi


def within(score: float, scale: tuple[float, float], field: str) -> float:
    """``score`` if it lies on ``scale``, else a RecordError naming the source field
    (the record itself would only name ``score``)."""
    lo, hi = scale
    if not lo <= score <= hi:
        raise RecordError(f"score {score:g} is outside the scale [{lo:g}, {hi:g}]", field=field)
    return score


_PLACEHOLDER_RE = re.compile(r"<(?:image|video)>\n?")


def strip_placeholders(text: str) -> str:
    """``text`` without the ``<image>``/``<video>`` placeholders of LLaVA-style
    conversations (each with the newline that follows it); verbatim otherwise."""
    return _PLACEHOLDER_RE.sub("", text)


def judge_turns(row: dict, field: str = "conversations") -> tuple[str, str]:
    """The (human, gpt) turns of a single-turn LLaVA-style conversation, verbatim.

    Turns are ``{"from": "human"|"gpt", "value": ...}`` (``role``/``content`` with
    ``user``/``assistant`` also accepted); a JSON-encoded list is decoded. Anything but
    exactly one human turn followed by one gpt turn is a RecordError on ``field``."""
    conv = require(row, field)
    if isinstance(conv, str):
        try:
            conv = json.loads(conv)
        except json.JSONDecodeError:
            raise RecordError("conversation is not a list of turns", field=field) from None
    if hasattr(conv, "tolist") and not isinstance(conv, str | bytes):
        conv = conv.tolist()
    if not isinstance(conv, list | tuple):
        raise RecordError(f"expected a list of turns, got {type(conv).__name__}", field=field)
    turns = []
    for turn in conv:
        if not isinstance(turn, dict):
            raise RecordError("a turn is not an object with from/value", field=field)
        who = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        who = {"user": "human", "assistant": "gpt"}.get(who, who)
        if who not in ("human", "gpt"):
            raise RecordError(f"unknown speaker {who!r} in a turn", field=field)
        if not isinstance(value, str) or not value.strip():
            raise RecordError(f"the {who} turn is missing or empty", field=field)
        turns.append((who, value))
    if [w for w, _ in turns] != ["human", "gpt"]:
        raise RecordError("expected one human turn followed by one gpt turn, got "
                          f"{[w for w, _ in turns]}", field=field)
    return turns[0][1], turns[1][1]


def judgment(target: str, form: str | None, scale: tuple[float, float] | None,
             field: str = "conversations") -> tuple[str, str | None, float | None]:
    """``(form, label, score)`` from a judge's verbatim answer.

    With ``form`` None it is detected: a "Final Score: X" makes it pointwise (checked
    first: the marker is specific, while a critique may use a word like "tie"), else a
    pairwise verdict makes it pairwise. No verdict, or a score off ``scale``, is a
    RecordError on ``field``; nothing is ever defaulted to candidate 1."""
    if form not in (None, "pairwise", "pointwise"):
        raise RecordError(f"form must be pairwise or pointwise, got {form!r}", field="form")
    if form in (None, "pointwise"):
        score = parse_score(target)
        if score is not None:
            if scale is not None:
                within(score, scale, field)
            return "pointwise", None, score
        if form == "pointwise":
            raise RecordError("the answer holds no \"Final Score: X\"", field=field)
    label = parse_pairwise(target)
    if label is None:
        raise RecordError("the answer holds no verdict (\"... 1 is better\", \"... 2 is "
                          "better\", a tie, or \"Final Score: X\")", field=field)
    return "pairwise", label, None


# ------------------------------------------------------------------------------ writing

def candidate_scores_of(row: dict) -> tuple[float, ...] | None:
    """How good each candidate of a generation pair is (the synthetic world's oracle),
    from the extra ``ur_scores`` column in the row's order; readers keep it in
    ``meta["ur_scores"]`` (generation records have no responses to score) and the pair
    writers write it back."""
    return response_scores_of(row)


def check_pair(record, task: str, path: Path) -> None:
    """Refuse anything but a pairwise ``task`` record, naming the record id."""
    if not isinstance(record, PreferenceRecord):
        raise ValueError(f"{path}: expected PreferenceRecords, got {type(record).__name__}")
    if record.task != task or record.form != "pairwise":
        raise ValueError(f"{path}: record {record.id!r} is a {record.form} {record.task} "
                         f"record; this schema holds pairwise {task} pairs")
    if record.instruction is not None:
        raise ValueError(f"{path}: record {record.id!r} holds a verbatim judge conversation, "
                         "not two candidates that can be written as a pair")


def refuse_tie(record: PreferenceRecord, path: Path) -> None:
    if record.label == "tie":
        raise ValueError(f"{path}: record {record.id!r} is a tie; a DPO pair needs a chosen "
                         "and a rejected candidate")


def preferred_first(record: PreferenceRecord, path: Path) -> PreferenceRecord:
    """The record with its preferred candidate first (label ``first``), which is how a
    chosen/rejected schema stores it and reads it back; a tie is refused."""
    refuse_tie(record, path)
    return record if record.label == "first" else record.swapped()


def generation_scores(record: PreferenceRecord, path: Path) -> list | None:
    """``meta["ur_scores"]`` of a generation pair (one score per candidate, in the
    record's order; see :func:`candidate_scores_of`), or None."""
    scores = record.meta.get("ur_scores")
    if scores is None:
        return None
    scores = list(scores)
    if len(scores) != len(record.media):
        raise ValueError(f"{path}: record {record.id!r} has {len(scores)} ur_scores for "
                         f"{len(record.media)} candidates")
    return scores


def media_base(path: str | Path, media_root: str | Path | None) -> Path:
    """The folder a written table's media paths are relative to: ``media_root`` if given,
    else the table's own folder, which is what a reader resolves them against by default
    (:func:`source_root`)."""
    return Path(media_root).resolve() if media_root is not None else \
        Path(path).parent.resolve()


def _relative(value: str, base: Path, path: Path, record_id: str, field: str | None) -> str:
    full = Path(value).resolve()
    if not full.is_relative_to(base):
        raise ValueError(f"{path}: record {record_id!r}: {field or 'media'} {value!r} lies "
                         f"outside {str(base)!r}, the folder its path is written relative "
                         "to; keep the media under it, or pass media_root= (and read with "
                         "the same media root)")
    return full.relative_to(base).as_posix()


def media_path_value(media: Media, base: Path, path: Path, record_id: str) -> str | list[str]:
    """How a path schema stores one media reference: its path relative to ``base`` (a
    file, or a folder of frames), or for an explicit frame list, the list of relative
    frame paths. Nothing is copied; media outside ``base`` and inline image bytes are
    refused."""
    if media.data is not None:
        raise ValueError(f"{path}: record {record_id!r}: {media.field or 'media'} holds image "
                         "bytes, and this schema stores paths; write the image to a file "
                         f"under {str(base)!r} and reference it by path")
    if media.frames is not None:
        return [_relative(f, base, path, record_id, media.field) for f in media.frames]
    return _relative(media.path, base, path, record_id, media.field)


def extra_columns(evidence, scores) -> dict:
    """The synthetic world's extra columns (``ur_evidence``, ``ur_scores``), each only
    when known, in the order the row holds its candidates."""
    out = {}
    if evidence is not None:
        out["ur_evidence"] = list(evidence)
    if scores is not None:
        out["ur_scores"] = list(scores)
    return out


def write_json_rows(path: str | Path, rows: list[dict]) -> Path:
    """Write rows as a JSON list (``.json``) or one object a line (``.jsonl``), replacing
    the file atomically so a reader never sees half of it."""
    path = Path(path)
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    elif path.suffix == ".json":
        text = json.dumps(rows, indent=1)
    else:
        raise ValueError(f"{path}: write pairs to a .json or .jsonl file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)


def _answer(row: dict, key: str) -> str:
    text = require(row, key, str)
    if not text.strip():
        raise RecordError("answer is empty", field=key)
    return text


ANSWER_PAIR_META = ("chosen_score", "rejected_score", "answer")


def read_answer_pairs(path, *, split, media_root, source: str, task: str,
                      media_field: str) -> Iterator[Item]:
    """Rows ``{id, <media_field>, prompt, chosen, rejected}`` of an understanding DPO
    schema as pairwise records (chosen first, label ``first``); ``<image>``/``<video>``
    placeholders are removed from the prompt; ``chosen_score``, ``rejected_score`` and
    ``answer``, where present, are kept in ``meta``."""
    root = source_root(path, media_root)
    kind = task_modality(task)

    def build(row, file, i):
        prompt = strip_placeholders(require(row, "prompt", str))
        if not prompt.strip():
            raise RecordError("the question is empty", field="prompt")
        media = media_ref(require(row, media_field), kind=kind, root=root, field=media_field)
        meta = {k: row[k] for k in ANSWER_PAIR_META if row.get(k) is not None}
        return PreferenceRecord(
            task=task, form="pairwise", source=source, id=row_id(row, file, i),
            prompt=prompt, media=(media,), responses=(_answer(row, "chosen"),
                                                      _answer(row, "rejected")),
            label="first", evidence=evidence_of(row),
            response_scores=response_scores_of(row), meta=meta, file=file, row=i)

    yield from map_rows(load_rows(path, split=split), build)


def write_answer_pairs(path, pairs: Iterable[PreferenceRecord], *, media_root, task: str,
                       media_field: str) -> Path:
    """Write pairwise understanding records as rows ``{id, <media_field>, prompt, chosen,
    rejected}`` (the preferred answer is ``chosen``), with ``meta``'s
    ``chosen_score``/``rejected_score``/``answer`` and the world's extra columns where
    known. Ties, media outside the base folder and inline image bytes are refused; the
    file is written only when every record could be."""
    path = Path(path)
    base = media_base(path, media_root)
    rows = []
    for record in pairs:
        check_pair(record, task, path)
        rec = preferred_first(record, path)
        row = {"id": rec.id, media_field: media_path_value(rec.media[0], base, path, rec.id),
               "prompt": rec.prompt, "chosen": rec.responses[0], "rejected": rec.responses[1]}
        row.update({k: rec.meta[k] for k in ANSWER_PAIR_META if rec.meta.get(k) is not None})
        row.update(extra_columns(rec.evidence, rec.response_scores))
        rows.append(row)
    return write_json_rows(path, rows)
