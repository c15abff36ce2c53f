"""Results: run folders (or W&B runs) gathered into one pandas table.

``collect(dirs)`` finds every run folder under the given folders (a folder holding
``config.yaml`` and ``metrics.json``) and returns one row per run: where it is, its
name, seed, arm (the tasks it trained on), sweep and parameters, and its metrics per
task as ``<task>/<metric>`` columns (``image_generation/pair_acc_diff``, ...), from one
stage (``test`` by default). Accuracies and correlations come with the bounds of their
95% bootstrap interval, ``<task>/<metric>_ci_low`` and ``_ci_high``: part of the metric,
not metrics of their own. ``collect_wandb(project)`` builds the same table from the
W&B API for users with an online project. ``with_intervals`` writes each single run's
value with its interval ("0.80 [0.76, 0.84]"); ``synergy_table`` turns either table into
the ablation table: arms x tasks, mean and spread over seeds.

``gain_intervals`` gives each arm's gain over the task trained alone with a 95%
interval over seeds. ``kinds_table`` gives a metric per kind of difference (what tells a
pair's candidates apart on the synthetic world: a wrong colour, blur, a question about
shape), task and kind x arms.

``ur results DIR... [--format csv|markdown] [--out FILE] [--summary METRIC] [--kinds]``
is the command-line face of the same functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from ur.data.records import TASKS

SHORT = {"image_generation": "img-gen", "video_generation": "vid-gen",
         "image_understanding": "img-und", "video_understanding": "vid-und"}
"""Short task names, used in arm labels."""


def arm_label(train_tasks) -> str:
    """The arm of a task ablation from the tasks it trained on: "img-gen+img-und", or
    "all" for all four."""
    tasks = [t for t in TASKS if t in set(train_tasks or TASKS)]
    return "all" if len(tasks) == len(TASKS) else "+".join(SHORT[t] for t in tasks)


def _dig(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def row_from(config: dict, metrics: dict, *, stage: str) -> dict:
    """One table row from a run's config (nested, as saved or as logged to W&B) and its
    flat ``<stage>/...`` metrics."""
    data = _dig(config, "data.init_args") or {}
    train_tasks = data.get("train_tasks") or data.get("tasks")
    meta = _dig(config, "run.meta") or {}
    sweep = meta.get("sweep") or {}
    row = {"name": _dig(config, "run.name"), "seed": config.get("seed_everything"),
           "arm": arm_label(train_tasks), "sweep": sweep.get("sweep"), "sweep_key": sweep.get("key")}
    for key, value in (sweep.get("params") or {}).items():
        row[f"param:{key}"] = value
    prefix = f"{stage}/"
    for key, value in metrics.items():
        if key.startswith(prefix) and value is not None:
            row[key[len(prefix):]] = value
    return row


def run_folders(dirs) -> list[Path]:
    """Run folders under ``dirs`` (each may itself be a run folder), sorted."""
    found = set()
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"ur results: {d} does not exist")
        for metrics in ([d / "metrics.json"] if (d / "metrics.json").exists()
                        else d.rglob("metrics.json")):
            if (metrics.parent / "config.yaml").exists():
                found.add(metrics.parent)
    return sorted(found)


def collect(dirs, *, stage: str = "test") -> pd.DataFrame:
    """One row per run folder under ``dirs`` that has metrics for ``stage``. A sweep run
    that was run again (its ledger entry lost) counts once: the newest folder."""
    rows = []
    for run in run_folders(dirs if isinstance(dirs, (list, tuple)) else [dirs]):
        metrics = json.loads((run / "metrics.json").read_text()).get(stage)
        if not metrics:
            continue
        config = yaml.safe_load((run / "config.yaml").read_text())
        rows.append({"run": str(run), **row_from(config, metrics, stage=stage)})
    df = pd.DataFrame(rows)
    if not df.empty:
        swept = df["sweep_key"].notna()
        newest = df[swept].sort_values("run").drop_duplicates(["sweep", "sweep_key"], keep="last")
        df = pd.concat([df[~swept], newest])
    return _ordered(df)


def collect_wandb(project: str, *, stage: str = "test", filters: dict | None = None,
                  api=None) -> pd.DataFrame:
    """The same table from the W&B API (``entity/project``); needs a W&B login."""
    import wandb

    api = api or wandb.Api()
    rows = []
    for run in api.runs(project, filters=filters or {}):
        summary = {k: v for k, v in run.summary.items() if isinstance(v, (int, float))}
        if not any(k.startswith(f"{stage}/") for k in summary):
            continue
        rows.append({"run": run.path and "/".join(run.path), **row_from(dict(run.config), summary,
                                                                         stage=stage)})
    return _ordered(pd.DataFrame(rows))


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    arms = sorted(df["arm"].unique(), key=lambda a: (a == "all", a.count("+"), a))
    df["arm"] = pd.Categorical(df["arm"], categories=arms, ordered=True)
    return df.sort_values(["arm", "seed", "run"]).reset_index(drop=True)


INTERVAL_BOUNDS = ("_ci_low", "_ci_high")
"""Suffixes of the columns holding a metric's 95% bootstrap interval."""


def is_interval_bound(column: str) -> bool:
    """Whether a column holds a bound of a metric's interval rather than a metric."""
    return column.endswith(INTERVAL_BOUNDS)


def with_intervals(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The table of single runs for reading: each metric that has an interval becomes
    ``"0.80 [0.76, 0.84]"`` (value, then its 95% interval; empty where the run has no
    value), and the bound columns go."""
    out = df.copy()
    for col in df.columns:
        low, high = f"{col}_ci_low", f"{col}_ci_high"
        if is_interval_bound(col) or low not in df or high not in df:
            continue
        out[col] = [_value_and_interval(v, lo, hi, digits)
                    for v, lo, hi in zip(df[col], df[low], df[high], strict=True)]
    return out.drop(columns=[c for c in df.columns if is_interval_bound(c)])


def _value_and_interval(value, low, high, digits: int) -> str:
    if pd.isna(value):
        return ""
    if pd.isna(low) or pd.isna(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def synergy_table(df: pd.DataFrame, metric: str = "pair_acc_diff") -> pd.DataFrame:
    """Arms x tasks: mean, standard deviation and number of seeds of ``metric``."""
    if is_interval_bound(metric):
        raise KeyError(f"{metric} is a bound of a metric's interval, not a metric; summarise "
                       f"{metric.rsplit('_ci_', 1)[0]}")
    cols = [f"{t}/{metric}" for t in TASKS if f"{t}/{metric}" in df]
    if not cols:
        raise KeyError(f"no column ends in /{metric}; have {sorted(df.columns)}")
    long = df.melt(id_vars=["arm", "seed"], value_vars=cols, var_name="task", value_name=metric)
    long["task"] = long["task"].str.rsplit("/", n=1).str[0]
    stats = long.groupby(["arm", "task"], observed=True)[metric].agg(["mean", "std", "count"])
    table = stats.unstack("task")
    return table.reindex(columns=[t for t in TASKS if t in long["task"].unique()], level=1)


def kinds_table(df: pd.DataFrame, metric: str = "pair_acc_diff") -> pd.DataFrame:
    """(task, kind of difference) x arms: mean, standard deviation and number of runs of
    ``metric`` per kind (the ``<task>/<metric>@<kind>`` columns), tasks and kinds in
    their canonical order."""
    from ur.data.synthetic.world import DIFFERENCE_KINDS

    cols = [c for c in df.columns if not is_interval_bound(c) and "/" in c
            and c.split("/", 1)[0] in TASKS and c.split("/", 1)[1].startswith(f"{metric}@")]
    if not cols:
        raise KeyError(f"no column holds {metric} per kind (<task>/{metric}@<kind>); the runs "
                       "were not judged on the synthetic world's pairs")
    long = df.melt(id_vars=["arm", "seed"], value_vars=cols, var_name="column",
                   value_name=metric).dropna(subset=[metric])
    long["task"] = long["column"].str.split("/", n=1).str[0]
    long["kind"] = long["column"].str.rsplit("@", n=1).str[1]
    stats = long.groupby(["task", "kind", "arm"], observed=True)[metric].agg(["mean", "std", "count"])
    table = stats.unstack("arm")
    rank = {k: i for i, k in enumerate(DIFFERENCE_KINDS)}
    order = sorted(table.index, key=lambda tk: (TASKS.index(tk[0]), rank.get(tk[1], len(rank))))
    return table.reindex(order)


def gains(df: pd.DataFrame, metric: str = "pair_acc_diff") -> pd.DataFrame:
    """Mean ``metric`` of each arm minus that of the arm trained on the task alone
    (arms x tasks; NaN where the single-task arm is missing)."""
    means = synergy_table(df, metric)["mean"]
    out = means.copy()
    for task in means.columns:
        alone = arm_label([task])
        out[task] = means[task] - means.loc[alone, task] if alone in means.index else float("nan")
    return out


def gain_intervals(df: pd.DataFrame, metric: str = "pair_acc_diff",
                   level: float = 0.95) -> pd.DataFrame:
    """Each arm's gain over the arm trained on the task alone, with its ``level``
    interval over seeds: arms x tasks, ``"+0.031 [-0.012, +0.074]"``. The interval is
    Welch's t over the two arms' per-seed values (their seeds are independent runs), so
    it carries the seed-to-seed spread that dominates at this size; empty for the
    single-task arm itself, and a bare gain where either arm has a single seed."""
    from scipy import stats

    cols = [f"{t}/{metric}" for t in TASKS if f"{t}/{metric}" in df]
    if not cols:
        raise KeyError(f"no column ends in /{metric}; have {sorted(df.columns)}")
    arms = list(df["arm"].cat.categories if hasattr(df["arm"], "cat") else df["arm"].unique())
    out = pd.DataFrame("", index=pd.Index(arms, name="arm"),
                       columns=[c.rsplit("/", 1)[0] for c in cols], dtype=object)
    for col in cols:
        task = col.rsplit("/", 1)[0]
        alone = df.loc[df["arm"] == arm_label([task]), col].dropna().to_numpy(float)
        for arm in arms:
            if arm == arm_label([task]) or alone.size == 0:
                continue
            values = df.loc[df["arm"] == arm, col].dropna().to_numpy(float)
            if values.size == 0:
                continue
            gain = values.mean() - alone.mean()
            if values.size < 2 or alone.size < 2:
                out.loc[arm, task] = f"{gain:+.3f}"
                continue
            if values.var() == 0 and alone.var() == 0:  # Welch's t is undefined
                low = high = gain
            else:
                low, high = stats.ttest_ind(values, alone, equal_var=False).confidence_interval(
                    confidence_level=level)
            out.loc[arm, task] = f"{gain:+.3f} [{low:+.3f}, {high:+.3f}]"
    return out


def formatted(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``mean ± std (n)`` strings from a synergy table: the mean and standard deviation
    over seeds, and the number of seeds."""
    mean, std, n = table["mean"], table["std"], table["count"]
    out = mean.copy().astype(object)
    for arm in mean.index:
        for task in mean.columns:
            s = std.loc[arm, task]
            out.loc[arm, task] = (f"{mean.loc[arm, task]:.{digits}f} ± "
                                  f"{0 if pd.isna(s) else s:.{digits}f} ({int(n.loc[arm, task])})")
    return out
