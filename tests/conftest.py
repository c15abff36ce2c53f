"""Fixtures shared by the whole test session: one miniature world and tiny base, and one
miniature quickstart run, built once and reused by every test that needs them."""

import json
from pathlib import Path

import pytest
from minirun import QUICKSTART, mini_overlay, run_ur


@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    """Where the miniature world and tiny base live (the first run that needs them builds
    them, under a lock, and every later one finds them built)."""
    root = tmp_path_factory.mktemp("mini")
    return {"root": root, "world": root / "world", "base": root / "base"}


@pytest.fixture(scope="session")
def mini_fit(mini) -> Path:
    """The run folder of one miniature quickstart fit (4 steps, then the test split)."""
    overlay = mini_overlay(mini["root"] / "mini.yaml", world=mini["world"], base=mini["base"])
    run = run_ur("fit", "--config", str(QUICKSTART), "--config", str(overlay),
                 "--run.name", "mini", cwd=mini["root"])
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    assert json.loads((run_dir / "metrics.json").read_text())["test"]
    return run_dir
