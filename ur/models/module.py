"""What the LightningModules that train a vision-language model share: AdamW over the
model's parameters at their parts' rates with the warmup-cosine schedule, and a Hugging
Face folder of the trained model at the end of fit."""

from __future__ import annotations

from pathlib import Path

from ur.training import adamw_with_schedule, parameter_groups


class VLMTrainingMixin:
    """For a LightningModule with ``model``, ``processor`` and ``optim`` (an
    :class:`ur.training.OptimizerSpec`); exports at the end of fit when its
    hyperparameter ``export`` is true (LoRA merged as ``merge_lora`` says)."""

    def configure_optimizers(self):
        from ur.models.loading import part_of

        groups = parameter_groups(self.model.named_parameters(), self.optim, part_of)
        return adamw_with_schedule(groups, self.optim, self.trainer.estimated_stepping_batches)

    def on_fit_end(self):
        if self.hparams.get("export") and self.trainer.is_global_zero:
            # the run's own folder: a resumed run that ends again replaces it
            self.export(Path(self.trainer.default_root_dir) / "export", overwrite=True)

    def export(self, out: str | Path, *, merge_lora: bool | None = None,
               overwrite: bool = False) -> Path:
        """Save model + processor as a Hugging Face folder (LoRA merged on request); an
        ``out`` that holds anything is replaced only with ``overwrite``."""
        from ur.models.export import save_hf

        merge = self.hparams.get("merge_lora", True) if merge_lora is None else merge_lora
        return save_hf(self.model, self.processor, out, merge_lora=merge, overwrite=overwrite)
