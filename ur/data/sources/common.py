"""What every source adapter shares: reading rows from the files a public data set
ships, resolving media references safely, and locating errors.

Rows come from a single file (parquet, JSON list or dict-of-columns, JSONL, CSV), a
folder of such files, a ``datasets.save_to_disk`` folder, or, when the path does not
exist locally and looks like ``owner/name``, a Hugging Face hub id loaded through
``datasets`` (the only code path that touches the network, and only on request).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ur.data.records import Media, PreferenceRecord, RecordError

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
    candidate = Path(value)
    full = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not full.is_relative_to(root):
        raise RecordError(f"media path {value!r} escapes the source root {str(root)!r}",
                          field=field)
    return str(full)


def media_ref(value, *, kind: str, root: Path, field: str) -> Media:
    """Turn what a data set stores for one image or video into a :class:`Media`.

    Accepts a path string, raw bytes, the ``datasets`` Image feature's
    ``{"bytes": ..., "path": ...}`` struct, a PIL image (from a hub data set), or for
    videos a list of frame paths.
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


def evidence_of(row: dict) -> tuple[str, ...] | None:
    """The synthetic world's element-level evidence, stored in an extra ``ur_evidence``
    column next to a public schema's own fields (absent from real data sets)."""
    ev = row.get("ur_evidence")
    if ev is None:
        return None
    if isinstance(ev, str):
        ev = json.loads(ev)
    return tuple(ev)


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
