"""Progress lines for runs without a terminal."""

import io

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel

from ur.callbacks import ProgressLines


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
