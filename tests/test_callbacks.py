"""Progress lines for runs without a terminal; checkpoints by time; per-step seeds."""

import io

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from ur.callbacks import PeriodicModelCheckpoint, ProgressLines, StepSeeds


class LoggingModel(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train/loss", out["loss"])
        return out


def test_progress_lines_every_n_steps_with_loss_and_time_left():
    stream = io.StringIO()
    L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0,
              callbacks=[ProgressLines(every=2, stream=stream)]).fit(LoggingModel())
    lines = stream.getvalue().splitlines()
    assert [x.split()[1] for x in lines] == ["2/6", "4/6", "6/6"]
    assert all(" loss " in x and "steps/s" in x and "min left" in x for x in lines)


class DropoutModel(BoringModel):
    """Dropout on one input repeated: a run resumed anywhere in an epoch sees the same
    batches (a plain loader restarts its epoch), so only the dropout masks can differ."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(32, 2))

    def train_dataloader(self):
        return torch.utils.data.DataLoader([torch.ones(32)] * 64, batch_size=2)


def fit_dropout(tmp_path, max_steps, ckpt_path=None, callbacks=()):
    torch.manual_seed(0)  # the same model and data in every run
    model = DropoutModel()
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[StepSeeds(seed=7), *callbacks])
    trainer.fit(model, ckpt_path=ckpt_path)
    return model


def test_a_run_resumed_with_dropout_ends_with_the_uninterrupted_runs_weights(tmp_path):
    whole = fit_dropout(tmp_path / "whole", 6)
    fit_dropout(tmp_path / "cut", 3, callbacks=[ModelCheckpoint(
        dirpath=tmp_path / "cut", save_last=True, every_n_train_steps=3)])
    torch.manual_seed(123)  # whatever the resumed process drew before
    resumed = fit_dropout(tmp_path / "resumed", 6, ckpt_path=tmp_path / "cut" / "last.ckpt")
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


class LastStep(Callback):
    """The step of last.ckpt as each batch starts (Lightning runs checkpoint callbacks
    after the others, so at a batch's end it would see the previous batch's)."""

    def __init__(self, path):
        self.path, self.steps = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(torch.load(self.path, weights_only=True)["global_step"]
                          if self.path.exists() else None)


def test_periodic_checkpoints_are_saved_between_validations(tmp_path):
    probe = LastStep(tmp_path / "last.ckpt")
    L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, callbacks=[
                  PeriodicModelCheckpoint(dirpath=tmp_path, save_last="link", save_top_k=1,
                                          every_minutes=0), probe]).fit(BoringModel())
    assert probe.steps == [None, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=3.ckpt", "last.ckpt"]
