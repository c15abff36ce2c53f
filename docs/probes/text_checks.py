"""Probe: can a fresh tiny language model learn to say which of two answers agrees with
a text, and does restating and marking each answer first make it learnable?

Text only (no image): the user turn is "Text: <the scene's description>. Question: ...
Answer 1: ... Answer 2: ... Which answer is more correct for the text? End with ...";
the target is the verdict alone (``--target bare``) or each answer restated and marked
first (``--target mark``: "Answer 1: It is red. Right. Answer 2: It is blue. Wrong.
Answer 1 is better"), or each answer's claims set beside the text's values first
(``--target claims``: "Answer 1: red vs red yes. Right. Answer 2: blue vs red no. Wrong.
Answer 1 is better"). A tiny Qwen2-VL is built from scratch (RoPE base ``--rope-theta``)
and trained on the world's understanding pairs (ties left out, candidate order
balanced); every ``--every`` steps it judges 128 test pairs greedily. Prints one JSON
line per evaluation. Results are in docs/tiny_base.md.

    python docs/probes/text_checks.py --target mark|claims|bare [--steps 1000] [--rope-theta 4] \\
        [--hidden-size 128] [--num-layers 4] [--num-heads 4] [--mark-weight 1]

Needs the world (data/world; `ur fit --config experiments/quickstart.yaml` writes it).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import defaultdict

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from ur.data.answers import parse_pairwise
from ur.data.collate import Conversation, ConversationCollator
from ur.data.datamodule import WorldSpec, load_records
from ur.data.synthetic.scene import parse_question
from ur.data.templates import PromptTemplates
from ur.models.tiny import build_tiny_vlm
from ur.pretrain.tiny_vlm import tokenizer_texts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=("bare", "mark", "claims"), default="mark")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rope-theta", type=float, default=4.0)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--num-layers", type=int, default=4)
    ap.add_argument("--num-heads", type=int, default=4)
    ap.add_argument("--mark-weight", type=float, default=1.0,
                    help="weight of the mark tokens (Right, Wrong, Partly) in the loss")
    ap.add_argument("--world", default="data/world")
    ap.add_argument("--world-size", type=int, default=8000,
                    help="records of the world at --world (more: more distinct pairs)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    checks = PromptTemplates(answer_checks=args.target != "bare",
                             check_style="claims" if args.target == "claims" else "restate")
    world = WorldSpec(out=args.world, size=args.world_size)
    train_all = [r for recs in load_records(world.sources("train"))[0] for r in recs]
    coin = random.Random(0)

    def pairs(records):
        keep = [r for r in records if r.task.endswith("understanding") and r.form == "pairwise"
                and r.label != "tie"]
        return [r.swapped() if coin.random() < 0.5 else r for r in keep]

    train = pairs(train_all)
    test = pairs(r for recs in load_records(world.sources("test"))[0] for r in recs)[:128]

    def conversation(r):
        c = Conversation.of(r, checks)
        instruction = f"Text: {r.evidence[0]}.\n" + c.instruction.replace(
            f"for the {r.modality}", "for the text").replace(
            f"Describe the {r.modality}, then end", "End")
        evidence = f"The {r.modality} shows {r.evidence[0]}. "
        return Conversation((), instruction, c.target.removeprefix(evidence), r)

    folder = tempfile.mkdtemp(prefix="ur-probe-")
    build_tiny_vlm(folder, family="qwen2_vl", image_size=world.image_size,
                   texts=tokenizer_texts(train_all, PromptTemplates(answer_checks=True)) + [
                       checks.target(r) for r in train_all],
                   rope_theta=args.rope_theta, hidden_size=args.hidden_size,
                   num_layers=args.num_layers, num_heads=args.num_heads,
                   intermediate_size=2 * args.hidden_size)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    print(repr(conversation(train[0]).instruction), "->", repr(conversation(train[0]).target))
    collate = ConversationCollator(processor)
    prompts = ConversationCollator(processor, with_targets=False)
    loader = torch.utils.data.DataLoader([conversation(r) for r in train], shuffle=True,
                                         batch_size=args.batch_size, collate_fn=collate,
                                         drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    start, step, losses = time.time(), 0, []

    def evaluate():
        model.eval()
        right = defaultdict(list)
        for k in range(0, len(test), 64):
            chunk = test[k:k + 64]
            batch = prompts([conversation(r) for r in chunk])
            batch.pop("records", None)
            width = batch["input_ids"].shape[1]
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=110, do_sample=False)
            for r, seq in zip(chunk, out, strict=True):
                said = processor.tokenizer.decode(seq[width:], skip_special_tokens=True)
                ok = parse_pairwise(said) == r.label
                right[parse_question(r.prompt).asks].append(ok)
                right["all"].append(ok)
                if args.target == "mark":  # claims restate nothing
                    right["copied"].append(all(a in said for a in r.responses))
        model.train()
        print(json.dumps({"step": step, "loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
                          "minutes": round((time.time() - start) / 60, 1),
                          **{k: f"{sum(v)}/{len(v)}" for k, v in sorted(right.items())}}),
              flush=True)

    marks = mark_token_ids(processor.tokenizer)
    model.train()
    while step < args.steps:
        for batch in loader:
            batch.pop("records", None)
            loss = (model(**batch).loss if args.mark_weight == 1.0
                    else weighted_loss(model, batch, marks, args.mark_weight))
            loss.backward()
            opt.step()
            warmup.step()
            opt.zero_grad()
            step += 1
            losses.append(loss.item())
            if step % args.every == 0:
                evaluate()
            if step >= args.steps:
                break


def mark_token_ids(tokenizer) -> torch.Tensor:
    """The tokens a mark starts with after a space: Right, Wrong, Partly."""
    return torch.tensor([tokenizer.convert_tokens_to_ids("\u0120" + word)
                         for word in ("Right", "Wrong", "Partly")])


def weighted_loss(model, batch, token_ids, weight):
    """Next-token loss with the targets in ``token_ids`` counted ``weight`` times."""
    batch = dict(batch)
    labels = batch.pop("labels")[:, 1:]
    logits = model(**batch).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           labels.reshape(-1), ignore_index=-100,
                                           reduction="none").view(labels.shape)
    w = (labels != -100).float()
    w[torch.isin(labels, token_ids)] *= weight
    return (ce * w).sum() / w.sum()


if __name__ == "__main__":
    main()
