"""``RewardSFTModule``: train a generative judge with next-token SFT on the assistant turn.

The judge is a vision-language model trained, as UnifiedReward is, with plain
next-token cross-entropy on its answers (no Bradley-Terry head); the prompt and the
media tokens are masked out by the collate. Full fine-tuning or LoRA, and which parts
train (vision tower, projector, language model), are chosen in YAML. AdamW with linear
warmup then cosine decay over the run's optimizer steps.

Validation and test run the judge (:mod:`ur.reward.judge`) on the split's records and log
the metrics of :mod:`ur.reward.metrics` as ``val/<task>/<metric>`` (``test/...``), plus
the teacher-forced ``val/loss``. At the end of fit the model is exported as a Hugging
Face folder (``<run>/export``) that transformers alone can load.

Assumes: the model loads with :func:`ur.models.loading.load_vlm` from a checkpoint that
exists (a tiny base is built beforehand, by ``ur fit``'s ``pretrain:`` or
:func:`ur.pretrain.ensure_tiny_vlm`); the DataModule is a
:class:`ur.data.datamodule.PreferenceDataModule` (its templates and frame count are the
judge's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from lightning import LightningModule

from ur.callbacks import SkippedRecords
from ur.data.collate import IGNORE_INDEX
from ur.models.module import VLMTrainingMixin
from ur.reward.judge import Judge
from ur.reward.metrics import JudgeMetrics
from ur.training import (
    Finetune,
    LoraSpec,
    OptimizerSpec,
    as_spec,
    plain,
)


@dataclass
class JudgeSpec:
    """How validation and test judge the records."""

    mode: Literal["fast", "generate"] = "fast"
    """``fast``: the decision read from the answer tokens' logits; ``generate``: decode,
    then parse."""
    both_orders: bool = True
    """Judge pairs in both orders: combines them and measures position consistency."""
    max_new_tokens: int = 96
    batch_size: int = 16
    pair_from: Literal["verdict", "points", "both"] = "verdict"
    """Where a pairwise decision comes from: the pairwise verdict, two pointwise scores
    (one per candidate, on the task's scale), or both averaged (ur.reward.judge)."""
    point_scales: dict[str, tuple[float, float]] | None = None
    """Per task, the scale candidates are scored on for ``pair_from`` points or both
    (default: ur.reward.judge.POINT_SCALES, the scales the world's sources use)."""
    describe_first: list[str] = field(default_factory=list)
    """Tasks judged in two steps: each image or clip described on its own, then the
    question asked with the descriptions as text (ur.reward.judge; the judge must have
    learned text views of these tasks)."""
    describer: str | None = None
    """The checkpoint that writes those descriptions (default: the judge itself), e.g. the
    base the judge was trained from. Loaded without remote code."""


class RewardSFTModule(VLMTrainingMixin, LightningModule):
    """A generative reward model (judge) trained by SFT.

    Args:
        checkpoint: Base model: a hub id (``Qwen/Qwen2.5-VL-7B-Instruct``) or a local
            folder (a tiny base built by ``pretrain:``).
        finetune: ``full`` or ``lora``.
        train_vision: Train the vision tower (full) / put LoRA on it (lora).
        train_projector: Train the vision-language projector.
        train_language: Train the language model (full) / put LoRA on it (lora).
        lora: LoRA settings.
        optimizer: Learning rate and schedule.
        judge: How validation and test judge.
        gradient_checkpointing: Trade compute for memory (large models on GPUs).
        dtype: Weights dtype (``bfloat16`` on GPUs; None keeps float32 on CPU).
        trust_remote_code: Run code shipped with the checkpoint (off unless you opt in).
        export: Save a Hugging Face folder of the trained model at the end of fit.
        merge_lora: Merge LoRA adapters into the exported weights.
    """

    def __init__(
        self,
        checkpoint: str = "checkpoints/tiny/qwen2_vl-world",
        finetune: Finetune = "full",
        train_vision: bool = True,
        train_projector: bool = True,
        train_language: bool = True,
        lora: LoraSpec | None = None,
        optimizer: OptimizerSpec | None = None,
        judge: JudgeSpec | None = None,
        gradient_checkpointing: bool = False,
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        trust_remote_code: bool = False,
        export: bool = True,
        merge_lora: bool = True,
    ):
        super().__init__()
        if finetune not in ("full", "lora"):
            raise ValueError(f"finetune must be 'full' or 'lora', got {finetune!r}")
        # Plain values only, so a checkpoint loads with torch.load(weights_only=True).
        self.save_hyperparameters({
            "checkpoint": str(checkpoint), "finetune": finetune,
            "train_vision": train_vision, "train_projector": train_projector,
            "train_language": train_language, "lora": plain(lora), "optimizer": plain(optimizer),
            "judge": plain(judge), "gradient_checkpointing": gradient_checkpointing,
            "dtype": dtype, "trust_remote_code": trust_remote_code, "export": export,
            "merge_lora": merge_lora}, logger=False)
        self.lora_spec = as_spec(LoraSpec, lora) or LoraSpec()
        self.optim = as_spec(OptimizerSpec, optimizer) or OptimizerSpec()
        self.judge_spec = as_spec(JudgeSpec, judge) or JudgeSpec()
        self.checkpoint_path = str(checkpoint)
        from ur.models.loading import load_vlm, make_trainable

        model, self.processor = load_vlm(checkpoint, dtype=dtype,
                                         trust_remote_code=trust_remote_code)
        self.model = make_trainable(model, finetune=finetune, lora=self.lora_spec,
                                    train_vision=train_vision, train_projector=train_projector,
                                    train_language=train_language,
                                    gradient_checkpointing=gradient_checkpointing)
        self.metrics = torch.nn.ModuleDict({"val": JudgeMetrics("val"), "test": JudgeMetrics("test")})
        self._judge = None

    # -- training --------------------------------------------------------------------------
    def configure_callbacks(self):
        """Counting, logging and capping the records the collator drops as unusable."""
        return [SkippedRecords()]

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k not in ("records", "text_views")}

    def forward(self, batch: dict, **kwargs):
        return self.model(**self.model_inputs(batch), **kwargs)

    def training_step(self, batch, batch_idx):
        if not batch.get("records"):  # every record of the batch was skipped as bad
            return None
        if "text_views" not in batch:
            loss = self(batch).loss
        else:
            # Each part is padded to its own length; the token losses are summed over both
            # and divided by the batch's target tokens, the mean one padded batch gives.
            parts = (batch, batch["text_views"])
            targets = sum((p["labels"][:, 1:] != IGNORE_INDEX).sum() for p in parts)
            loss = sum(self(p, num_items_in_batch=targets).loss for p in parts)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["records"]))
        return loss

    # -- judging ---------------------------------------------------------------------------
    @property
    def judge(self) -> Judge:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self._judge is None:
            kwargs = {}
            if dm is not None:
                kwargs = dict(templates=dm.templates, num_frames=dm.num_frames,
                              processor_kwargs=dm.processor_kwargs)
            spec = self.judge_spec
            self._judge = Judge(self.model, self.processor, mode=spec.mode,
                                both_orders=spec.both_orders, max_new_tokens=spec.max_new_tokens,
                                batch_size=spec.batch_size, pair_from=spec.pair_from,
                                **({"point_scales": spec.point_scales} if spec.point_scales
                                   else {}), describe_first=tuple(spec.describe_first),
                                describer=self._describer(), **kwargs)
        return self._judge

    def _describer(self) -> Judge | None:
        path = self.judge_spec.describer
        if path is None:
            return None
        describer = Judge.from_pretrained(path, mode="generate", max_new_tokens=48,
                                          batch_size=self.judge_spec.batch_size)
        describer.model.to(self.device)
        return describer

    def _eval_step(self, batch, stage: str):
        """The teacher-forced loss and the judge's verdicts on the batch's records, into
        the stage's metrics (each record counted once however the split was sharded)."""
        records = list(batch.get("records") or [])
        if not records:
            return
        metrics = self.metrics[stage]
        inputs = {k: v for k, v in self.model_inputs(batch).items() if k != "labels"}
        metrics.update_loss(records, self.model(**inputs).logits, batch["labels"])
        dm = self.trainer.datamodule if self._trainer is not None else None
        kinds = dm.difference_kinds(records) if hasattr(dm, "difference_kinds") else None
        metrics.update(records, self.judge(records), kinds)

    def _eval_end(self, stage: str):
        values = self.metrics[stage].compute()  # synced: the same on every rank
        if values:
            # Averaging equal values leaves them as they are; it tells Lightning they are
            # synced, which it otherwise warns about once per metric.
            self.log_dict(values, sync_dist=True)
            summary = _task_means(values, stage)
            self.log_dict(summary, prog_bar=stage == "val", sync_dist=True)
        self.metrics[stage].reset()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_end("test")

    def predict_step(self, batch, batch_idx):
        records = list(batch.get("records") or [])
        return [{"id": r.id, "task": r.task, "form": r.form, **asdict(j)}
                for r, j in zip(records, self.judge(records), strict=True)]


def _task_means(values: dict, stage: str) -> dict:
    """Mean pairwise accuracy and mean Spearman over the tasks present (one number to
    watch in the progress bar and to sweep on)."""
    acc = [v for k, v in values.items() if k.endswith("/pair_acc_diff")]
    rho = [v for k, v in values.items() if k.endswith("/point_spearman") and not math.isnan(v)]
    out = {}
    if acc:
        out[f"{stage}/pair_acc_diff_mean"] = sum(acc) / len(acc)
    if rho:
        out[f"{stage}/point_spearman_mean"] = sum(rho) / len(rho)
    return out
