"""``VLMDPOModule``: Direct Preference Optimization of a vision-language policy.

Supports: Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision checkpoints (anything
:func:`ur.models.loading.load_vlm` loads), images and videos; full fine-tuning or LoRA
by part (:mod:`ur.training`); the sigmoid, robust, IPO and hinge losses with an optional
SFT term on chosen (RPO, UnifiedReward's "gamma"), from :mod:`ur.align.losses`.

Assumes: batches from :class:`ur.data.pairs.PairsDataModule`: each pair's prompt and
media once, its chosen and rejected answers beside them. The prompt and its media run
once per pair and both answers continue from its kept keys and values
(:mod:`ur.models.prefix`; ``shared_prompt``), with the log-probabilities of running
both rows in full.

The reference model is the policy as it starts:

- ``adapters_off``: with LoRA, the same model with its adapters disabled inside
  ``torch.no_grad()`` (no second copy of the weights);
- ``copy``: a frozen copy of the starting weights (full fine-tuning), kept out of
  checkpoints since it is the base the module is built from;
- ``cached``: the starting weights' log-probabilities of every pair, computed once
  (the base loaded for that, then freed) and kept on disk beside the pairs
  (:mod:`ur.align.reference_cache`); a step then runs the policy alone;
- ``auto``: ``adapters_off`` for LoRA, ``copy`` otherwise.

Logged per split: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``. Validation and test also
ask the policy the data module's held-out questions (greedy) and, on the synthetic
world, log how right its answers are by the oracle (``val/oracle_accuracy``, per task
too): the figure that says whether DPO helped, which the loss cannot. The test's
answers, each with its oracle score, go to ``test_answers.jsonl`` in the run folder, so
two policies can be compared question by question (a paired interval).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
from lightning import LightningModule
from torchmetrics import MeanMetric

from ur.align.losses import PreferenceKind, preference_loss, rpo_loss, sequence_logps
from ur.align.outputs import write_test_rows
from ur.callbacks import SkippedRecords
from ur.data.records import record_key
from ur.models.module import VLMTrainingMixin
from ur.models.prefix import answer_logits
from ur.training import (
    Finetune,
    LoraSpec,
    OptimizerSpec,
    as_spec,
    plain,
)

Reference = Literal["auto", "adapters_off", "copy", "cached"]
UNDERSTANDING = ("image_understanding", "video_understanding")


class VLMDPOModule(VLMTrainingMixin, LightningModule):
    """DPO for a vision-language policy.

    Args:
        checkpoint: The policy to align: a hub id or a local folder (the tiny base).
        finetune: ``full`` or ``lora``.
        train_vision: Train the vision tower (full) / put LoRA on it (lora).
        train_projector: Train the vision-language projector.
        train_language: Train the language model (full) / put LoRA on it (lora).
        lora: LoRA settings.
        optimizer: Learning rate and schedule (UnifiedReward: 5e-7, warmup 0.3, cosine).
        loss: ``sigmoid`` (DPO; ``label_smoothing`` makes it conservative DPO),
            ``robust``, ``ipo`` or ``hinge``.
        beta: The preference loss's beta (UnifiedReward: 0.1).
        label_smoothing: Label noise assumed by ``sigmoid`` / ``robust``.
        sft_weight: Weight of the mean NLL of the chosen answers added to the loss (RPO);
            0 for plain DPO.
        reference: ``auto``, ``adapters_off`` (LoRA), ``copy`` or ``cached``.
        reference_cache: Folder of the cached reference tables (default: ``.ur_reference``
            beside the first training source).
        answer_tokens: New tokens at most when the policy answers held-out questions.
        shared_prompt: Run each pair's prompt and media once for both answers; False runs
            prompt + chosen and prompt + rejected as two full rows (the same figures at
            about twice the prompt's cost). Gradient checkpointing runs full rows anyway.
        gradient_checkpointing: Trade compute for memory (large models on GPUs).
        dtype: Weights dtype (``bfloat16`` on GPUs; None keeps float32 on CPU).
        trust_remote_code: Run code shipped with the checkpoint (off unless you opt in).
        export: Save a Hugging Face folder of the aligned policy at the end of fit.
        merge_lora: Merge LoRA adapters into the exported weights.
    """

    def __init__(
        self,
        checkpoint: str = "checkpoints/tiny/qwen2_vl-world",
        finetune: Finetune = "lora",
        train_vision: bool = False,
        train_projector: bool = False,
        train_language: bool = True,
        lora: LoraSpec | None = None,
        optimizer: OptimizerSpec | None = None,
        loss: PreferenceKind = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        reference: Reference = "auto",
        reference_cache: str | None = None,
        answer_tokens: int = 32,
        shared_prompt: bool = True,
        gradient_checkpointing: bool = False,
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        trust_remote_code: bool = False,
        export: bool = True,
        merge_lora: bool = True,
    ):
        super().__init__()
        if reference == "auto":
            reference = "adapters_off" if finetune == "lora" else "copy"
        if reference == "adapters_off" and finetune != "lora":
            raise ValueError("reference: adapters_off needs finetune: lora (full fine-tuning "
                             "has no adapters to switch off); use reference: copy")
        self.save_hyperparameters({
            "checkpoint": str(checkpoint), "finetune": finetune, "train_vision": train_vision,
            "train_projector": train_projector, "train_language": train_language,
            "lora": plain(lora), "optimizer": plain(optimizer), "loss": loss, "beta": beta,
            "label_smoothing": label_smoothing, "sft_weight": sft_weight,
            "reference": reference, "reference_cache": reference_cache,
            "answer_tokens": answer_tokens, "shared_prompt": shared_prompt,
            "gradient_checkpointing": gradient_checkpointing, "dtype": dtype,
            "trust_remote_code": trust_remote_code, "export": export,
            "merge_lora": merge_lora}, logger=False)
        self.optim = as_spec(OptimizerSpec, optimizer) or OptimizerSpec(lr=5e-7, warmup_ratio=0.3)
        lora = as_spec(LoraSpec, lora) or LoraSpec()
        self.checkpoint_path = str(checkpoint)
        from ur.models.loading import load_vlm, make_trainable

        model, self.processor = load_vlm(checkpoint, dtype=dtype,
                                         trust_remote_code=trust_remote_code)
        self._reference = None
        self._reference_table: dict[int, tuple[float, float]] | None = None
        if reference == "copy":
            # Held outside the module's children: it is the base itself, so checkpoints
            # need not carry it, and the optimizer never sees it.
            self._reference = [copy.deepcopy(model).eval().requires_grad_(False)]
        self.model = make_trainable(model, finetune=finetune, lora=lora,
                                    train_vision=train_vision, train_projector=train_projector,
                                    train_language=train_language,
                                    gradient_checkpointing=gradient_checkpointing)
        self.oracle = torch.nn.ModuleDict({
            stage: torch.nn.ModuleDict({"all": MeanMetric(), **{t: MeanMetric() for t in UNDERSTANDING}})
            for stage in ("val", "test")})
        self._test_answers: list[dict] = []

    def configure_callbacks(self):
        """Counting, logging and capping the pairs the collator drops as unusable."""
        return [SkippedRecords()]

    # -- scoring pairs ---------------------------------------------------------------------
    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k != "records"}

    def answer_logps(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities and token counts of the batch's answers, chosen rows
        then rejected rows."""
        return sequence_logps(*answer_logits(model, batch, shared=self.hparams.shared_prompt))

    def reference_logps(self, batch: dict) -> torch.Tensor:
        """Summed answer log-probabilities under the reference, rows as in the batch."""
        if self.hparams.reference == "cached":
            table = self.reference_table()
            pairs = list(batch["records"])
            values = ([table[record_key(p)][0] for p in pairs]
                      + [table[record_key(p)][1] for p in pairs])
            return torch.tensor(values, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            if self._reference is not None:
                ref = self._reference[0]
                if next(ref.parameters()).device != self.device:
                    ref.to(self.device)
                return self.answer_logps(ref, batch)[0]
            with self.model.disable_adapter():
                return self.answer_logps(self.model, batch)[0]

    def reference_table(self) -> dict[int, tuple[float, float]]:
        """The cached reference log-probabilities of every training and validation pair
        of the data module, computed on first use where the table lacks them."""
        if self._reference_table is None:
            from ur.align.reference_cache import (
                cached_reference_logps,
                compute_reference_logps,
                reference_fingerprint,
            )
            from ur.models.loading import load_vlm

            dm = self.trainer.datamodule
            pairs = [p for split in ("train", "val") for p in dm.pairs.get(split, [])]
            shaping = {"num_frames": dm.num_frames, "max_length": dm.max_length,
                       "processor_kwargs": dm.processor_kwargs}
            folder = (Path(self.hparams.reference_cache) if self.hparams.reference_cache else
                      Path(dm.sources["train"][0].path).parent / ".ur_reference")
            path = folder / f"ref_logps-{reference_fingerprint(self.checkpoint_path, shaping)}.pt"

            def compute(missing):
                base, _ = load_vlm(self.checkpoint_path, dtype=self.hparams.dtype,
                                   trust_remote_code=self.hparams.trust_remote_code)
                return compute_reference_logps(base.to(self.device), dm.collator(), missing,
                                               batch_size=dm.eval_batch_size, device=self.device)

            self._reference_table = cached_reference_logps(path, pairs, compute)
        return self._reference_table

    def pair_step(self, batch: dict, stage: str) -> torch.Tensor | None:
        pairs = len(batch.get("records") or [])
        if not pairs:
            return None
        logps, tokens = self.answer_logps(self.model, batch)
        ref = self.reference_logps(batch)
        hp = self.hparams
        result = preference_loss(hp.loss, logps[:pairs], logps[pairs:], ref[:pairs], ref[pairs:],
                                 hp.beta, label_smoothing=hp.label_smoothing,
                                 chosen_tokens=tokens[:pairs], rejected_tokens=tokens[pairs:])
        loss = (rpo_loss(result.losses, logps[:pairs], tokens[:pairs], hp.sft_weight)
                if hp.sft_weight else result.losses.mean())
        values = {"rewards/chosen": result.chosen_rewards.mean(),
                  "rewards/rejected": result.rejected_rewards.mean(),
                  "rewards/margins": result.margins.mean(),
                  "rewards/accuracies": result.accuracies.float().mean(),
                  "logps/chosen": logps[:pairs].detach().mean(),
                  "logps/rejected": logps[pairs:].detach().mean()}
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, batch_size=pairs,
                      sync_dist=stage != "train", add_dataloader_idx=False)
        self.log(f"{stage}/loss", loss, batch_size=pairs, prog_bar=True,
                 sync_dist=stage != "train", add_dataloader_idx=False)
        return loss

    def training_step(self, batch, batch_idx):
        return self.pair_step(batch, "train")

    # -- asking held-out questions ---------------------------------------------------------
    @torch.no_grad()
    def answer(self, batch: dict) -> list[str]:
        """Greedy answers to a batch of left-padded prompts."""
        inputs = self.model_inputs(batch)
        width = inputs["input_ids"].shape[1]
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(**inputs, max_new_tokens=self.hparams.answer_tokens,
                                  do_sample=False, pad_token_id=pad)
        self.model.train(was_training)
        return [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out]

    def question_step(self, batch: dict, stage: str) -> None:
        from ur.data.synthetic.oracle import oracle_score

        records = list(batch.get("records") or [])
        if not records:
            return
        for q, said in zip(records, self.answer(batch), strict=True):
            score = oracle_score(q, said)
            self.oracle[stage]["all"].update(score)
            self.oracle[stage][q.task].update(score)
            if stage == "test":
                self._test_answers.append({"id": q.id, "task": q.task, "answer": said,
                                           "oracle_score": score})

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if "answer_ids" in batch:
            self.pair_step(batch, "val")
        else:
            self.question_step(batch, "val")

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.question_step(batch, "test")

    def _oracle_end(self, stage: str) -> None:
        for name, metric in self.oracle[stage].items():
            # every rank takes part in every sync, whether or not it saw a question
            if metric.update_called or torch.distributed.is_initialized():
                key = f"{stage}/oracle_accuracy" + ("" if name == "all" else f"/{name}")
                value = metric.compute()
                if not torch.isnan(value):
                    self.log(key, value, prog_bar=name == "all", sync_dist=True,
                             add_dataloader_idx=False)
            metric.reset()

    def on_validation_epoch_end(self):
        self._oracle_end("val")

    def on_test_epoch_start(self):
        self._test_answers = []

    def on_test_epoch_end(self):
        self._oracle_end("test")
        self._write_test_answers()

    def _write_test_answers(self) -> None:
        """Every rank's answers, in question order, to ``test_answers.jsonl`` (rank 0)."""
        write_test_rows(self.trainer, self._test_answers, "test_answers.jsonl",
                        key=lambda r: r["id"])
