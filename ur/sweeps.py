"""Sweeps in W&B's sweep format, run by ``wandb agent`` or locally by ``ur sweep``.

A sweep file is what ``wandb sweep FILE`` takes: ``method`` (grid, random, bayes),
``parameters`` with dotted LightningCLI names (``seed_everything``,
``model.init_args.optimizer.lr``), and a ``command`` such as::

    command: [${env}, ur, fit, --config, experiments/ablations/task_synergy/base.yaml, ${args}]

``${args}`` expands to ``--name=value`` flags, which LightningCLI parses (a list value
arrives as its Python repr, ``['a', 'b']``, which the parser reads as a YAML list).

``ur sweep FILE`` runs the same file with no W&B server. It expands the parameters
(grid: every combination; random: ``--count`` draws from a generator seeded by the
file's content and ``--seed``; bayes needs the server's model, so it is sampled as
random search over the same space, and says so) and builds each run's command with
wandb's own functions, the ones its agent uses. Each run is an ordinary ``ur fit``
whose run folder gets ``sweep.json`` (the sweep, the run's key, its parameters). A
ledger, ``<root>/sweeps/<sweep>.jsonl``, records finished runs, so rerunning the sweep
after an interruption runs only what is missing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

METHODS = ("grid", "random", "bayes")
SWEEP_ENV = "UR_SWEEP"
"""Environment variable carrying ``{"sweep", "key", "params"}`` (JSON) into a run."""


class SweepError(ValueError):
    """A sweep file that cannot run, naming the file and the field."""


@dataclass(frozen=True)
class SweepRun:
    key: str
    params: dict
    command: list[str]


def load_sweep(path: str | Path) -> dict:
    path = Path(path)
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not YAML: {e}") from None
    if not isinstance(sweep, dict):
        raise SweepError(f"{path}: a sweep file is a mapping")
    if sweep.get("method") not in METHODS:
        raise SweepError(f"{path}: field 'method' must be one of {METHODS}, "
                         f"got {sweep.get('method')!r}")
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{path}: field 'parameters' must map parameter names to specs")
    for name, spec in params.items():
        if not isinstance(spec, dict) or not ({"value", "values", "distribution", "min"} & set(spec)):
            raise SweepError(f"{path}: parameter {name!r} needs 'value', 'values' or a "
                             "distribution with 'min'/'max'")
        if sweep["method"] == "grid" and not ({"value", "values"} & set(spec)):
            raise SweepError(f"{path}: grid parameter {name!r} needs 'value' or 'values'")
    return sweep


def _sample(name: str, spec: dict, rng: random.Random):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    dist = spec.get("distribution", "int_uniform" if isinstance(spec["min"], int)
                    and isinstance(spec["max"], int) else "uniform")
    lo, hi = spec["min"], spec["max"]
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "log_uniform":  # min/max are natural logs of the bounds
        return math.exp(rng.uniform(lo, hi))
    if dist in ("q_uniform", "q_log_uniform_values"):
        q = spec.get("q", 1)
        x = rng.uniform(lo, hi) if dist == "q_uniform" else math.exp(
            rng.uniform(math.log(lo), math.log(hi)))
        return round(x / q) * q
    raise SweepError(f"parameter {name!r}: distribution {dist!r} is not supported by ur sweep")


def expand(sweep: dict, *, count: int | None = None, seed: int = 0) -> list[dict]:
    """The parameter sets of a sweep, in a fixed order (the same on every rerun)."""
    params = sweep["parameters"]
    if sweep["method"] == "grid":
        names = list(params)
        choices = [params[n]["values"] if "values" in params[n] else [params[n]["value"]]
                   for n in names]
        grid = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]
        return grid[:count] if count else grid
    if not count:
        raise SweepError(f"a {sweep['method']} sweep needs --count (how many runs to draw)")
    text = json.dumps(params, sort_keys=True, default=str)
    rng = random.Random(f"{text}|{seed}")
    return [{n: _sample(n, spec, rng) for n, spec in params.items()} for _ in range(count)]


def run_key(params: dict) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]


def agent_command(sweep: dict, params: dict) -> list[str]:
    """The command line ``wandb agent`` would run for these parameters, built with the
    same wandb functions the agent calls."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    template = sweep.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]
    command = sweep_utils.create_sweep_command(template)
    variables = sweep_utils.create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in params.items()}})
    variables.update(interpreter=["python"], program=[sweep.get("program", "")],
                     env=["/usr/bin/env"])
    out: list[str] = []
    for part in command:  # as wandb_agent.Agent._command_run substitutes its macros
        part = str(part)
        if part.startswith("${") and part.endswith("}"):
            out += variables.get(part[2:-1]) or []
        else:
            out.append(part)
    return out


def plan(path: str | Path, *, count: int | None = None, seed: int = 0) -> list[SweepRun]:
    sweep = load_sweep(path)
    return [SweepRun(run_key(p), p, agent_command(sweep, p))
            for p in expand(sweep, count=count, seed=seed)]


def sweep_name(path: str | Path) -> str:
    return Path(path).stem


def ledger_path(path: str | Path, root: str | Path = "checkpoints") -> Path:
    return Path(root) / "sweeps" / f"{sweep_name(path)}.jsonl"


def finished(ledger: Path) -> dict[str, dict]:
    """Runs the ledger records as finished (returncode 0), by key."""
    done = {}
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                if entry.get("returncode") == 0:
                    done[entry["key"]] = entry
    return done


def run_sweep(path: str | Path, *, count: int | None = None, seed: int = 0, jobs: int = 1,
              root: str | Path = "checkpoints", extra_args: tuple[str, ...] = (),
              echo=print) -> list[dict]:
    """Run every planned run the ledger does not list as finished; return the ledger
    entries of this call's runs. ``jobs`` runs side by side share the cores
    (OMP_NUM_THREADS = cores // jobs each). A run's output goes to a log file next to
    the ledger."""
    name = sweep_name(path)
    if load_sweep(path)["method"] == "bayes":
        echo(f"sweep {name}: method bayes is sampled as random search here (the Bayesian "
             "model needs the W&B sweep server)")
    runs = plan(path, count=count, seed=seed)
    ledger = ledger_path(path, root)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    logs = ledger.parent / name
    logs.mkdir(exist_ok=True)
    done = finished(ledger)
    todo = [r for r in runs if r.key not in done]
    echo(f"sweep {name}: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
         f"{len(todo)} to run ({jobs} at a time); ledger {ledger}")
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    lock = threading.Lock()
    results: list[dict] = []

    def one(i: int, run: SweepRun) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   **{SWEEP_ENV: json.dumps({"sweep": name, "key": run.key, "params": run.params})})
        command = run.command + list(extra_args)
        if command[:1] == ["/usr/bin/env"]:
            command = command[1:]
        if command[:1] == ["ur"]:  # the console script of this very installation
            command = [sys.executable, "-m", "ur.cli"] + command[1:]
        start = time.time()
        log = logs / f"{run.key}.log"
        with open(log, "w") as fh:
            proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
            fh.write(proc.stdout)
        lines = [x for x in proc.stdout.splitlines() if x.strip()]
        entry = {"key": run.key, "params": run.params, "returncode": proc.returncode,
                 "run_dir": lines[-1] if proc.returncode == 0 and lines else None,
                 "seconds": round(time.time() - start, 1), "log": str(log),
                 "command": run.command}
        with lock:
            with open(ledger, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            results.append(entry)
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {log})"
            echo(f"[{len(results)}/{len(todo)}] {_short(run.params)}: {status} in "
                 f"{entry['seconds']:.0f} s")
        return entry

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, range(len(todo)), todo))
    return results


def _short(params: dict) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items())
