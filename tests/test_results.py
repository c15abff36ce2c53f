"""`ur results` on run folders: single runs with their 95% intervals, the summary as
mean ± std over seeds with the number of seeds, and interval bounds never taken for
metrics of their own."""

import json

import pandas as pd
import pytest
import yaml

from ur import results
from ur.cli import main

ACC = {0: 0.80, 1: 0.70, 2: 0.75}


def write_run(root, name, seed, tasks, acc):
    run = root / name
    run.mkdir(parents=True)
    config = {"seed_everything": seed, "run": {"name": name},
              "data": {"init_args": {"train_tasks": tasks}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"image_generation/pair_acc_diff": acc,
               "image_generation/pair_acc_diff_ci_low": acc - 0.04,
               "image_generation/pair_acc_diff_ci_high": acc + 0.04,
               "image_generation/parse_rate": 1.0,
               "video_generation/pair_acc_diff": acc - 0.2,
               "video_generation/pair_acc_diff_ci_low": acc - 0.3,
               "video_generation/pair_acc_diff_ci_high": acc - 0.1,
               "image_generation/pair_acc_diff@blur": acc - 0.1,
               "image_generation/pair_acc_diff@blur_ci_low": acc - 0.2,
               "image_generation/pair_acc_diff@blur_ci_high": acc,
               "image_generation/pair_count@blur": 50.0,
               "image_generation/pair_acc_diff@wrong_colour": acc + 0.1,
               "video_generation/pair_acc_diff@stutter": acc - 0.3}
    (run / "metrics.json").write_text(json.dumps({"test": {f"test/{k}": v
                                                           for k, v in metrics.items()}}))


@pytest.fixture
def runs(tmp_path):
    for seed, acc in ACC.items():
        write_run(tmp_path, f"both-{seed}", seed, ["image_generation", "video_generation"], acc)
    write_run(tmp_path, "img-0", 0, ["image_generation"], 0.6)
    return tmp_path


def test_single_runs_show_each_value_with_its_interval(runs):
    table = results.with_intervals(results.collect([runs]))
    assert not [c for c in table.columns if c.endswith(("_ci_low", "_ci_high"))]
    row = table[table["name"] == "both-0"].iloc[0]
    assert row["image_generation/pair_acc_diff"] == "0.80 [0.76, 0.84]"
    assert row["video_generation/pair_acc_diff"] == "0.60 [0.50, 0.70]"
    assert row["image_generation/parse_rate"] == 1.0  # no interval: left as it is


def test_a_missing_value_or_interval_is_shown_as_such():
    df = pd.DataFrame({"t/m": [0.5, None, 0.25], "t/m_ci_low": [0.4, None, None],
                       "t/m_ci_high": [0.6, None, None]})
    assert results.with_intervals(df)["t/m"].tolist() == ["0.50 [0.40, 0.60]", "", "0.25"]


def test_the_summary_is_mean_and_std_over_seeds_with_their_number(runs):
    table = results.synergy_table(results.collect([runs]), "pair_acc_diff")
    assert list(table["mean"].columns) == ["image_generation", "video_generation"]
    assert table["count"].loc["img-gen+vid-gen", "image_generation"] == 3
    mean = sum(ACC.values()) / 3
    assert table["mean"].loc["img-gen+vid-gen", "image_generation"] == pytest.approx(mean)
    std = pd.Series(list(ACC.values())).std()
    text = results.formatted(table).loc["img-gen+vid-gen", "image_generation"]
    assert text == f"{mean:.3f} ± {std:.3f} (3)"


def test_an_interval_bound_is_not_a_metric_to_summarise(runs):
    with pytest.raises(KeyError, match="summarise pair_acc_diff"):
        results.synergy_table(results.collect([runs]), "pair_acc_diff_ci_low")


def test_the_command_shows_intervals_and_summaries(runs, capsys):
    assert main(["results", str(runs)]) == 0
    text = capsys.readouterr().out
    assert "0.80 [0.76, 0.84]" in text and "_ci_" not in text
    assert main(["results", str(runs), "--summary", "pair_acc_diff"]) == 0
    text = capsys.readouterr().out
    assert "0.750 ± 0.050 (3)" in text and "0.600 ± 0.000 (1)" in text
    assert main(["results", str(runs), "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "image_generation/pair_acc_diff_ci_low" in header  # CSV keeps the bounds as numbers
    with pytest.raises(SystemExit, match="not a metric"):
        main(["results", str(runs), "--summary", "pair_acc_diff_ci_high"])
    # the task-alone arm has one seed here, so the gain is bare: 0.75 - 0.60
    assert main(["results", str(runs), "--gains", "pair_acc_diff"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if "img-gen+vid-gen" in line]
    assert len(row) == 1 and "+0.150" in row[0]


def test_the_kinds_table_is_per_task_and_kind_over_seeds(runs, capsys):
    table = results.kinds_table(results.collect([runs]))
    # tasks in order, then kinds in the world's order (content errors before pixel errors)
    assert list(table.index) == [("image_generation", "wrong_colour"),
                                 ("image_generation", "blur"), ("video_generation", "stutter")]
    mean = sum(ACC.values()) / 3
    assert table["mean"].loc[("image_generation", "blur"), "img-gen+vid-gen"] == \
        pytest.approx(mean - 0.1)
    assert table["count"].loc[("video_generation", "stutter"), "img-gen+vid-gen"] == 3
    assert table["mean"].loc[("image_generation", "blur"), "img-gen"] == pytest.approx(0.5)
    assert main(["results", str(runs), "--kinds"]) == 0
    text = capsys.readouterr().out
    assert f"{mean - 0.1:.3f} ± 0.050 (3)" in text and "stutter" in text
    with pytest.raises(KeyError, match="per kind"):
        results.kinds_table(results.collect([runs]), "point_spearman")


def test_a_gain_over_the_task_alone_has_welchs_interval_over_seeds():
    df = pd.DataFrame({
        "arm": ["img-gen"] * 3 + ["all"] * 3 + ["vid-gen"],
        "seed": [0, 1, 2, 0, 1, 2, 0],
        "image_generation/pair_acc_diff": [0.70, 0.74, 0.72, 0.80, 0.84, 0.76, 0.60],
    })
    out = results.gain_intervals(df)
    # by hand: gain 0.80 - 0.72 = 0.08; variances of the means 0.0016/3 and 0.0004/3;
    # Welch's dof (0.002/3)^2 / ((0.0016/3)^2/2 + (0.0004/3)^2/2) = 2.941...;
    # t(0.975, 2.941) = 3.2188 (a t table between 2 and 3 dof), half-width 3.2188 * sqrt(0.002/3)
    half = 3.2188 * (0.002 / 3) ** 0.5
    assert out.loc["all", "image_generation"] == f"{0.08:+.3f} [{0.08 - half:+.3f}, {0.08 + half:+.3f}]"
    assert out.loc["img-gen", "image_generation"] == ""  # the arm alone is the reference
    assert out.loc["vid-gen", "image_generation"] == f"{0.60 - 0.72:+.3f}"  # one seed: no interval
