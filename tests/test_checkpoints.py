"""Untrusted checkpoints: a checkpoint is read from a local file only, with weights only,
and the settings stored in it never turn on remote code, downloads or writes elsewhere."""

import os
import time

import pytest
import torch

from ur.cli import main
from ur.lightning_cli import RUN_DIR_ENV, URCLI
from ur.reward.sft import RewardSFTModule
from ur.runs import WANDB_ENV_DIRS, load_module, refuse_remote_checkpoint

BORING = "lightning.pytorch.demos.boring_classes"
HOSTILE = {"checkpoint": "evil-org/evil-model", "trust_remote_code": True}


@pytest.fixture
def offline(monkeypatch):
    """The hub unreachable, and the environment URCLI sets restored after the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in (RUN_DIR_ENV, "WANDB_MODE", *WANDB_ENV_DIRS, "PL_GLOBAL_SEED"):
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)


def crafted(path, hparams, state_dict=None):
    torch.save({"state_dict": state_dict or {}, "hyper_parameters": hparams, "epoch": 0,
                "global_step": 0, "pytorch-lightning_version": "2.6.0"}, path)
    return path


@pytest.mark.parametrize("url", ["https://127.0.0.1:9/judge.ckpt", "http://x/y.ckpt",
                                 "s3://bucket/last.ckpt", "registry:org/model"])
def test_a_checkpoint_url_is_refused(url):
    with pytest.raises(SystemExit, match="not a local file"):
        refuse_remote_checkpoint(url, "ur test")
    refuse_remote_checkpoint("checkpoints/run/last.ckpt", "ur test")


def test_ur_test_refuses_a_checkpoint_url_before_reading_it(tmp_path, offline):
    with pytest.raises(SystemExit, match="not a local file"):
        URCLI(args=["test", "--model", f"{BORING}.BoringModel", "--data",
                    f"{BORING}.BoringDataModule", "--run.root", str(tmp_path),
                    "--ckpt_path", "https://127.0.0.1:9/judge.ckpt"])
    assert not any(tmp_path.iterdir()), "no run folder for a refused command"


def test_a_ckpt_paths_stored_settings_never_reach_the_model(tmp_path, offline):
    """`ur fit|test --ckpt_path X`: the model is made from the command line; the
    checkpoint's hub id and trust_remote_code are not merged into its settings."""
    ckpt = crafted(tmp_path / "crafted.ckpt", HOSTILE)
    seen = []

    class Parsed(URCLI):
        def before_instantiate_classes(self):
            seen.append(self.config[self.subcommand].model.init_args)
            raise SystemExit(0)

    for stage in ("fit", "test"):
        with pytest.raises(SystemExit):
            Parsed(args=[stage, "--model", "ur.reward.sft.RewardSFTModule",
                         "--model.init_args.checkpoint", "my/base", "--ckpt_path", str(ckpt)])
    assert [(m.checkpoint, m.trust_remote_code) for m in seen] == [("my/base", False)] * 2


def test_export_never_downloads_a_base_named_in_a_checkpoint(tmp_path, offline):
    ckpt = crafted(tmp_path / "crafted.ckpt", HOSTILE)
    start = time.monotonic()
    with pytest.raises(SystemExit, match="'evil-org/evil-model', which is not a folder here"):
        load_module(RewardSFTModule, ckpt, "ur export")
    with pytest.raises(SystemExit, match="which is not a folder here.*--base"):
        main(["export", str(ckpt), "--out", str(tmp_path / "out")])
    assert time.monotonic() - start < 5
    assert not (tmp_path / "out").exists()


def test_export_never_takes_trust_remote_code_from_a_checkpoint(mini_fit, tmp_path, offline):
    stored = torch.load(mini_fit / "checkpoints" / "last.ckpt", weights_only=True)
    stored["hyper_parameters"]["trust_remote_code"] = True
    ckpt = crafted(tmp_path / "crafted.ckpt", stored["hyper_parameters"], stored["state_dict"])
    module = load_module(RewardSFTModule, ckpt, "ur export")
    assert module.hparams.trust_remote_code is False


def test_a_file_that_is_not_a_plain_checkpoint_is_refused(tmp_path, offline):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, tmp_path / "p.ckpt")
    with pytest.raises(SystemExit, match="is not a checkpoint ur can read"):
        load_module(RewardSFTModule, tmp_path / "p.ckpt", "ur export")
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
