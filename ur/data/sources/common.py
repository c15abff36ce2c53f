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
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from ur.data.answers import parse_pairwise, parse_score
from ur.data.records import Media, PreferenceRecord, RecordError, surrogate_in, task_modality
from ur.io import UnsafePathError, safe_join, write_text_atomic

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
Item = PreferenceRecord | RecordError
# What ``errors="surrogateescape"`` turns each byte of invalid UTF-8 into; text decoded
# from valid UTF-8 never holds these.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class _LongInt:
    """Stands in for an integer literal longer than Python converts from text (its
    digit limit), so the row around it can be read and the field named."""

    def __init__(self, digits: str):
        self.digits = len(digits.lstrip("-"))


def _int_or_long(text: str):
    try:
        return int(text)
    except ValueError:
        return _LongInt(text)


def _holds(value, test: Callable) -> bool:
    """Whether ``value`` or anything nested in it passes ``test`` (walked without
    recursion: the value may be nested as deeply as the JSON reader allows)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if test(v):
            return True
        if isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _field_holding(value, test: Callable) -> str | None:
    """The top-level field of a row whose value (or name) passes ``test`` at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            if _holds(k, test) or _holds(v, test):
                return str(k)
    return None


def _undecodable(value) -> bool:
    return isinstance(value, str) and _UNDECODABLE.search(value) is not None


def _parse_json(text: str):
    """One JSON value from ``text`` (decoded with ``surrogateescape``), or a RecordError
    that says why it cannot be used and, where it can be told, in which field."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON ({e.msg})") from None
    except RecursionError:
        raise RecordError("JSON nested deeper than can be read",
                          field=_deepest_field(text)) from None
    except ValueError:  # an integer literal beyond Python's digit limit
        try:
            value = json.loads(text, parse_int=_int_or_long)
        except (ValueError, RecursionError):  # and something else too: no field to name
            value = None
        field = _field_holding(value, lambda v: isinstance(v, _LongInt))
        raise RecordError("a number has more digits than can be read", field=field) from None
    if _UNDECODABLE.search(text):
        raise RecordError("text is not valid UTF-8", field=_field_holding(value, _undecodable))
    return value


_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},"]')


def _deepest_field(text: str) -> str | None:
    """The top-level field of an object's text whose value nests deepest (the last
    string seen at the top level before a bracket opens is that value's key)."""
    depth, key, field, deepest = 0, None, None, 1
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token[0] == '"':
            if depth == 1 and len(token) > 1:
                key = token
        elif token in "[{":
            depth += 1
            if depth > deepest:
                field, deepest = key, depth
        elif token in "]}":
            depth -= 1
    try:
        return None if field is None else json.loads(field)
    except ValueError:
        return None


def _list_elements(text: str) -> list[str] | None:
    """The text of each element of a top-level JSON list, found by matching brackets
    outside strings; None when the text is not framed as one list."""
    depth, start, out = 0, 0, []
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token[0] == '"':
            if len(token) == 1:  # an unterminated string
                return None
        elif token in "[{":
            if depth == 0 and (token != "[" or text[:m.start()].strip()):
                return None
            depth += 1
            if depth == 1:
                start = m.end()
        elif token in "]}":
            depth -= 1
            if depth == 0:
                if token != "]" or text[m.end():].strip():
                    return None
                last = text[start:m.start()]
                return out + [last] if out or last.strip() else out
        elif depth == 1:  # a comma between elements
            out.append(text[start:m.start()])
            start = m.end()
    return None


def _json_rows(file: Path) -> Iterator[tuple[int, dict | RecordError]]:
    """Rows of a JSON file. A list whose whole text cannot be parsed (a broken row,
    invalid UTF-8, a huge number, deep nesting) is read element by element, so only the
    bad rows are lost; other shapes are read whole."""
    text = file.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    try:
        data = _parse_json(text)
    except RecordError as e:
        elements = _list_elements(text)
        if elements is None:
            raise e.located(file=file) from None
        for i, element in enumerate(elements):
            try:
                yield i, _parse_json(element)
            except RecordError as err:
                yield i, err.located(file=file, row=i)
        return
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
    """Rows of a JSON-lines file; a line that cannot be used is an error at its row, and
    the lines after it are read."""
    with file.open("rb") as fh:
        for i, line in enumerate(fh):
            text = line.decode("utf-8-sig" if i == 0 else "utf-8", errors="surrogateescape")
            if not text.strip():
                continue
            try:
                yield i, _parse_json(text)
            except RecordError as e:
                yield i, e.located(file=file, row=i)


def _csv_rows(file: Path) -> Iterator[tuple[int, dict | RecordError]]:
    """Rows of a CSV file with a header. A row the csv module refuses (a field over its
    size limit, a broken quote), with more values than the header has columns, or with
    invalid UTF-8 is an error at its row; the rows after it are read."""
    with file.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        taken = []  # the lines of the row being read, to look at a refused one again

        def lines():
            for line in fh:
                taken.append(line)
                yield line

        reader = csv.reader(lines())
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise RecordError(f"the header is not valid CSV ({e})", file=file) from None
        if header is None:
            return
        if any(_undecodable(name) for name in header):
            raise RecordError("the header is not valid UTF-8", file=file)
        i = 0
        while True:
            taken.clear()
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield i, RecordError(f"not valid CSV ({e})", file=file, row=i,
                                     field=_overlong_field("".join(taken), header))
                i += 1
                continue
            if not values:  # a blank line, as csv.DictReader skips it
                continue
            yield i, _csv_row(header, values, file, i)
            i += 1


def _overlong_field(text: str, header: list[str]) -> str | None:
    """The column of a CSV row's ``text`` that is longer than the csv module's field
    limit, found by reading the row again with the limit lifted for that moment."""
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(max(limit, len(text) + 1))
        values = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error:
        return None
    finally:
        csv.field_size_limit(limit)
    return next((name for name, v in zip(header, values, strict=False) if len(v) > limit), None)


def _csv_row(header: list[str], values: list[str], file: Path, i: int) -> dict | RecordError:
    if len(values) > len(header):
        return RecordError(f"{len(values)} values for {len(header)} columns", file=file, row=i)
    # The cells a short row lacks are missing, as csv.DictReader has them.
    row = dict(zip(header, values + [None] * (len(header) - len(values)), strict=True))
    for name, value in row.items():
        if _undecodable(value):
            return RecordError("text is not valid UTF-8", file=file, row=i, field=name)
    return row


def _reason(error: Exception) -> str:
    """An exception's message on one line (pyarrow's span several)."""
    return " ".join(str(error).split())


def _batch_rows(batch) -> list[dict | RecordError]:
    """The rows of an Arrow record batch as dicts; a row whose values cannot be turned
    into Python objects (a date out of range, say) is an error naming the column."""
    try:
        return batch.to_pylist()
    except Exception:  # pyarrow raises ValueError, OverflowError, ArrowException, ...
        pass
    rows = []
    for j in range(batch.num_rows):
        row = {}
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            try:
                row[name] = column[j].as_py()
            except Exception as e:
                row = RecordError(f"the value cannot be read ({_reason(e)})", field=name)
                break
        rows.append(row)
    return rows


def _arrow_rows(batches: Iterable, file: Path, start: int, what: str, *,
                expected: int | None = None, cut: bool = False,
                ) -> Iterator[tuple[int, dict | RecordError]]:
    """Rows of ``batches`` numbered from ``start``, then, when they did not all come, one
    error at the first row missing: a read that fails part way, fewer rows than the
    ``expected``, or a file known to be ``cut`` short."""
    i, problem = start, None
    try:
        for batch in batches:
            for row in _batch_rows(batch):
                yield i, row.located(file=file, row=i) if isinstance(row, RecordError) else row
                i += 1
    except Exception as e:  # pyarrow raises OSError, ArrowInvalid, ... for a broken file
        problem = f"{what} cannot be read from this row on ({_reason(e)})"
    if cut:
        problem = f"{what} is cut short (it lacks its end marker); the rows from here on are lost"
    elif problem is None and expected is not None and i - start < expected:
        problem = f"{what} ends after {i - start} of its {expected} rows"
    if problem is not None:
        yield i, RecordError(problem, file=file, row=i)


def _parquet_rows(file: Path) -> Iterator[tuple[int, dict | RecordError]]:
    """Rows of a parquet file, row group by row group, so a corrupt row group loses
    its own rows only."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise RecordError(f"not a readable parquet file ({_reason(e)})", file=file) from e
    start = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        yield from _arrow_rows(pf.iter_batches(batch_size=256, row_groups=[g]), file, start,
                               f"row group {g} (rows {start}-{start + n - 1})", expected=n)
        start += n


_READERS = {".json": _json_rows, ".jsonl": _jsonl_rows, ".csv": _csv_rows,
            ".parquet": _parquet_rows}


def _ipc_batches(shard: Path) -> Iterator:
    import pyarrow as pa

    with pa.memory_map(str(shard)) as source:
        yield from pa.ipc.open_stream(source)


# How an Arrow IPC stream that was closed properly ends: a continuation marker and a
# zero length. A shard cut short by a killed save_to_disk lacks it.
_ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _shard_rows(shard: Path, start: int) -> Iterator[tuple[int, dict | RecordError]]:
    """Rows of one Arrow shard of a ``save_to_disk`` folder, numbered from ``start``; a
    shard cut short (a killed save) gives its complete rows and one error where it ends."""
    try:
        with shard.open("rb") as fh:
            fh.seek(max(shard.stat().st_size - len(_ARROW_EOS), 0))
            cut = fh.read() != _ARROW_EOS
    except OSError as e:
        yield start, RecordError(f"the shard cannot be read ({e.strerror or e})", file=shard)
        return
    yield from _arrow_rows(_ipc_batches(shard), shard, start, "the shard", cut=cut)


def _dataset_rows(ds, label: str) -> Iterator[tuple[str, int, dict]]:
    for i, row in enumerate(ds):
        yield label, i, row


def looks_like_hub_id(path: str | Path) -> bool:
    s = str(path)
    return (not Path(s).exists() and s.count("/") == 1 and not s.startswith((".", "/"))
            and not Path(s).suffix)


def _json_file(file: Path):
    """A small JSON metadata file, or a RecordError naming it."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError("file is missing", file=file) from None
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON
        raise RecordError(f"not a readable JSON file ({_reason(e)})", file=file) from None


_SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def _is_saved_dataset(p: Path) -> bool:
    """Whether ``p`` is a ``datasets`` ``save_to_disk`` folder, complete or not."""
    return p.is_dir() and (any((p / m).exists() for m in _SAVED_MARKERS)
                           or any(p.glob("*.arrow")))


def _saved_split(folder: Path, split: str | None) -> Path:
    """The folder of one split of a saved DatasetDict (or ``folder`` for a Dataset)."""
    listing = folder / "dataset_dict.json"
    if not listing.exists():
        return folder
    splits = _json_file(listing)
    splits = splits.get("splits") if isinstance(splits, dict) else None
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise RecordError("it lists no splits", file=listing, field="splits")
    if split is None:
        if len(splits) != 1:
            raise RecordError(f"this DatasetDict has splits {splits}; name one", file=folder,
                              field="split")
        split = splits[0]
    if split not in splits:
        raise RecordError(f"no split {split!r}; it has {splits}", file=folder, field="split")
    try:
        return safe_join(folder, split)
    except UnsafePathError:
        raise RecordError(f"split {split!r} leaves the folder", file=listing,
                          field="splits") from None


def _saved_rows(folder: Path, split: str | None) -> Iterator[tuple[int, dict | RecordError]]:
    """Rows of a ``datasets`` ``save_to_disk`` folder, read shard by shard from its Arrow
    files as stored (an image is its ``{bytes, path}`` struct, decoded later like any
    other), so a broken shard loses its own rows only. A ``state.json`` that is missing
    or does not list the shards (a save that did not finish) is one error, and the
    shards the folder holds are read."""
    folder = _saved_split(folder, split)
    state = folder / "state.json"
    try:
        shards = [entry["filename"] for entry in _json_file(state)["_data_files"]]
        if not all(isinstance(name, str) for name in shards):
            raise TypeError
    except RecordError as e:
        yield None, e
        shards = sorted(f.name for f in folder.glob("*.arrow"))
    except (KeyError, TypeError):
        yield None, RecordError("it does not list the shards", file=state, field="_data_files")
        shards = sorted(f.name for f in folder.glob("*.arrow"))
    start = 0
    for name in shards:
        try:
            shard = safe_join(folder, name)
        except UnsafePathError:
            yield None, RecordError(f"shard {name!r} leaves the folder", file=state,
                                    field="_data_files")
            continue
        for i, row in _shard_rows(shard, start):
            yield i, row
            start = i + 1


def _table_files(p: Path, split: str | None) -> list[Path]:
    if not p.is_dir():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.suffix in TABLE_SUFFIXES and f.is_file()
                   and f.name not in ("manifest.json", "dataset_info.json", "state.json"))
    if split is not None:
        files = [f for f in files if split in f.stem]
    if not files:
        raise RecordError(f"no {'/'.join(TABLE_SUFFIXES)} files"
                          + (f" for split {split!r}" if split else ""), file=p)
    return files


def _file_rows(file: Path) -> Iterator[tuple[int | None, dict | RecordError]]:
    """Rows of one table file; a file that cannot be read at all is one error (row None),
    and what was read before a failure is kept."""
    reader = _READERS.get(file.suffix)
    if reader is None:
        yield None, RecordError(f"unsupported file type {file.suffix!r}; expected one of "
                                f"{', '.join(TABLE_SUFFIXES)}", file=file)
        return
    try:
        yield from reader(file)
    except RecordError as e:
        yield None, e.located(file=file)
    except OSError as e:
        yield None, RecordError(f"cannot read: {e.strerror or e}", file=file)


def load_rows(path: str | Path, *, split: str | None = None,
              hub_config: str | None = None) -> Iterator[tuple[str, int, dict | RecordError]]:
    """Yield ``(file, row_index, row)`` for every row under ``path``.

    ``split`` picks a split of a ``save_to_disk`` DatasetDict or a hub data set, and
    for a folder of files, the files whose name contains it (``train.parquet``,
    ``test-00000.parquet``). What cannot be read is yielded as a RecordError in place
    of the row, the line, the row group, the shard or the file it spoils, and the rest
    is read: a corrupt file does not cost the files after it.
    """
    p = Path(path)
    if looks_like_hub_id(path):
        import datasets

        ds = datasets.load_dataset(str(path), hub_config, split=split or "train")
        yield from _dataset_rows(ds, str(p))
        return
    if not p.exists():
        raise RecordError("no such file or folder", file=p)
    if _is_saved_dataset(p):
        units = [(p, _saved_rows(p, split))]
    else:
        units = [(f, _file_rows(f)) for f in _table_files(p, split)]
    for f, rows in units:
        for i, row in rows:
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
    if not isinstance(value, str):
        raise RecordError(f"expected a media path, got {type(value).__name__}", field=field)
    if not value.strip():
        raise RecordError("media path is missing or empty", field=field)
    if "\0" in value:
        raise RecordError("media path holds a NUL character", field=field)
    if bad := surrogate_in(value):  # the file system cannot encode it
        raise RecordError(f"media path holds a lone surrogate ({bad}), which is no character",
                          field=field)
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
            if not isinstance(value["bytes"], bytes | bytearray | memoryview):
                raise RecordError("image struct's bytes are "
                                  f"{type(value['bytes']).__name__}, not bytes", field=field)
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
        raise RecordError(f"expected a number, got {_short(value)}", field=field) from None
    except OverflowError:  # an integer beyond the range of a float
        raise RecordError("the number is too large", field=field) from None
    if not math.isfinite(out):
        raise RecordError(f"expected a finite number, got {_short(value)}", field=field)
    return out


def _short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for a message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _extra_list(row: dict, key: str) -> list | None:
    """A list kept in one of the synthetic world's extra columns (a list, an array, or
    JSON text), or None when the column is absent or empty."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):  # an empty CSV cell
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, too deep, a huge number
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
    if ev is not None and not all(isinstance(e, str) for e in ev):
        raise RecordError("evidence entries must be text", field="ur_evidence")
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
        except (ValueError, RecursionError):  # not JSON, too deep, a huge number
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
    except (TypeError, ValueError, OverflowError):
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
        except (ValueError, RecursionError):  # not JSON, too deep, a huge number
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
