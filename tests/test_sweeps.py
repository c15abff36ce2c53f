"""Sweeps: the command lines wandb's agent builds from our sweep files parse with our CLI;
`ur sweep` runs a tiny real sweep, records it and resumes it; `ur results` and the
task-synergy notebook read its run folders."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from minirun import mini_overlay

from ur import results, sweeps
from ur.cli import main
from ur.io import exclusive

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted(p for p in (REPO / "experiments" / "sweeps").glob("*.yaml")
                     if "method" in yaml.safe_load(p.read_text()))


def dig(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


def test_there_are_sweep_files():
    names = {p.name for p in SWEEP_FILES}
    assert {"task_synergy.yaml", "lr_lora_bayes.yaml"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_agent_command_line_parses_with_our_cli(path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    planned = sweeps.plan(path, count=2)
    for run in (planned[0], planned[-1]):
        command = run.command
        # wandb's ${env} and the hyphenated ${args} form: --data.init_args.train_tasks=[...]
        assert command[:3] == ["/usr/bin/env", "ur", "fit"]
        assert all(f"--{name}={value}" in command for name, value in run.params.items())
        with pytest.raises(SystemExit) as e:
            main([*command[2:], "--print_config"])
        assert e.value.code in (0, None)
        config = yaml.safe_load(capsys.readouterr().out)
        for name, value in run.params.items():
            assert dig(config, name) == pytest.approx(value), name


def test_grid_is_the_full_product_and_random_draws_repeat(tmp_path):
    grid = sweeps.load_sweep(REPO / "experiments/sweeps/task_synergy.yaml")
    planned = sweeps.expand(grid)
    assert len(planned) == 9 * 3 and len({sweeps.run_key(p) for p in planned}) == 27
    bayes = sweeps.load_sweep(REPO / "experiments/sweeps/lr_lora_bayes.yaml")
    first, again = sweeps.expand(bayes, count=5), sweeps.expand(bayes, count=5)
    assert first == again and sweeps.expand(bayes, count=5, seed=1) != first
    for p in first:
        assert 1e-4 <= p["model.init_args.optimizer.lr"] <= 3e-3
        assert p["model.init_args.lora.r"] in (4, 8, 16, 32)
    with pytest.raises(sweeps.SweepError, match="needs --count"):
        sweeps.expand(bayes)
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grid\nparameters:\n  lr: {min: 0.1, max: 1.0}\n")
    with pytest.raises(sweeps.SweepError, match=r"bad.yaml: grid parameter 'lr'"):
        sweeps.load_sweep(bad)



# -- a sweep stopped, rerun, or started twice ------------------------------------------------
JOB = """
import os, subprocess, sys, time
n = sys.argv[1].split("=", 1)[1]
pids = [os.getpid()]
if n == "slow" and not os.environ.get("JOB_FAST"):  # a run that starts a worker and hangs
    pids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]).pid)
with open(os.environ["JOB_LOG"], "a") as fh:
    fh.write(n + " " + " ".join(map(str, pids)) + "\\n")
if len(pids) > 1:
    time.sleep(60)
print("finished", n)
"""


@pytest.fixture
def stoppable(tmp_path, monkeypatch):
    """A sweep of two plain Python runs, "fast" and "slow" (which hangs, with a child of
    its own, unless JOB_FAST is set); each run appends its name and pids to jobs.txt."""
    (tmp_path / "job.py").write_text(JOB)
    sweep = tmp_path / "stoppable.yaml"
    sweep.write_text(yaml.safe_dump({"method": "grid", "parameters": {"n": {"values": ["fast", "slow"]}},
                                     "command": [sys.executable, str(tmp_path / "job.py"), "${args}"]}))
    monkeypatch.setenv("JOB_LOG", str(tmp_path / "jobs.txt"))
    monkeypatch.chdir(tmp_path)
    return sweep, tmp_path / "checkpoints/sweeps/stoppable.jsonl", tmp_path / "jobs.txt"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _started(jobs: Path) -> dict[str, list[list[int]]]:
    runs: dict[str, list[list[int]]] = {}
    for line in jobs.read_text().splitlines() if jobs.exists() else []:
        name, *pids = line.split()
        runs.setdefault(name, []).append([int(p) for p in pids])
    return runs


def test_a_stopped_sweep_leaves_no_run_and_its_rerun_runs_only_what_is_missing(
        stoppable, caplog):
    sweep, ledger, jobs = stoppable
    proc = subprocess.Popen([sys.executable, "-m", "ur.cli", "sweep", str(sweep), "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_for(lambda: "slow" in _started(jobs) and ledger.exists()
                  and len(ledger.read_text().splitlines()) == 1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        for pid in [p for pids in _started(jobs).get("slow", []) for p in pids if _alive(p)]:
            os.kill(pid, signal.SIGKILL)  # what the sweep failed to stop
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err
    slow = _started(jobs)["slow"][0]
    _wait_for(lambda: not any(_alive(p) for p in slow), timeout=2)

    with open(ledger, "a") as fh:
        fh.write('{"key": "cut short')  # as if the machine stopped mid-write
    os.environ["JOB_FAST"] = "1"
    try:
        assert main(["sweep", str(sweep)]) == 0
    finally:
        del os.environ["JOB_FAST"]
    assert "stoppable.jsonl:3: not a ledger entry" in caplog.text
    assert {n: len(pids) for n, pids in _started(jobs).items()} == {"fast": 1, "slow": 2}
    assert set(sweeps.finished(ledger)) == {sweeps.run_key({"n": n}) for n in ("fast", "slow")}


def test_a_second_sweep_of_the_same_ledger_is_refused(stoppable, monkeypatch):
    sweep, ledger, jobs = stoppable
    monkeypatch.setenv("JOB_FAST", "1")
    with exclusive(ledger), pytest.raises(SystemExit, match="in use by another ur sweep"):
        main(["sweep", str(sweep)])
    assert not jobs.exists()


def test_ledger_skips_a_torn_line_and_names_it(tmp_path, caplog):
    ledger = tmp_path / "s.jsonl"
    ledger.write_text(json.dumps({"key": "a", "returncode": 0}) + "\n" + '{"key": "b", "retu')
    assert set(sweeps.finished(ledger)) == {"a"}
    assert f"{ledger}:2: not a ledger entry" in caplog.text

# -- a tiny real sweep -----------------------------------------------------------------------
SWEEP_EXTRA = """
run:
  name: mini_synergy
trainer:
  max_steps: 3
  limit_val_batches: 0
  limit_test_batches: null
data:
  init_args:
    batch_size: 4
    num_workers: 0
"""

SWEEP = """
name: mini_synergy
program: ur
method: grid
parameters:
  data.init_args.train_tasks:
    values:
      - [image_generation]
      - [image_generation, video_understanding]
  seed_everything:
    values: [0, 1]
command:
  - ${{env}}
  - ur
  - fit
  - --config
  - {quickstart}
  - --config
  - {mini}
  - --config
  - {extra}
  - ${{args}}
"""


def ur(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ur.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mini):
    root = tmp_path_factory.mktemp("sweep")
    mini = mini_overlay(root / "mini.yaml", world=mini["world"], base=mini["base"])
    extra = root / "extra.yaml"
    extra.write_text(SWEEP_EXTRA)
    sweep = root / "mini_synergy.yaml"
    sweep.write_text(SWEEP.format(quickstart=REPO / "experiments/quickstart.yaml", mini=mini,
                                  extra=extra))
    run = ur("sweep", str(sweep), "--jobs", "2", cwd=root)
    assert run.returncode == 0, run.stdout + run.stderr + "".join(
        p.read_text()[-3000:] for p in (root / "checkpoints/sweeps/mini_synergy").glob("*.log"))
    return root, sweep, run


def test_sweep_runs_every_grid_point_as_an_ordinary_run(swept):
    root, sweep, run = swept
    ledger = [json.loads(x) for x in (root / "checkpoints/sweeps/mini_synergy.jsonl").read_text().splitlines()]
    assert len(ledger) == 4 and all(e["returncode"] == 0 for e in ledger)
    for entry in ledger:
        run_dir = Path(entry["run_dir"])
        assert run_dir.parent == root / "checkpoints" / "mini_synergy"
        record = json.loads((run_dir / "sweep.json").read_text())
        assert record == {"sweep": "mini_synergy", "key": entry["key"], "params": entry["params"]}
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["data"]["init_args"]["train_tasks"] == entry["params"]["data.init_args.train_tasks"]
        assert config["seed_everything"] == entry["params"]["seed_everything"]
        assert config["data"]["init_args"]["seed"] == config["seed_everything"]
        assert config["run"]["meta"]["sweep"] == record
        assert "test" in json.loads((run_dir / "metrics.json").read_text())


def test_rerun_resumes_without_repeating_finished_runs(swept):
    root, sweep, _ = swept
    again = ur("sweep", str(sweep), cwd=root)
    assert again.returncode == 0 and "4 already finished, 0 to run" in again.stdout
    ledger = root / "checkpoints/sweeps/mini_synergy.jsonl"
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join(lines[:-1]) + "\n")  # as if the sweep died in its last run
    lost = json.loads(lines[-1])["key"]
    folders = set((root / "checkpoints/mini_synergy").iterdir())
    resumed = ur("sweep", str(sweep), cwd=root)
    assert resumed.returncode == 0 and "3 already finished, 1 to run" in resumed.stdout
    new = set((root / "checkpoints/mini_synergy").iterdir()) - folders
    assert len(new) == 1
    assert json.loads((new.pop() / "sweep.json").read_text())["key"] == lost


def test_results_table_and_notebook(swept, tmp_path):
    root, _, _ = swept
    df = results.collect([root / "checkpoints" / "mini_synergy"])
    assert len(df) == 4  # the rerun run counts once
    assert sorted(df["arm"].astype(str).unique()) == ["img-gen", "img-gen+vid-und"]
    assert sorted(df["seed"]) == [0, 0, 1, 1]
    for task in ("image_generation", "video_understanding"):
        assert df[f"{task}/pair_acc_diff"].between(0, 1).all()
    table = results.synergy_table(df, "pair_acc_diff")
    assert (table["count"] == 2).all().all()
    manual = df[df["arm"] == "img-gen"]["image_generation/pair_acc_diff"].mean()
    assert table["mean"].loc["img-gen", "image_generation"] == pytest.approx(manual)

    out = tmp_path / "table.md"
    cli = ur("results", str(root / "checkpoints" / "mini_synergy"), "--summary", "pair_acc_diff",
             "--out", str(out), cwd=root)
    assert cli.returncode == 0, cli.stderr
    text = out.read_text()
    assert "img-gen+vid-und" in text and "±" in text and "image_generation" in text

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "task_synergy.ipynb", as_version=4)
    figures = tmp_path / "figures"
    os.environ.update(UR_RESULTS=str(root / "checkpoints" / "mini_synergy"),
                      UR_FIGURES=str(figures))
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    finally:
        for var in ("UR_RESULTS", "UR_FIGURES"):
            os.environ.pop(var)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "img-gen+vid-und" in html and "±" in html
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert (figures / "task_synergy_gains.png").stat().st_size > 0
    assert (figures / "task_synergy_bars.png").stat().st_size > 0


def test_notebook_before_any_sweep_says_what_to_run(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(REPO / "notebooks" / "task_synergy.ipynb", as_version=4)
    monkeypatch.setenv("UR_RESULTS", str(tmp_path / "no_runs_here"))
    with pytest.raises(CellExecutionError) as stopped:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert "NoRunsYet" in str(stopped.value) and "FileNotFoundError" not in str(stopped.value)
    said = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "ur sweep experiments/sweeps/task_synergy.yaml" in said
