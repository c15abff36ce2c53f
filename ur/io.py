"""Files that are never seen half-written, locks, and paths that stay inside a root.

Every part of ur writes through these helpers: a reader (another process, a resumed
run, a user's ``cat``) sees either the old file or the new one, never a torn one; two
processes that build the same cached thing (a world, a tiny base) build it once; and a
path read from a data file cannot point outside the folder it belongs to. This module
imports no other part of ur.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


class UnsafePathError(ValueError):
    """A relative path that leaves the folder it must stay in."""


@contextlib.contextmanager
def exclusive(path: str | Path, *,
              on_busy: Callable[[Path], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (a sibling file), so that processes
    started side by side (``ur sweep --jobs 2``, DDP ranks) build a shared world or tiny
    base once: the others wait, then find it built.

    When another process holds the lock, ``on_busy(lock_file)`` is called before waiting:
    it may say that this one waits, or raise to refuse instead of waiting. The lock goes
    with its holder's process, also when that process is killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = path.with_name(path.name + ".lock")
    with open(lock_file, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_busy is not None:
                on_busy(lock_file)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write through a temporary sibling, flushed to disk, then rename over ``path``."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it in for ``out`` when the block
    ends without an exception; on an exception the temporary folder goes and ``out`` is
    untouched. Leftover temporary siblings of dead processes are removed first.

    With ``overwrite=False`` an ``out`` that holds anything is kept: the finished folder
    takes its place only if it is missing or empty (one rename, which the file system
    refuses onto a folder with contents, so a folder filled meanwhile is kept too), else
    the new folder goes and :class:`FileExistsError` says so."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = _tmp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not overwrite:
        _rename_onto_empty(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _rename_onto_empty(tmp: Path, out: Path) -> None:
    try:
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise FileExistsError(f"{out} exists and is not an empty folder") from None
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def safe_join(root: str | Path, relative: str | Path) -> Path:
    """``root / relative``, resolved, refusing a path that leaves ``root`` (through
    ``..``, an absolute path or a symbolic link)."""
    root = Path(root).resolve()
    full = (root / relative).resolve()
    if not full.is_relative_to(root):
        raise UnsafePathError(f"{str(relative)!r} leaves {str(root)!r}")
    return full
