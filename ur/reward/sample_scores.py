"""The judge's view of what a generator draws while it trains.

:class:`JudgeSampleScores` is a Lightning callback for generator training
(:class:`ur.align.diffusion_dpo.DiffusionDPOModule`): the samples the module draws for
its held-out prompts at validation and test are scored by a judge, pointwise, and the
mean is logged as ``val/judge_score`` (``test/judge_score``), on the judge's scale
mapped to [0, 1]. Beside the oracle's figures it shows whether the judge sees what the
oracle sees. Add it in the YAML::

    trainer:
      callbacks:
        - class_path: ur.reward.sample_scores.JudgeSampleScores
          init_args: {judge: checkpoints/quickstart/RUN_ID/export}
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from lightning import Callback
from torchmetrics import MeanMetric

from ur.data.records import JudgeQuery, Media
from ur.data.synthetic.writer import png_bytes
from ur.reward.judge import POINT_SCALES


class JudgeSampleScores(Callback):
    """Score validation and test samples with a judge.

    Args:
        judge: The judge: a Hugging Face folder (a reward run's ``export/``) or hub id.
        size: Samples are resized to this many pixels a side before judging (the size
            the judge was trained on: the world's ``image_size``).
        batch_size: Queries per judge call.
        trust_remote_code: Run code shipped with the judge (off unless you opt in).
    """

    def __init__(self, judge: str, size: int = 84, batch_size: int = 16,
                 trust_remote_code: bool = False):
        self.path, self.size, self.batch_size = judge, size, batch_size
        self.trust_remote_code = trust_remote_code
        self.judge = None
        self.means = {"val": MeanMetric(), "test": MeanMetric()}

    def _load(self, device) -> None:
        if self.judge is None:
            from ur.reward.judge import Judge

            self.judge = Judge.from_pretrained(self.path, trust_remote_code=self.trust_remote_code,
                                               batch_size=self.batch_size)
        self.judge.model.to(device)
        for m in self.means.values():
            m.to(device)

    def _resize(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frames)).float()
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                            align_corners=False, antialias=False)
        x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return x if frames.ndim == 4 else x[0]

    def score(self, samples: np.ndarray, prompts: list[str]) -> list[float]:
        """Judge scores in [0, 1] of uint8 images (N, H, W, 3) or clips (N, F, H, W, 3);
        a judgment that does not parse scores 0."""
        video = samples.ndim == 5
        task = "video_generation" if video else "image_generation"
        lo, hi = POINT_SCALES[task]
        with tempfile.TemporaryDirectory() as tmp:
            queries = []
            for i, (s, p) in enumerate(zip(samples, prompts, strict=True)):
                if video:
                    folder = Path(tmp) / f"{i}"
                    folder.mkdir()
                    for k, frame in enumerate(self._resize(s)):
                        (folder / f"frame_{k:04d}.png").write_bytes(png_bytes(frame))
                    media = Media(kind="frames", path=str(folder), field="sample")
                else:
                    media = Media(kind="image", data=png_bytes(self._resize(s)), field="sample")
                queries.append(JudgeQuery(task=task, form="pointwise", prompt=p,
                                          media=(media,), scale=(lo, hi)))
            judged = self.judge(queries)
        return [0.0 if j.score is None else (j.score - lo) / (hi - lo) for j in judged]

    def _batch_end(self, stage, pl_module, outputs) -> None:
        if not isinstance(outputs, dict) or "samples" not in outputs:
            return
        self._load(pl_module.device)
        for value in self.score(outputs["samples"], list(outputs["prompts"])):
            self.means[stage].update(value)

    def _epoch_end(self, stage, trainer, pl_module) -> None:
        metric = self.means[stage]
        if trainer.sanity_checking:
            metric.reset()
            return
        # every rank takes part in the sync, whether or not it judged a sample
        if metric.update_called or torch.distributed.is_initialized():
            value = metric.compute()
            if not torch.isnan(value):
                pl_module.log(f"{stage}/judge_score", value, sync_dist=True,
                              add_dataloader_idx=False)
        metric.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        self._batch_end("val", pl_module, outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0):
        self._batch_end("test", pl_module, outputs)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._epoch_end("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        self._epoch_end("test", trainer, pl_module)
