"""Writes that must not destroy: `ur export` keeps a folder it did not make and swaps its
own in whole; `ur corpus synth` runs started together take turns on the world's lock, and
a killed one leaves nothing a later run takes for the world."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ur.cli import main
from ur.io import exclusive
from ur.models import load_vlm
from ur.models.export import save_hf

REPO = Path(__file__).resolve().parents[1]


# -- ur export ---------------------------------------------------------------------------
@pytest.fixture
def users_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    return out


def test_export_refuses_a_folder_that_holds_anything(mini_fit, users_folder, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["export", str(mini_fit), "--out", str(users_folder)])
    assert str(users_folder) in str(refused.value) and "--overwrite" in str(refused.value)
    assert [p.name for p in users_folder.iterdir()] == ["notes.txt"]
    assert [p.name for p in users_folder.parent.iterdir()] == ["out"]


def test_export_refuses_to_overwrite_the_folder_holding_its_checkpoint(mini_fit):
    with pytest.raises(SystemExit, match="holds the checkpoint"):
        main(["export", str(mini_fit), "--out", str(mini_fit), "--overwrite"])
    assert (mini_fit / "checkpoints" / "last.ckpt").exists()


def test_export_overwrite_swaps_in_the_complete_folder(mini_fit, users_folder, capsys):
    assert main(["export", str(mini_fit), "--out", str(users_folder), "--overwrite"]) == 0
    assert not (users_folder / "notes.txt").exists()
    exported = load_file(users_folder / "model.safetensors")
    fitted = load_file(mini_fit / "export" / "model.safetensors")
    assert exported.keys() == fitted.keys()
    assert [p.name for p in users_folder.parent.iterdir()] == ["out"]  # no temporaries


class _FullDisk:
    """A processor whose save fails, as on a full disk, after the weights are written."""

    def save_pretrained(self, path):
        raise OSError(28, "No space left on device")


def test_a_failed_export_leaves_the_old_folder_and_no_temporary(mini_fit, users_folder):
    model, _ = load_vlm(mini_fit / "export")
    with pytest.raises(OSError, match="No space left"):
        save_hf(model, _FullDisk(), users_folder, overwrite=True)
    assert [p.name for p in users_folder.iterdir()] == ["notes.txt"]
    assert [p.name for p in users_folder.parent.iterdir()] == ["out"]


# -- ur corpus synth ---------------------------------------------------------------------
SYNTH = ["--size", "16", "--image-size", "16", "--num-frames", "2"]


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def test_synth_waits_while_another_writer_holds_the_world(tmp_path, capsys):
    out = tmp_path / "world"
    with exclusive(out):  # as another `ur corpus synth` or a training run building it
        writer = threading.Thread(target=main, args=(["corpus", "synth", "--out", str(out),
                                                      *SYNTH],))
        writer.start()
        deadline = time.monotonic() + 10
        while "waiting for it" not in capsys.readouterr().err:
            assert time.monotonic() < deadline and writer.is_alive(), "did not wait"
            time.sleep(0.05)
        time.sleep(0.5)
        assert not out.exists() and not _leftovers(out)
    writer.join(timeout=60)
    assert (out / "manifest.json").exists() and not _leftovers(out)


def test_synth_explains_a_folder_it_will_not_touch(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not a synthetic world"):
        main(["corpus", "synth", "--out", str(tmp_path), *SYNTH])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_killed_synth_leaves_nothing_taken_for_the_world(tmp_path):
    out = tmp_path / "world"
    killed = subprocess.Popen([sys.executable, "-m", "ur.cli", "corpus", "synth", "--out",
                               str(out), *SYNTH], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not _leftovers(out):  # its folder under construction
            assert time.monotonic() < deadline and killed.poll() is None, "never started"
            time.sleep(0.01)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # it and its workers, halfway
        killed.wait()
    assert not out.exists()
    assert main(["corpus", "synth", "--out", str(out), *SYNTH]) == 0
    assert (out / "manifest.json").exists() and not _leftovers(out)
