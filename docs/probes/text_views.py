"""Probe: do text views of understanding records, added to the quickstart judge's mixed
batches, make its understanding verdicts come within the quickstart's steps?

Trains a judge from ``--base`` the quickstart's way (every task and form of the world,
batches of 16, claims checks in the targets, lr 1e-3, 5% warmup, cosine over
``--steps``), with ``--text-views`` understanding records per batch shown as text
(``PreferenceDataModule(text_views=...)``; 0 is the control). Every ``--every`` steps it
judges the image probe's 64 image and 64 video test pairs greedily and prints one JSON
line (docs/probes/image_checks.py). Results are in docs/tiny_base.md, "Text views".

    python docs/probes/text_views.py --base checkpoints/tiny/qwen2_vl-world \\
        [--text-views 16] [--steps 800] [--every 200]
"""

from __future__ import annotations

import argparse
import random

import lightning as L
from image_checks import Probe, image_and_video, understanding_pairs  # docs/probes/

from ur.data.datamodule import PreferenceDataModule, WorldSpec
from ur.data.templates import PromptTemplates
from ur.reward.sft import RewardSFTModule
from ur.training import OptimizerSpec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--text-views", type=int, default=16)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--world", default="data/world")
    args = ap.parse_args(argv)
    templates = PromptTemplates(answer_checks=True)
    world = WorldSpec(out=args.world)
    test = image_and_video(understanding_pairs(world, "test", random.Random(0), ties=False))
    L.seed_everything(0)
    module = RewardSFTModule(checkpoint=args.base, finetune="full", export=False,
                             optimizer=OptimizerSpec(lr=1e-3, warmup_ratio=0.05,
                                                     min_lr_ratio=0.05))
    data = PreferenceDataModule(world=world, batch_size=16, num_workers=1, templates=templates,
                                text_views=args.text_views)
    data.processor = module.processor
    L.Trainer(max_steps=args.steps, accelerator="cpu", logger=False,
              enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0,
              callbacks=[Probe(test, templates, module.processor, args.every)]).fit(
        module, datamodule=data)


if __name__ == "__main__":
    main()
