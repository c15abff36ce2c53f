"""Training steps on batches grouped by length vs shuffled freely, on the same items.

Ours: ``MixtureSampler`` with ``item_sizes`` (runs of ``--group`` batches sorted by
length, then cut and shuffled). Peer: the same draw shuffled freely, as a plain
``DataLoader(shuffle=True)`` batches. Both take the same items (a fixed random subset of
``--batches`` x ``--batch-size``), on the tiny base's pretraining conversations (batch
32) and on the judge's training records (batch 16, the quickstart's templates). Each
step is a forward, a backward and an AdamW step of the checkpoint's model; collation is
done before timing. Prints padded tokens over real tokens and seconds per step of both,
and the ratio grouped / free (goal: below 1), as one JSON object on the last line.

A third part takes the quickstart's own training batches (16 records and 12 text views,
answer checks): ours pads the views apart from the records (``JudgeCollator``, two
forwards in ``RewardSFTModule.training_step``), the peer pads all 28 rows as one batch;
``apart_over_one`` is the ratio of seconds per step (goal: below 1), also given in CPU
seconds, which the host's share of the cores moves less.

    python benchmarks/length_grouping.py [--checkpoint checkpoints/tiny/qwen2_vl-world]
        [--batches 24] [--group 8] [--repeats 2]

Needs the world and a tiny base (`ur fit --config experiments/quickstart.yaml` builds both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from ur.data.collate import Conversation, ConversationCollator, size_key
from ur.data.datamodule import WorldSpec, load_records
from ur.data.sampling import MixtureSampler
from ur.data.templates import PromptTemplates
from ur.pretrain.tiny_vlm import dense_conversations


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)
            if len(order[k:k + batch_size]) == batch_size]


def _measure(model, collate, conversations, batch_size, group, batches, repeats, seed=0):
    rng = np.random.default_rng(seed)
    items = [conversations[i] for i in rng.choice(len(conversations), batches * batch_size,
                                                  replace=False)]
    sizes = [size_key(c) for c in items]
    orders = {
        "free": list(MixtureSampler([len(items)], [1.0], seed=seed)),
        "grouped": list(MixtureSampler([len(items)], [1.0], seed=seed, item_sizes=sizes,
                                       batch_size=batch_size, group=group)),
    }
    out = {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for name, order in orders.items():
        prepared = []
        for b in _batches(order, batch_size):
            batch = collate([items[i] for i in b])
            batch.pop("records", None)
            batch.pop("skipped", None)
            prepared.append(batch)
        mask = [b["attention_mask"] for b in prepared]
        padding = sum(m.numel() for m in mask) / sum(int(m.sum()) for m in mask)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in prepared:
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            times.append((time.perf_counter() - start) / len(prepared))
        out[name] = {"padded_over_real_tokens": round(padding, 3),
                     "s_per_step": round(statistics.median(times), 4)}
    out["grouped_over_free"] = round(out["grouped"]["s_per_step"] / out["free"]["s_per_step"], 3)
    return out


def _views_apart(checkpoint, world, batches, repeats):
    from ur.data.datamodule import PreferenceDataModule
    from ur.reward.sft import RewardSFTModule

    module = RewardSFTModule(checkpoint=checkpoint, export=False)
    warnings.filterwarnings("ignore", message="You are trying to `self.log")  # no Trainer here
    templates = PromptTemplates(answer_checks=True)
    dm = PreferenceDataModule(world=WorldSpec(out=world), batch_size=16, text_views=12,
                              templates=templates, seed=0)
    dm.processor = module.processor
    dm.setup("fit")
    data, apart = dm.datasets["train"], dm.collator()
    one = ConversationCollator(module.processor, num_frames=4)
    prepared = {"one": [], "apart": []}
    for _, b in zip(range(batches), dm.train_dataloader().batch_sampler, strict=False):
        items = [data[i] for i in b]
        prepared["apart"].append(apart(items))
        prepared["one"].append(one([Conversation.of(x, templates) for x in items]))
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5)
    out = {}
    for name, steps in prepared.items():
        parts = [p for b in steps for p in (b, b.get("text_views")) if p is not None]
        padding = (sum(p["attention_mask"].numel() for p in parts)
                   / sum(int(p["attention_mask"].sum()) for p in parts))
        wall, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            for batch in steps:
                loss = module.training_step(batch, 0) if name == "apart" else module(batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            wall.append((time.perf_counter() - start) / len(steps))
            cpu.append((time.process_time() - start_cpu) / len(steps))
        out[name] = {"padded_over_real_tokens": round(padding, 3),
                     "s_per_step": round(statistics.median(wall), 4),
                     "cpu_s_per_step": round(statistics.median(cpu), 4)}
    out["apart_over_one"] = round(out["apart"]["s_per_step"] / out["one"]["s_per_step"], 3)
    out["apart_over_one_cpu"] = round(out["apart"]["cpu_s_per_step"]
                                      / out["one"]["cpu_s_per_step"], 3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/tiny/qwen2_vl-world")
    ap.add_argument("--world", default="data/world")
    ap.add_argument("--batches", type=int, default=24, help="batches per mode")
    ap.add_argument("--group", type=int, default=8, help="batches per sorted run")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(args.checkpoint)
    model.train()
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    collate = ConversationCollator(processor, num_frames=4)
    records = [r for recs in load_records(WorldSpec(out=args.world).sources("train"))[0]
               for r in recs]
    templates = PromptTemplates()
    result = {
        "base_pretraining": _measure(model, collate, dense_conversations(records), 32,
                                     args.group, args.batches, args.repeats),
        "judge_training": _measure(model, collate,
                                   [Conversation.of(r, templates) for r in records], 16,
                                   args.group, args.batches, args.repeats),
        "judge_training_with_views": _views_apart(args.checkpoint, args.world, args.batches,
                                                  args.repeats),
        "group": args.group, "batches": args.batches, "threads": torch.get_num_threads(),
    }
    for part in ("base_pretraining", "judge_training"):
        r = result[part]
        print(f"{part}: free {r['free']['s_per_step']:.3f} s/step "
              f"(padding x{r['free']['padded_over_real_tokens']}), grouped "
              f"{r['grouped']['s_per_step']:.3f} s/step "
              f"(x{r['grouped']['padded_over_real_tokens']}): {r['grouped_over_free']}")
    r = result["judge_training_with_views"]
    print(f"judge batches with 12 text views: one padded batch {r['one']['s_per_step']:.3f} "
          f"s/step (padding x{r['one']['padded_over_real_tokens']}), views apart "
          f"{r['apart']['s_per_step']:.3f} s/step (x{r['apart']['padded_over_real_tokens']}): "
          f"{r['apart_over_one']} ({r['apart_over_one_cpu']} in CPU seconds)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
