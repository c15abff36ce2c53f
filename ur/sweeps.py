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

A sweep runs its runs in process groups of their own and stops them all when it is
stopped itself (SIGTERM, SIGINT), so no run outlives it; one sweep at a time holds its
ledger, so two started together never run a run twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from ur.io import exclusive

log = logging.getLogger(__name__)

METHODS = ("grid", "random", "bayes")
SWEEP_ENV = "UR_SWEEP"
"""Environment variable carrying ``{"sweep", "key", "params"}`` (JSON) into a run."""


class SweepError(ValueError):
    """A sweep file that cannot run, naming the file and the field."""


class SweepStopped(Exception):
    """The sweep was stopped by a signal; its runs in flight were stopped with it."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


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
    """Runs the ledger records as finished (returncode 0), by key. A line that is not an
    entry (one cut short when the machine stopped mid-write) is skipped with a warning
    naming the file and line; its run counts as not finished."""
    done = {}
    if not ledger.exists():
        return done
    text = ledger.read_bytes().decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            key, returncode = entry["key"], entry["returncode"]
        except (ValueError, TypeError, KeyError):
            log.warning("%s:%d: not a ledger entry (a write cut short?); skipped, its run "
                        "counts as not finished", ledger, number)
            continue
        if returncode == 0:
            done[key] = entry
    return done


def _append(ledger: Path, entry: dict) -> None:
    """Append one entry and flush it to disk; a line cut short before it stays a line of
    its own."""
    with open(ledger, "a+b") as fh:
        torn = False
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
        fh.write((b"\n" if torn else b"") + json.dumps(entry).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


class _Runs:
    """The runs in flight, each the leader of a process group of its own (so a signal
    reaches what it started too, such as data-loader workers). Once stopping, no new run
    starts."""

    def __init__(self):
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stopping = False

    def start(self, command: list[str], **popen) -> subprocess.Popen | None:
        with self._lock:
            if self.stopping:
                return None
            proc = subprocess.Popen(command, start_new_session=True, **popen)
            self._procs.add(proc)
            return proc

    def finish(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every run's group, SIGKILL what is left after ``grace`` seconds."""
        with self._lock:
            self.stopping = True
            procs = list(self._procs)
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # also what outlived its run's leader


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _raise_stopped(signum, frame):
    raise SweepStopped(signum)


@contextlib.contextmanager
def _stopping_on_signals(in_flight: _Runs) -> Iterator[None]:
    """In the main thread, SIGTERM and SIGINT raise :class:`SweepStopped`. Whatever ends
    the block early stops every run in flight; further signals are ignored meanwhile, so
    that the stop completes."""
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _raise_stopped)
                for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        yield
    except BaseException:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        in_flight.stop()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_sweep(path: str | Path, *, count: int | None = None, seed: int = 0, jobs: int = 1,
              root: str | Path = "checkpoints", extra_args: tuple[str, ...] = (),
              echo=print) -> list[dict]:
    """Run every planned run the ledger does not list as finished; return the ledger
    entries of this call's runs. ``jobs`` runs side by side share the cores
    (OMP_NUM_THREADS = cores // jobs each). A run's output goes to a log file next to
    the ledger. A sweep whose ledger another process holds is refused
    (:class:`SweepError`); SIGTERM or SIGINT stops every run in flight and raises
    :class:`SweepStopped`."""
    name = sweep_name(path)
    ledger = ledger_path(path, root)

    def refuse(lock_file: Path):
        raise SweepError(f"{ledger} is in use by another ur sweep of {name} (it holds "
                         f"{lock_file}); wait for it to end or stop it")

    with exclusive(ledger, on_busy=refuse):
        return _run_missing(path, name, ledger, count=count, seed=seed, jobs=jobs,
                            extra_args=extra_args, echo=echo)


def _run_missing(path, name: str, ledger: Path, *, count, seed, jobs, extra_args,
                 echo) -> list[dict]:
    if load_sweep(path)["method"] == "bayes":
        echo(f"sweep {name}: method bayes is sampled as random search here (the Bayesian "
             "model needs the W&B sweep server)")
    runs = plan(path, count=count, seed=seed)
    logs = ledger.parent / name
    logs.mkdir(exist_ok=True)
    done = finished(ledger)
    todo = [r for r in runs if r.key not in done]
    echo(f"sweep {name}: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
         f"{len(todo)} to run ({jobs} at a time); ledger {ledger}")
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    in_flight = _Runs()
    lock = threading.Lock()
    results: list[dict] = []

    def one(run: SweepRun) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   **{SWEEP_ENV: json.dumps({"sweep": name, "key": run.key, "params": run.params})})
        entry = _run_one(run, in_flight, env=env, extra_args=extra_args,
                         log=logs / f"{run.key}.log")
        if entry is None:  # the sweep was stopping before this run started
            return
        with lock:
            _append(ledger, entry)
            results.append(entry)
            status = ("done" if entry["returncode"] == 0 else "stopped" if entry["stopped"]
                      else f"FAILED (exit {entry['returncode']}, see {entry['log']})")
            echo(f"[{len(results)}/{len(todo)}] {_short(run.params)}: {status} in "
                 f"{entry['seconds']:.0f} s")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, _stopping_on_signals(in_flight):
        for future in [pool.submit(one, run) for run in todo]:
            future.result()
    return results


def _run_one(run: SweepRun, in_flight: _Runs, *, env: dict, extra_args,
             log: Path) -> dict | None:
    """Run one run to its end, or until the sweep stops it; its ledger entry (None if the
    sweep was stopping before it started)."""
    command = run.command + list(extra_args)
    if command[:1] == ["/usr/bin/env"]:
        command = command[1:]
    if command[:1] == ["ur"]:  # the console script of this very installation
        command = [sys.executable, "-m", "ur.cli"] + command[1:]
    if in_flight.stopping:
        return None
    start = time.time()
    with open(log, "w") as fh:
        proc = in_flight.start(command, stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
        if proc is None:
            return None
        try:
            stdout, _ = proc.communicate()
        finally:
            in_flight.finish(proc)
        fh.write(stdout)
    lines = [x for x in stdout.splitlines() if x.strip()]
    return {"key": run.key, "params": run.params, "returncode": proc.returncode,
            "run_dir": lines[-1] if proc.returncode == 0 and lines else None,
            "seconds": round(time.time() - start, 1), "log": str(log),
            "command": run.command, "stopped": in_flight.stopping and proc.returncode != 0}


def _short(params: dict) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items())
