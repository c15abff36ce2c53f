"""Every YAML in experiments/ parses against the code, through the exact command its
header says runs it (LightningCLI's --print_config parses and validates without
building anything)."""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from ur.cli import main

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "experiments" / "sweeps"
# Sweep files (W&B's format, with `method:`) are checked by tests/test_sweeps.py.
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml")
                     if not (p.parent == SWEEPS and "method" in yaml.safe_load(p.read_text())))


def header_commands(path: Path) -> list[list[str]]:
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.search(r"\bur (fit|validate|test|predict) (.+)$", line)
        if m:
            commands.append(shlex.split(f"{m.group(1)} {m.group(2)}"))
    return commands


def test_every_experiment_names_its_command():
    missing = [p.relative_to(REPO) for p in EXPERIMENTS if not header_commands(p)]
    assert not missing, f"these experiments do not start with the command that runs them: {missing}"


COMMANDS = sorted({tuple(c) for p in EXPERIMENTS for c in header_commands(p)})


@pytest.mark.parametrize("command", COMMANDS,
                         ids=lambda c: " ".join(Path(a).name for a in c if a.endswith(".yaml")))
def test_experiment_command_parses(command, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as e:
        main([*command, "--print_config"])
    assert e.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"].startswith("ur.")
    assert config["data"]["class_path"].startswith("ur.")


def test_every_overlay_is_used_by_some_command():
    used = {Path(a).name for p in EXPERIMENTS for c in header_commands(p) for a in c
            if a.endswith(".yaml")}
    assert {p.name for p in EXPERIMENTS} <= used


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config_parses(stage):
    cfg = json.loads((REPO / f"experiments/real/deepspeed_zero{stage}.json").read_text())
    assert cfg["zero_optimization"]["stage"] == stage and cfg["bf16"]["enabled"]
    # Lightning's DeepSpeedStrategy refuses this key at fit time: accumulation comes from
    # the trainer's accumulate_grad_batches.
    assert "gradient_accumulation_steps" not in cfg


def test_ablation_shares_the_quickstart_tiny_base_and_world():
    """Both build the tiny base at the same path from the same world; different specs
    would rebuild it in turn."""
    quick = yaml.safe_load((REPO / "experiments/quickstart.yaml").read_text())
    ablation = yaml.safe_load((REPO / "experiments/ablations/task_synergy/base.yaml").read_text())
    assert ablation["model"]["init_args"]["checkpoint"] == quick["model"]["init_args"]["checkpoint"]
    assert ablation["pretrain"] == quick["pretrain"]
    assert ablation["data"]["init_args"]["world"] == quick["data"]["init_args"]["world"]
    assert quick["pretrain"]["world"] == quick["data"]["init_args"]["world"]
