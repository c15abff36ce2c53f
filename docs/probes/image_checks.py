"""Probe: with answer checks in the targets and enough steps, does a tiny judge learn
image and video understanding verdicts?

Trains a judge from ``--base`` on the world's understanding pairs only (both image and
video, candidate order balanced), targets with answer checks ("The image shows ...
Answer 1: ... Right. Answer 2: ... Wrong. Answer 1 is better"; ``--check-style claims``:
"Answer 1: red vs red yes. Right. ..."), full fine-tuning with
``RewardSFTModule`` (lr 1e-3, 5% warmup, cosine). Every ``--every`` steps it judges 64
image and 64 video test pairs (ties left out) greedily and prints one JSON line: verdicts
right per task and question kind, and (restated checks) how often both answers were
copied exactly.
Results are in docs/tiny_base.md.

    python docs/probes/image_checks.py --base checkpoints/tiny/qwen2_vl-world-checks \\
        [--steps 2000] [--batch-size 32] [--mark-weight 1] [--check-style restate]

A base pretrained with checks is built by
``ur fit --config experiments/quickstart.yaml
--model.init_args.checkpoint checkpoints/tiny/qwen2_vl-world-checks
--pretrain.answer_checks true --data.init_args.templates.answer_checks true``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict

import lightning as L
import torch
from text_checks import mark_token_ids, weighted_loss  # docs/probes/text_checks.py

from ur.data.answers import parse_pairwise
from ur.data.collate import Conversation, ConversationCollator
from ur.data.datamodule import WorldSpec, load_records
from ur.data.synthetic.scene import parse_question
from ur.data.templates import PromptTemplates
from ur.reward.sft import RewardSFTModule
from ur.training import OptimizerSpec


class Probe(L.Callback):
    def __init__(self, test, templates, processor, every):
        self.test, self.templates, self.every = test, templates, every
        self.prompts = ConversationCollator(processor, with_targets=False)
        self.tokenizer = processor.tokenizer
        self.start = time.time()

    def on_train_batch_end(self, trainer, module, *args):
        step = trainer.global_step
        if step % self.every:
            return
        module.model.eval()
        right = defaultdict(list)
        for k in range(0, len(self.test), 32):
            chunk = self.test[k:k + 32]
            batch = self.prompts([Conversation.of(r, self.templates) for r in chunk])
            batch.pop("records", None)
            width = batch["input_ids"].shape[1]
            with torch.no_grad():
                out = module.model.generate(**batch, max_new_tokens=110, do_sample=False)
            for r, seq in zip(chunk, out, strict=True):
                said = self.tokenizer.decode(seq[width:], skip_special_tokens=True)
                ok = parse_pairwise(said) == r.label
                right[f"{r.modality}-{parse_question(r.prompt).asks}"].append(ok)
                right["all"].append(ok)
                if self.templates.check_style == "restate":
                    right["copied"].append(all(a in said for a in r.responses))
        module.model.train()
        loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
        print(json.dumps({"step": step, "loss": round(loss, 3),
                          "minutes": round((time.time() - self.start) / 60, 1),
                          **{k: f"{sum(v)}/{len(v)}" for k, v in sorted(right.items())}}),
              flush=True)


class MarkWeighted(RewardSFTModule):
    """The judge's SFT with the mark tokens (Right, Wrong, Partly) weighted in the loss;
    with weight 1, the module's own training step, as before the option existed."""

    def __init__(self, *args, mark_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.mark_weight = mark_weight
        self.marks = mark_token_ids(self.processor.tokenizer)

    def training_step(self, batch, batch_idx):
        if self.mark_weight == 1.0:
            return super().training_step(batch, batch_idx)
        loss = weighted_loss(self.model, self.model_inputs(batch), self.marks, self.mark_weight)
        self.log("train/loss", loss, batch_size=len(batch["records"]))
        return loss


def understanding_pairs(world, split, coin, *, ties):
    """The world's understanding pairs of a split, each swapped when ``coin`` says so."""
    keep = [r for recs in load_records(world.sources(split))[0] for r in recs
            if r.task.endswith("understanding") and r.form == "pairwise"
            and (ties or r.label != "tie")]
    return [r.swapped() if coin.random() < 0.5 else r for r in keep]


def image_and_video(pairs, n=64):
    """The probe's test set: the first ``n`` image pairs and the first ``n`` video pairs."""
    return ([r for r in pairs if r.modality == "image"][:n]
            + [r for r in pairs if r.modality == "video"][:n])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--mark-weight", type=float, default=1.0,
                    help="weight of the mark tokens (Right, Wrong, Partly) in the loss")
    ap.add_argument("--check-style", choices=("restate", "claims"), default="restate",
                    help="how each answer is checked in the targets (PromptTemplates)")
    ap.add_argument("--world", default="data/world")
    args = ap.parse_args(argv)
    templates = PromptTemplates(answer_checks=True, check_style=args.check_style)
    world = WorldSpec(out=args.world)
    coin = random.Random(0)
    train = understanding_pairs(world, "train", coin, ties=True)
    test = image_and_video(understanding_pairs(world, "test", coin, ties=False))
    L.seed_everything(0)
    module = MarkWeighted(checkpoint=args.base, finetune="full", export=False,
                          optimizer=OptimizerSpec(lr=1e-3, warmup_ratio=0.05,
                                                  min_lr_ratio=0.05),
                          mark_weight=args.mark_weight)
    loader = torch.utils.data.DataLoader(
        [Conversation.of(r, templates) for r in train], batch_size=args.batch_size,
        shuffle=True, drop_last=True, num_workers=1,
        collate_fn=ConversationCollator(module.processor))
    L.Trainer(max_steps=args.steps, accelerator="cpu", logger=False,
              enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False,
              callbacks=[Probe(test, templates, module.processor, args.every)]).fit(
        module, train_dataloaders=loader)


if __name__ == "__main__":
    main()
