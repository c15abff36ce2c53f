"""URCLI: importable and subclassable; its setup needs no `checkpoint` on the model and no
`processor` on the DataModule (a diffusion model, a pairs DataModule)."""

import json
from pathlib import Path

import pytest
import yaml
from minirun import run_ur

from ur.lightning_cli import URCLI

BORING = "lightning.pytorch.demos.boring_classes"


def test_a_model_without_checkpoint_and_data_without_processor_fit(tmp_path):
    run = run_ur("fit", "--model", f"{BORING}.BoringModel", "--data",
                 f"{BORING}.BoringDataModule", "--trainer.max_steps", "2",
                 "--trainer.limit_val_batches", "1", "--run.name", "boring", cwd=tmp_path)
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path / "checkpoints" / "boring"
    assert "fit" in json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_the_cli_can_be_subclassed_with_options_of_its_own(capsys):
    class WithOption(URCLI):
        def add_arguments_to_parser(self, parser):
            super().add_arguments_to_parser(parser)
            parser.add_argument("--extra.note", type=str, default="none")

    with pytest.raises(SystemExit) as e:
        WithOption(args=["fit", "--model", f"{BORING}.BoringModel", "--data",
                         f"{BORING}.BoringDataModule", "--extra.note", "hello",
                         "--print_config"])
    assert e.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["extra"]["note"] == "hello" and config["run"]["root"] == "checkpoints"
