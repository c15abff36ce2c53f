"""ur.io: atomic writes and folders, locks, and joins that stay inside their root."""

import os

import pytest

from ur.io import (
    UnsafePathError,
    atomic_dir,
    exclusive,
    safe_join,
    write_json_atomic,
    write_text_atomic,
)


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_text_atomic(target, "old")
    write_json_atomic(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_dir_keeps_the_old_folder_when_the_build_fails(tmp_path):
    out = tmp_path / "export"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("killed halfway")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_atomic_dir_removes_temporaries_of_dead_processes(tmp_path):
    dead = tmp_path / ".export.tmp-999999999"
    dead.mkdir()
    mine = tmp_path / f".export.tmp-{os.getppid()}"  # a live process's build is kept
    mine.mkdir()
    with atomic_dir(tmp_path / "export"):
        pass
    assert not dead.exists() and mine.exists()


@pytest.mark.parametrize("rel", ["../outside.png", "/etc/passwd", "a/../../outside"])
def test_safe_join_refuses_paths_that_leave_the_root(tmp_path, rel):
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path / "root", rel)


def test_safe_join_follows_symlinks_before_deciding(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("x")
    (root / "link").symlink_to(tmp_path / "secret")
    (root / "inside.png").write_text("x")
    assert safe_join(root, "inside.png") == (root / "inside.png").resolve()
    with pytest.raises(UnsafePathError):
        safe_join(root, "link")


def test_atomic_dir_without_overwrite_keeps_a_folder_that_holds_anything(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="export"), atomic_dir(out, overwrite=False) as tmp:
        (tmp / "a.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    (out / "notes.txt").unlink()
    with atomic_dir(out, overwrite=False) as tmp:  # an empty folder takes the new one
        (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new"


def test_exclusive_tells_a_second_holder_it_is_busy_and_lets_it_refuse(tmp_path):
    target = tmp_path / "world"
    told = []

    def refuse(lock_file):
        told.append(lock_file)
        raise RuntimeError("busy")

    with exclusive(target, on_busy=refuse):  # free: on_busy is not called
        assert told == []
        with pytest.raises(RuntimeError, match="busy"), exclusive(target, on_busy=refuse):
            pass
    assert told == [tmp_path / "world.lock"]
    with exclusive(target, on_busy=refuse):  # released by its holder, refused one or not
        pass
