"""Judge throughput: judgments/s of batched fast and generate modes vs an unbatched loop.

The same model and the same records (pairwise and pointwise, all four tasks, from the
synthetic world's test split, topped up from train) go through two batched modes and
the peer, an unbatched one-call-per-judgment loop in the reference scripts' style:

a. ``Judge(mode="fast", both_orders=False, batch_size=32)``: greedy decoding up to the
   first tokens of the model's own verdict, the decision read off the logits decoding
   computed there (a forced forward pass only for rows that chose the tie or wrote no
   verdict).
b. ``Judge(mode="generate", batch_size=32)``: greedy decoding of whole answers, parsed.
c. the peer: for each record its own chat template + processor call and its own
   ``model.generate(..., max_new_tokens=...)`` with batch size 1, written out here as
   the reference scripts do (not through ``Judge``), then parsed the same way.

The arms take turns one batch of records at a time, and each batch is timed
``--repeats`` times per arm, the best time counting, so load from other processes
falls on all three alike; ``tiny_linear_us`` probes that load (microseconds per call of
a 128-wide linear layer: a few on an idle machine, far more when torch's threads wait
for cores another process holds, which penalises small per-token steps most).

Also reported: how often generated answers parse, the agreement of fast and generate
decisions on the pairs whose generation parses, the pairwise labels each mode gave,
whether batched and unbatched greedy decoding wrote the same text, and the
decoding steps each arm ran (a batch decodes until its longest row stops). Without
``--checkpoint`` a tiny untrained checkpoint is built from the world's text; such a model
never writes a sentence end or an end of turn, so every answer (and fast mode's evidence)
runs to ``--max-new-tokens``: the worst case for the unbatched loop, and no answer
parses. Pass a trained judge (a run's ``export/`` folder) to measure real answers.
With evidence-first answers fast mode decodes nearly as much as generate mode (it stops
a few tokens earlier; it is there for probabilities and no parse failures more than for
speed); ``--answer-style bare`` measures fast mode reading the verdict after a few tokens.

    python benchmarks/judge_throughput.py [--checkpoint PATH] [--pairs 48] [--points 16]
        [--size 160] [--max-new-tokens 96] [--repeats 3] [--answer-style evidence]
        [--threads 2]

The default records, 48 pairs and 16 points, fill two batches of 32, as validation and
test fill the judge's batches (48 records per source). One partial batch (``--pairs 16
--points 8``, the default until 2026-11-23) leaves a quarter of the batch unused: on the
quickstart judge of 2026-11-23 it gave ``fast_over_unbatched`` 4.6-4.75, against 5.6
with full batches.

Prints a JSON object with every figure and the ratios as its last line
(goal: ``fast_over_unbatched`` >= 5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch


def pick_records(world: Path, size: int, pairs: int, points: int) -> list:
    """``pairs`` pairwise then ``points`` pointwise records, taking the tasks in turn,
    from the test split first and then from train."""
    from ur.data.datamodule import WorldSpec, load_records

    spec = WorldSpec(out=str(world), size=size)
    pool = [r for split in ("test", "train")
            for recs in load_records(spec.sources(split))[0] for r in recs]
    chosen = []
    for form, want in (("pairwise", pairs), ("pointwise", points)):
        by_task: dict[str, list] = {}
        for r in pool:
            if r.form == form:
                by_task.setdefault(r.task, []).append(r)
        queues = [list(v) for _, v in sorted(by_task.items())]
        got = []
        while len(got) < want and any(queues):
            for q in queues:
                if q and len(got) < want:
                    got.append(q.pop(0))
        if len(got) < want:
            raise SystemExit(f"the world holds only {len(got)} {form} records; raise --size")
        chosen += got
    return chosen


def unbatched_generate(model, processor, records, templates, num_frames: int,
                       max_new_tokens: int) -> tuple[list[str], int]:
    """The peer: one processor call and one ``generate`` per judgment (batch size 1).
    Returns the answers and the number of new tokens decoded."""
    from ur.data.collate import load_record_media, prompt_text, user_message
    from ur.reward.judge import media_token_ids

    tok = getattr(processor, "tokenizer", processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    suppress = media_token_ids(processor) or None  # as the Judge decodes
    nested = type(processor).__name__.startswith("LlavaOnevision")
    texts, new_tokens = [], 0
    for r in records:
        images, videos = load_record_media(r, num_frames)
        prompt = prompt_text(processor, user_message(r.media, templates.instruction(r)))
        kwargs = {}
        if images:
            kwargs["images"] = [images] if nested else images
        if videos:
            kwargs["videos"] = videos
        inputs = processor(text=[prompt], return_tensors="pt", **kwargs)
        with torch.no_grad():
            seq = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, suppress_tokens=suppress)
        new = seq[0, inputs["input_ids"].shape[1]:]
        new_tokens += len(new)
        texts.append(tok.decode(new, skip_special_tokens=True))
    return texts, new_tokens


class _DecodeSteps:
    """Counts the decoding steps of every ``model.generate`` call (the new width of the
    returned batch: a batch decodes until its longest row stops)."""

    def __init__(self, model):
        self.model, self.count, self._generate = model, 0, model.generate
        model.generate = self

    def __call__(self, **kwargs):
        out = self._generate(**kwargs)
        seqs = out if torch.is_tensor(out) else out.sequences  # return_dict_in_generate
        self.count += seqs.shape[1] - kwargs["input_ids"].shape[1]
        return out

    def remove(self):
        del self.model.generate


def linear_us(repeats: int = 300) -> float:
    """Microseconds per call of a tiny linear layer: a probe of CPU contention (a few us
    on an idle core; milliseconds when torch's threads wait for cores held by others)."""
    layer, x = torch.nn.Linear(128, 128), torch.randn(1, 128)
    with torch.no_grad():
        for _ in range(20):
            layer(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            layer(x)
    return round((time.perf_counter() - t0) / repeats * 1e6, 1)


def measure(checkpoint: Path, records: list, max_new_tokens: int, batch_size: int,
            repeats: int, answer_style: str = "evidence", answer_checks: bool = False) -> dict:
    from ur.data.answers import parse_pairwise, parse_score
    from ur.data.templates import PromptTemplates
    from ur.models.loading import load_vlm
    from ur.reward.judge import Judge

    model, processor = load_vlm(str(checkpoint))
    model.eval()
    templates = PromptTemplates(answer_style=answer_style, answer_checks=answer_checks)
    num_frames = 4
    common = dict(templates=templates, num_frames=num_frames, max_new_tokens=max_new_tokens,
                  both_orders=False)
    fast = Judge(model, processor, mode="fast", batch_size=batch_size, **common)
    gen = Judge(model, processor, mode="generate", batch_size=batch_size, **common)
    steps = _DecodeSteps(model)

    # Warm-up (lazy imports, first-call allocations), one record of each form, untimed.
    warm = [next(r for r in records if r.form == f) for f in ("pairwise", "pointwise")]
    fast(warm)
    gen(warm)
    unbatched_generate(model, processor, warm[:1], templates, num_frames, 4)

    # The arms take turns, one batch of records at a time (in rotating order), and each
    # batch is timed `repeats` times per arm, keeping the best: a burst of load from
    # other processes then inflates no arm's total.
    n = len(records)
    fast_out, gen_out, peer_texts = [], [], []
    spent = {"fast": 0.0, "generate": 0.0, "unbatched": 0.0}
    decoded = {"fast": 0, "generate": 0, "unbatched": 0}
    arms = ["fast", "generate", "unbatched"]
    for k, start in enumerate(range(0, n, batch_size)):
        chunk = records[start:start + batch_size]
        best = dict.fromkeys(arms, float("inf"))
        for rep in range(repeats):
            for arm in arms[(k + rep) % 3:] + arms[:(k + rep) % 3]:
                before = steps.count
                t0 = time.perf_counter()
                if arm == "fast":
                    out = fast(chunk)
                elif arm == "generate":
                    out = gen(chunk)
                else:
                    out = unbatched_generate(model, processor, chunk, templates, num_frames,
                                             max_new_tokens)
                best[arm] = min(best[arm], time.perf_counter() - t0)
                if rep == 0:
                    decoded[arm] += steps.count - before
                    if arm == "fast":
                        fast_out += out
                    elif arm == "generate":
                        gen_out += out
                    else:
                        peer_texts += out[0]
        for arm in arms:
            spent[arm] += best[arm]
    steps.remove()
    t_fast, t_gen, t_peer = spent["fast"], spent["generate"], spent["unbatched"]

    pair_idx = [i for i, r in enumerate(records) if r.form == "pairwise"]
    point_idx = [i for i, r in enumerate(records) if r.form == "pointwise"]
    parsed_pairs = [i for i in pair_idx if gen_out[i].label is not None]
    parsed_points = [i for i in point_idx if gen_out[i].score is not None]
    agree = [fast_out[i].label == gen_out[i].label for i in parsed_pairs]
    peer_parsed = sum((parse_pairwise(peer_texts[i]) if records[i].form == "pairwise"
                       else parse_score(peer_texts[i])) is not None for i in range(n))
    point_gap = [abs(fast_out[i].score - gen_out[i].score)
                 / (records[i].scale[1] - records[i].scale[0]) for i in parsed_points]
    fast_rate, gen_rate, peer_rate = n / t_fast, n / t_gen, n / t_peer
    return {
        "fast_judgments_per_s": round(fast_rate, 3),
        "generate_batched_judgments_per_s": round(gen_rate, 3),
        "unbatched_judgments_per_s": round(peer_rate, 3),
        "fast_over_unbatched": round(fast_rate / peer_rate, 2),
        "generate_batched_over_unbatched": round(gen_rate / peer_rate, 2),
        "fast_over_generate_batched": round(fast_rate / gen_rate, 2),
        "fast_s": round(t_fast, 2), "generate_batched_s": round(t_gen, 2),
        "unbatched_s": round(t_peer, 2),
        "fast_decode_steps": decoded["fast"],
        "generate_batched_decode_steps": decoded["generate"],
        "unbatched_decode_steps": decoded["unbatched"],
        "generate_parse_rate": round((len(parsed_pairs) + len(parsed_points)) / n, 3),
        "generate_pair_parse_rate": round(len(parsed_pairs) / len(pair_idx), 3),
        "unbatched_parse_rate": round(peer_parsed / n, 3),
        "fast_generate_agreement": round(sum(agree) / len(agree), 3) if agree else None,
        "fast_generate_agreement_pairs": len(agree),
        "fast_generate_point_abs_gap": (round(sum(point_gap) / len(point_gap), 3)
                                        if point_gap else None),
        "fast_pair_labels": dict(sorted(Counter(str(fast_out[i].label) for i in pair_idx).items())),
        "generate_pair_labels": dict(sorted(Counter(str(gen_out[i].label) for i in pair_idx).items())),
        "batched_unbatched_same_text": round(
            sum(g.text == p for g, p in zip(gen_out, peer_texts, strict=True)) / n, 3),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None,
                    help="a judge checkpoint (e.g. a run's export/ folder); default: a tiny "
                         "untrained one built from the world's text in a temp dir")
    ap.add_argument("--pairs", type=int, default=48,
                    help="pairwise records judged (with --points: 64 records, two full "
                         "batches of 32, as validation and test give the judge)")
    ap.add_argument("--points", type=int, default=16, help="pointwise records judged")
    ap.add_argument("--size", type=int, default=160, help="synthetic world records in all")
    ap.add_argument("--max-new-tokens", type=int, default=96,
                    help="decoding budget of every mode (the judge's default: 96)")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="batch of the batched modes (32: the quickstart judge's judge.batch_size)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="times each batch is judged per arm (the best time counts)")
    ap.add_argument("--answer-style", choices=("evidence", "bare"), default="evidence",
                    help="the judge's answer style: fast mode decodes evidence sentences "
                         "first (evidence) or reads the verdict at once (bare)")
    ap.add_argument("--answer-checks", action="store_true",
                    help="the judge checks each understanding answer before its verdict "
                         "(as the quickstart's judge does): fast mode decodes the checks too")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ur.data.synthetic.writer import write_world
    from ur.data.templates import PromptTemplates
    from ur.models.tiny import build_tiny_vlm
    from ur.pretrain.tiny_vlm import tokenizer_texts

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        world = tmp / "world"
        write_world(world, size=args.size, seed=0, difficulty=1)
        records = pick_records(world, args.size, args.pairs, args.points)
        if args.checkpoint:
            checkpoint, kind = Path(args.checkpoint), "given"
        else:
            from ur.data.datamodule import WorldSpec, load_records

            spec = WorldSpec(out=str(world), size=args.size)
            text_records = [r for recs in load_records(spec.sources("train"))[0] for r in recs]
            checkpoint = build_tiny_vlm(tmp / "tiny",
                                        texts=tokenizer_texts(text_records, PromptTemplates()))
            kind = "tiny untrained"
        out = {"checkpoint": str(args.checkpoint or "tiny untrained (temp)"),
               "checkpoint_kind": kind, "records": len(records), "pairs": args.pairs,
               "points": args.points, "max_new_tokens": args.max_new_tokens,
               "batch_size": args.batch_size, "repeats": args.repeats,
               "answer_style": args.answer_style, "answer_checks": args.answer_checks,
               "threads": args.threads,
               "unbatched_peer": "explicit loop: processor + model.generate per record, batch 1"}
        load, probe = round(os.getloadavg()[0], 2), linear_us()
        out.update(measure(checkpoint, records, args.max_new_tokens, args.batch_size,
                           args.repeats, args.answer_style, args.answer_checks))
        out["loadavg_1m_start_end"] = [load, round(os.getloadavg()[0], 2)]
        out["tiny_linear_us_start_end"] = [probe, linear_us()]
    return out


if __name__ == "__main__":
    result = main()
    print(json.dumps(result), flush=True)
    sys.exit(0)
