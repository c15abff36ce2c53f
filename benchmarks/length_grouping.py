"""Training steps on batches grouped by length vs shuffled freely, on the same items.

Ours: ``MixtureSampler`` with ``item_sizes`` (runs of ``--group`` batches sorted by
length, then cut and shuffled). Peer: the same draw shuffled freely, as a plain
``DataLoader(shuffle=True)`` batches. Both take the same items (a fixed random subset of
``--batches`` x ``--batch-size``), on the tiny base's pretraining conversations (batch
32) and on the judge's training records (batch 16, the quickstart's templates). Each
step is a forward, a backward and an AdamW step of the checkpoint's model; collation is
done before timing. Prints padded tokens over real tokens and seconds per step of both,
and the ratio grouped / free (goal: below 1), as one JSON object on the last line.

    python benchmarks/length_grouping.py [--checkpoint checkpoints/tiny/qwen2_vl-world]
        [--batches 24] [--group 8] [--repeats 2]

Needs the world and a tiny base (`ur fit --config experiments/quickstart.yaml` builds both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from ur.data.collate import Conversation, ConversationCollator, size_key
from ur.data.datamodule import MixtureSampler, WorldSpec, load_records
from ur.data.templates import PromptTemplates
from ur.reward.tiny_base import dense_conversations


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
        "group": args.group, "batches": args.batches, "threads": torch.get_num_threads(),
    }
    for part in ("base_pretraining", "judge_training"):
        r = result[part]
        print(f"{part}: free {r['free']['s_per_step']:.3f} s/step "
              f"(padding x{r['free']['padded_over_real_tokens']}), grouped "
              f"{r['grouped']['s_per_step']:.3f} s/step "
              f"(x{r['grouped']['padded_over_real_tokens']}): {r['grouped_over_free']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
