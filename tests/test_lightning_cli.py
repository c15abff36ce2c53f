"""URCLI: importable and subclassable; its setup needs no `checkpoint` on the model and no
`processor` on the DataModule (a diffusion model, a pairs DataModule)."""

import json
import os
from pathlib import Path

import pytest
import yaml
from minirun import run_ur

from ur.lightning_cli import RUN_DIR_ENV, URCLI
from ur.runs import WANDB_ENV_DIRS

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


@pytest.fixture
def cli_env(monkeypatch):
    """The environment URCLI sets for its run, restored after the test."""
    for var in (RUN_DIR_ENV, "WANDB_MODE", *WANDB_ENV_DIRS, "PL_GLOBAL_SEED"):
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)


def boring(*args):
    return ["--model", f"{BORING}.BoringModel", "--data", f"{BORING}.BoringDataModule", *args]


def test_secrets_from_the_environment_are_masked_in_the_saved_and_logged_config(
        tmp_path, monkeypatch, cli_env):
    monkeypatch.setenv("UR_TEST_TOKEN", "hf_sekrit123")
    monkeypatch.setenv("UR_TEST_NOTE", "plain words")
    config = tmp_path / "secrets.yaml"
    config.write_text("run:\n  meta:\n    hf_token: ${oc.env:UR_TEST_TOKEN}\n"
                      "    WANDB_API_KEY: ${oc.env:UR_TEST_TOKEN}\n"
                      "    db:\n      password: ${oc.env:UR_TEST_TOKEN}\n"
                      "    note: ${oc.env:UR_TEST_NOTE}\n")
    URCLI(args=["fit", "--config", str(config), *boring(
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path / "logs"),
        "--run.root", str(tmp_path / "checkpoints"))])
    run_dir = next((tmp_path / "checkpoints" / "secrets").iterdir())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["meta"]
    assert saved == {"hf_token": "***", "WANDB_API_KEY": "***", "db": {"password": "***"},
                     "note": "plain words"}
    logged = list((tmp_path / "logs").rglob("hparams.yaml"))
    assert logged and "sekrit" not in logged[0].read_text()
    assert "plain words" in logged[0].read_text()


def test_resuming_the_newest_run_without_a_checkpoint_stops(tmp_path, cli_env):
    """The newest run of the name (killed before its first checkpoint) is the one
    `--ckpt_path last` resumes: it says so and stops, rather than continue (and
    overwrite) an older finished run."""
    runs = tmp_path / "checkpoints" / "boring"
    older = runs / "20200101-000000-aaaa"
    (older / "checkpoints").mkdir(parents=True)
    (older / "checkpoints" / "last.ckpt").write_bytes(b"a finished run's checkpoint")
    newest = runs / "20990101-000000-bbbb"
    newest.mkdir()
    with pytest.raises(SystemExit) as e:
        URCLI(args=["fit", *boring("--run.root", str(tmp_path / "checkpoints"),
                                   "--run.name", "boring", "--ckpt_path", "last")])
    assert str(newest) in str(e.value) and "no checkpoint yet" in str(e.value)
    assert sorted(p.name for p in older.rglob("*")) == ["checkpoints", "last.ckpt"]
    assert list(newest.iterdir()) == []


UNUSABLE = """
from lightning.pytorch.demos.boring_classes import BoringDataModule
from ur.data.datamodule import CorpusError
from ur.data.records import RecordError


class Unusable(BoringDataModule):
    def setup(self, stage):
        raise CorpusError([RecordError("cannot decode", file="pairs.jsonl", row=7,
                                       field="image")])
"""


def test_bad_data_stops_a_stage_with_its_message_not_a_traceback(tmp_path):
    (tmp_path / "unusable.py").write_text(UNUSABLE)
    run = run_ur("fit", "--model", "lightning.pytorch.demos.boring_classes.BoringModel",
                 "--data", "unusable.Unusable", "--trainer.max_steps", "1", cwd=tmp_path,
                 check=False, env={"PYTHONPATH": str(tmp_path)})
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "ur fit:" in run.stderr and "pairs.jsonl, row 7, field 'image'" in run.stderr


def test_wandb_run_ids_read_back_from_a_config_as_strings(tmp_path):
    """The run's W&B id goes into its saved config.yaml, which replaying the run reads
    back: an id must not read as a number there ("7082e844" reads as inf)."""
    from jsonargparse._loaders_dumpers import yaml_load

    from ur.runs import wandb_run_id

    for i in range(400):
        run_dir = tmp_path / str(i)
        run_dir.mkdir()
        run_id = wandb_run_id(run_dir)
        assert yaml_load(f"id: {run_id}") == {"id": run_id}
        assert wandb_run_id(run_dir) == run_id  # stored, and reused
