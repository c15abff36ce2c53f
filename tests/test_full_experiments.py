"""Full experiments, out of the default run (`python -m pytest -m slow` runs them).

The quickstart as the README runs it, in a scratch folder so nothing of the checkout's
own world or base is reused: 8 to 18 minutes on 2 cores, as fast as the machine is
that day (README; docs/tiny_base.md, "The 15-minute budget")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_first_run_judges_every_task_above_chance(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ur.cli", "fit", "--config",
                          str(REPO / "experiments" / "quickstart.yaml")],
                         cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-5000:]
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    # Measured per task (README; docs/tiny_base.md, "The 15-minute budget"): pairwise
    # 0.69-0.80, Spearman 0.56-0.81; chance is 0.5 / 0. A first run is reproducible
    # (same world, same base), so these are the figures to expect.
    for task in ("image_generation", "video_generation", "image_understanding",
                 "video_understanding"):
        assert test[f"test/{task}/pair_acc_diff"] > 0.58, test
        assert test[f"test/{task}/point_spearman"] > 0.2, test
    assert "step 800/800" in run.stderr  # progress lines without a terminal
