"""Pair construction throughput: ur's batched construction against a reference-style loop.

Both arms build preference pairs from the same candidates (a question's N sampled
answers) with the same judge, by UnifiedReward's recipe (FACTS.md section 2): the usable
answers split into fixed pairs (0, 1), (2, 3), ...; the judge ranks each pair; every
winner and loser is scored pointwise; chosen = the best-scoring winner, rejected = the
worst-scoring loser; the prompt is dropped when chosen does not score above rejected.

a. ur: :func:`ur.construct.judged.build_pairs` with ``method="rank_sift"`` and
   :class:`ur.reward.judge.Judge` as :class:`ur.construct.predict.ConstructModule` sets
   it up (mode ``fast``, ``--judge-batch-size`` judgments per forward pass, the judge's
   own token budget): every pairwise judgment of all prompts in one batched call, then
   every pointwise one in another. Ties and unparsed judgments decide nothing.
b. the reference (the peer), written out here as the released scripts do it: for each
   prompt, the same fixed pairs and then the scores, each judgment one unbatched
   ``model.generate`` (greedy, ``--reference-max-new-tokens``, 4096 as the scripts),
   its prompt built by the judge's own templates (``judge.collator`` on one query), the
   verdict read by substring: the second candidate wins when the text holds "<noun> 2
   is better", otherwise the first (so a tie or an answer without a verdict goes to
   candidate 1, the scripts' defect); a score is the number after "Final Score:", and
   0 when there is none (as the scripts make an unparseable score 0), compared as
   numbers. Media placeholder tokens are suppressed in both arms (an untrained model
   can pick one, and the forward pass then fails).

c. ur with ``share_prefix``: arm a, with the start the judgments of one question share
   (the template, the image or clip, the question) run once per batch of judgments
   instead of once per judgment (:meth:`ur.reward.judge.Judge._shared_greedy`). Its
   decisions are arm a's to float rounding: ``shared_same_decisions`` counts them.

Measured, each arm timed ``--repeats`` times in alternating order, the best time
counting (load from other processes falls on both):

- ``*_prompts_per_s``: prompts constructed per second (each yields one pair or a
  counted drop); ``ur_over_reference`` is their ratio: the throughput of pair
  construction. Goal: >= 10. ``shared_over_ur`` and ``shared_over_reference`` are arm
  c's against arms a and b. ``*_kept_pairs_per_s`` counts only the pairs kept, which
  depends on each arm's drops (with an untrained judge they mean nothing);
- ``*_judgments_per_s``, wall seconds, tokens generated per judgment (the reference's
  own count; for ur the tokens of the text each judgment kept, fast mode stopping a
  token or two into the verdict, and its decode steps over all batches) and how many
  reference judgments ran to the budget;
- parse rates: ur's decided verdicts and scores; the reference texts parsed by ur's
  parser (:func:`ur.data.answers.parse_pairwise`, ``parse_score``); how often the
  substring rule disagrees with that parse on the same text, and with ur's own label;
- agreement of the arms: prompts where both keep the same (chosen, rejected), where
  both end the same way (the same pair or both dropped), and pairs both rank alike;
- ``prefill_*``: the part sharing can save, alone. Every question arm a asks (each
  pair, then each usable candidate's points), in the judge's batches, decoded for one
  token plain and shared: seconds (best of ``--repeats``) and the prompt tokens the
  language model runs (padding included). Decoding the judge's words after the prompt
  is the same work in both.

Candidates come from ``--candidates`` (a file :func:`ur.construct.candidates.write_candidates`
wrote) or are drawn here: a small synthetic world (``WorldSpec(...).manifest()``), its
validation understanding questions (``--questions`` of them), ``--n`` answers each
sampled once from a tiny base (:func:`ur.pretrain.ensure_tiny_vlm`). The judge is
``--judge`` (a judge export folder) or, by default, that same tiny base, untrained as a
judge: its verdicts are not meaningful, its cost is.

    python benchmarks/construct_throughput.py [--judge PATH] [--candidates FILE]
        [--questions 16] [--n 8] [--repeats 2] [--threads 2] [--work DIR]

Prints progress to stderr and one JSON object with every figure and ratio as the last
line of stdout, with the 1-minute load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judge_throughput import _DecodeSteps, linear_us  # noqa: E402

REFERENCE_MAX_NEW_TOKENS = 4096
# The scripts' score: the number after "Final Score:", 0 when there is none.
_REFERENCE_SCORE = re.compile(r"Final Score:\s*(\d+(?:\.\d+)?)")


def log(msg: str) -> None:
    print(f"[construct_throughput] {msg}", file=sys.stderr, flush=True)


# -- candidates and judge -------------------------------------------------------------------
def build_base(args):
    """The world and the tiny base under ``args.work`` (reused when already built)."""
    from ur.data.datamodule import WorldSpec
    from ur.pretrain import TinyVLMSpec, ensure_tiny_vlm

    work = Path(args.work)
    world = WorldSpec(out=str(work / "world"), size=args.world_size, seed=0, difficulty=1,
                      splits=(0.8, 0.1, 0.1))
    world.manifest()
    spec = TinyVLMSpec(pretrain_steps=args.pretrain_steps, batch_size=16, world=world)
    return world, ensure_tiny_vlm(work / f"base_s{args.pretrain_steps}", spec)


def draw_candidates(args, world, base) -> list:
    """``--n`` answers to each of ``--questions`` validation questions, drawn once."""
    from ur.construct.candidates import candidates_of, sample_answers
    from ur.data.questions import world_questions
    from ur.models.loading import load_vlm

    questions = world_questions(world.out, "val", max_questions=args.questions, seed=0)
    model, processor = load_vlm(str(base))
    sampling = dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=32)
    answers = sample_answers(model.eval(), processor, questions, n=args.n, seed=0, **sampling)
    return candidates_of(questions, answers, model=str(base), seed=0, **sampling)


# -- the reference loop ---------------------------------------------------------------------
def reference_verdict(task: str, text: str) -> str:
    """The scripts' substring rule: the second candidate when "<noun> 2 is better" is in
    the text, otherwise the first (a tie or no verdict at all goes to candidate 1)."""
    from ur.data.answers import pairwise_verdict

    return "second" if pairwise_verdict(task, "second") in text else "first"


def reference_score(text: str) -> float:
    m = _REFERENCE_SCORE.search(text)
    return float(m.group(1)) if m else 0.0


def generate_one(judge, query, max_new_tokens: int) -> tuple[str, int]:
    """One judgment as the scripts make it: one prompt, one ``generate`` call."""
    inputs = judge.collator([query])
    inputs.pop("records")
    width = inputs["input_ids"].shape[1]
    with torch.no_grad():
        seq = judge.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=judge._pad_id(), suppress_tokens=judge._suppress)
    new = seq[0, width:]
    return judge._decode(new), len(new)


def reference_construct(judge, pool, max_new_tokens: int) -> dict:
    """One prompt through the reference loop: fixed pairs, substring verdicts, scores of
    every winner and loser, best winner against worst loser."""
    from ur.construct.judged import fixed_pairs, pair_query, point_query

    out = {"pairs": [], "verdicts": [], "texts": [], "scores": {}, "score_texts": {},
           "tokens": [], "chosen": None, "rejected": None, "dropped": None}
    pairs = fixed_pairs(pool.usable)
    if not pairs:
        out["dropped"] = "too_few"
        return out
    winners, losers = [], []
    for a, b in pairs:
        text, n = generate_one(judge, pair_query(pool.task, pool.prompt, pool.media,
                                                 pool.candidates, a, b), max_new_tokens)
        verdict = reference_verdict(pool.task, text)
        winners.append(b if verdict == "second" else a)
        losers.append(a if verdict == "second" else b)
        out["pairs"].append((a, b))
        out["verdicts"].append(verdict)
        out["texts"].append(text)
        out["tokens"].append(n)
    for i in winners + losers:
        text, n = generate_one(judge, point_query(pool.task, pool.prompt, pool.media,
                                                  pool.candidates, i), max_new_tokens)
        out["scores"][i] = reference_score(text)
        out["score_texts"][i] = text
        out["tokens"].append(n)
    chosen = max(winners, key=lambda i: out["scores"][i])
    rejected = min(losers, key=lambda i: out["scores"][i])
    if out["scores"][chosen] <= out["scores"][rejected]:
        out["dropped"] = "no_margin"
    else:
        out["chosen"], out["rejected"] = chosen, rejected
    return out


# -- measuring ------------------------------------------------------------------------------
def timed_arms(judge, pools, repeats: int, max_new_tokens: int) -> dict:
    """Every arm ``repeats`` times, alternating the order; the best time counts and
    the first run's results are kept (greedy decoding: every run gives the same)."""
    from ur.construct.judged import build_pairs

    steps = _DecodeSteps(judge.model)
    shared = replace(judge, share_prefix=True)
    arms = {"ur": lambda: build_pairs(judge, pools, method="rank_sift"),
            "shared": lambda: build_pairs(shared, pools, method="rank_sift"),
            "reference": lambda: [reference_construct(judge, p, max_new_tokens) for p in pools]}
    best = dict.fromkeys(arms, float("inf"))
    results, ur_steps = {}, 0
    for k in range(repeats):
        for arm in (list(arms) if k % 2 == 0 else list(arms)[::-1]):
            before = steps.count
            t0 = time.perf_counter()
            out = arms[arm]()
            spent = time.perf_counter() - t0
            best[arm] = min(best[arm], spent)
            log(f"round {k + 1} {arm}: {spent:.2f} s")
            if k == 0:
                results[arm] = out
                if arm == "ur":
                    ur_steps = steps.count - before
    steps.remove()
    return {"seconds": best, **results, "ur_decode_steps": ur_steps}


class _PromptTokens:
    """Tokens the language model runs in forward passes of more than one position (the
    prompts before decoding; padding included, as it is computed too)."""

    def __init__(self, model):
        self.count = 0
        self.hook = model.get_input_embeddings().register_forward_hook(self._seen)

    def _seen(self, module, args, out):
        if args[0].shape[-1] > 1:
            self.count += args[0].numel()


def prefill(judge, pools, repeats: int) -> dict:
    """What sharing the prompt does before decoding: the questions ur asks (every pair,
    then every usable candidate's points), in the judge's batches, each decoded for one
    token, plain and shared; the best of ``repeats`` timings, and the prompt tokens run."""
    from ur.construct.judged import fixed_pairs, pair_query, point_query

    asked = []
    for p in pools:
        asked += [pair_query(p.task, p.prompt, p.media, p.candidates, a, b)
                  for a, b in fixed_pairs(p.usable)]
        asked += [point_query(p.task, p.prompt, p.media, p.candidates, i) for i in p.usable]
    batches = [asked[i:i + judge.batch_size] for i in range(0, len(asked), judge.batch_size)]
    inputs = [judge._inputs(b) for b in batches]
    out = {}
    for name, share in (("plain", False), ("shared", True)):
        one = replace(judge, share_prefix=share, max_new_tokens=1)
        tokens = _PromptTokens(judge.model)
        best = float("inf")
        for _ in range(repeats):
            tokens.count = 0
            t0 = time.perf_counter()
            for b, x in zip(batches, inputs, strict=True):
                one._greedy(b, x)
            best = min(best, time.perf_counter() - t0)
        tokens.hook.remove()
        out[f"prefill_{name}_s"] = round(best, 3)
        out[f"prefill_{name}_tokens"] = tokens.count
    out["prefill_questions"] = len(asked)
    out["prefill_shared_over_plain_speed"] = round(out["prefill_plain_s"] / out["prefill_shared_s"], 2)
    out["prefill_tokens_plain_over_shared"] = round(
        out["prefill_plain_tokens"] / out["prefill_shared_tokens"], 2)
    log(f"prefill: plain {out['prefill_plain_s']} s, shared {out['prefill_shared_s']} s")
    return out


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 3)


def figures(judge, pools, measured: dict) -> dict:
    """Every figure and ratio from the two arms' results and best times."""
    from ur.data.answers import parse_pairwise, parse_score

    ur_out, ref_out = measured["ur"], measured["reference"]
    t_ur, t_ref = measured["seconds"]["ur"], measured["seconds"]["reference"]
    n_prompts = len(pools)
    ur_judgments = sum(len(b.verdicts) + len(b.scores) for b in ur_out)
    ref_judgments = sum(len(r["tokens"]) for r in ref_out)
    ur_kept = sum(b.chosen is not None for b in ur_out)
    ref_kept = sum(r["chosen"] is not None for r in ref_out)
    tokens = [n for r in ref_out for n in r["tokens"]]

    ref_pair_texts = [(p.task, t) for p, r in zip(pools, ref_out, strict=True) for t in r["texts"]]
    ref_parsed = [parse_pairwise(t) for _, t in ref_pair_texts]
    substring = [v for r in ref_out for v in r["verdicts"]]
    ur_labels = [v for b in ur_out for v in b.verdicts]
    ref_score_texts = [t for r in ref_out for t in r["score_texts"].values()]
    same_pair = sum(b.chosen is not None and (b.chosen, b.rejected) == (r["chosen"], r["rejected"])
                    for b, r in zip(ur_out, ref_out, strict=True))
    same_outcome = sum((b.chosen, b.rejected) == (r["chosen"], r["rejected"])
                       for b, r in zip(ur_out, ref_out, strict=True))
    ur_rate, ref_rate = rate(n_prompts, t_ur), rate(n_prompts, t_ref)
    t_shared = measured["seconds"]["shared"]
    shared_rate = rate(n_prompts, t_shared)
    decisions = [(b.verdicts, b.scores, b.chosen, b.rejected) for b in ur_out]
    shared_decisions = [(b.verdicts, b.scores, b.chosen, b.rejected) for b in measured["shared"]]
    return {
        "prompts": n_prompts,
        "candidates_count": sum(len(p.candidates) for p in pools),
        "ur_prompts_per_s": ur_rate, "reference_prompts_per_s": ref_rate,
        "ur_over_reference": round(ur_rate / ref_rate, 2),
        "ur_kept_pairs": ur_kept, "reference_kept_pairs": ref_kept,
        "ur_kept_pairs_per_s": rate(ur_kept, t_ur),
        "reference_kept_pairs_per_s": rate(ref_kept, t_ref),
        "ur_judgments": ur_judgments, "reference_judgments": ref_judgments,
        "ur_judgments_per_s": rate(ur_judgments, t_ur),
        "reference_judgments_per_s": rate(ref_judgments, t_ref),
        "ur_over_reference_judgments": round(rate(ur_judgments, t_ur) / rate(ref_judgments, t_ref), 2),
        "ur_s": round(t_ur, 3), "reference_s": round(t_ref, 3),
        "shared_prompts_per_s": shared_rate, "shared_s": round(t_shared, 3),
        "shared_over_ur": round(shared_rate / ur_rate, 2),
        "shared_over_reference": round(shared_rate / ref_rate, 2),
        "shared_same_decisions": sum(_close(a, b) for a, b in zip(decisions, shared_decisions,
                                                                  strict=True)),
        "ur_decode_steps": measured["ur_decode_steps"],
        "ur_tokens_per_judgment": _mean([len(judge._ids(t)) for b in ur_out
                                         for t in [*b.texts, *b.score_texts.values()]]),
        "reference_tokens_per_judgment": _mean(tokens),
        "reference_tokens_max": max(tokens, default=None),
        "reference_judgments_at_budget": sum(n >= REFERENCE_MAX_NEW_TOKENS for n in tokens),
        "ur_verdict_decided_rate": _share(sum(v in ("first", "second") for v in ur_labels),
                                          len(ur_labels)),
        "ur_ties": sum(v == "tie" for v in ur_labels),
        "ur_unparsed": sum(b.unparsed for b in ur_out),
        "ur_score_parse_rate": _share(sum(s is not None for b in ur_out for s in b.scores.values()),
                                      sum(len(b.scores) for b in ur_out)),
        "reference_verdict_parse_rate": _share(sum(v is not None for v in ref_parsed),
                                               len(ref_parsed)),
        "reference_score_parse_rate": _share(sum(parse_score(t) is not None for t in ref_score_texts),
                                             len(ref_score_texts)),
        "substring_disagrees_with_parse": sum(s != p for s, p in zip(substring, ref_parsed,
                                                                     strict=True)),
        "substring_disagrees_with_ur_label": sum(s != u for s, u in zip(substring, ur_labels,
                                                                        strict=True)),
        "pairs_ranked": len(substring),
        "same_chosen_rejected": same_pair,
        "same_outcome": same_outcome,
        "ur_dropped": _counts(b.dropped for b in ur_out),
        "reference_dropped": _counts(r["dropped"] for r in ref_out),
    }


def _close(a, b) -> bool:
    """One prompt's verdicts, scores and pair alike in two arms (scores to 1e-3)."""
    (va, sa, *pa), (vb, sb, *pb) = a, b
    return (va == vb and pa == pb and sa.keys() == sb.keys()
            and all((sa[k] is None) == (sb[k] is None) and (sa[k] is None or abs(sa[k] - sb[k]) < 1e-3)
                    for k in sa))


def _mean(values) -> float | None:
    return round(statistics.fmean(values), 1) if values else None


def _share(k: int, n: int) -> float | None:
    return round(k / n, 3) if n else None


def _counts(values) -> dict:
    out: dict[str, int] = {}
    for v in values:
        if v is not None:
            out[v] = out.get(v, 0) + 1
    return out


def load_judge(path, args):
    from ur.models.loading import load_vlm
    from ur.reward.judge import Judge

    model, processor = load_vlm(str(path))
    return Judge(model=model.eval().requires_grad_(False), processor=processor, mode="fast",
                 batch_size=args.judge_batch_size, num_frames=4)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--judge", default=None,
                    help="a judge export folder; default: the tiny base, untrained as a judge")
    ap.add_argument("--candidates", default=None,
                    help="a candidates JSONL (write_candidates); default: drawn here")
    ap.add_argument("--questions", type=int, default=16, help="questions (prompts) judged")
    ap.add_argument("--n", type=int, default=8, help="candidates per question")
    ap.add_argument("--judge-batch-size", type=int, default=32,
                    help="ur's judgments per forward pass (ConstructModule's default)")
    ap.add_argument("--reference-max-new-tokens", type=int, default=REFERENCE_MAX_NEW_TOKENS,
                    help="the reference's budget per judgment (the scripts: 4096)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs of each arm (alternating order; the best time counts)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--pretrain-steps", type=int, default=150,
                    help="pretraining of the tiny base (enough that it ends its answers)")
    ap.add_argument("--world-size", type=int, default=400, help="synthetic world records")
    ap.add_argument("--work", default=None,
                    help="folder for the world and base (reused); default: a temp dir")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = round(os.getloadavg()[0], 2)
    probe_start = linear_us()
    t0 = time.perf_counter()
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="construct_throughput_")
        args.work = tmp.name
    try:
        base = None
        if args.candidates is None or args.judge is None:
            log(f"the world ({args.world_size}) and tiny base in {args.work}")
            world, base = build_base(args)
        if args.candidates is not None:
            from ur.construct.candidates import read_candidates

            candidates = read_candidates(args.candidates)[:args.questions]
        else:
            log(f"drawing {args.n} answers to {args.questions} questions")
            candidates = draw_candidates(args, world, base)
        judge = load_judge(args.judge or base, args)
        from ur.construct.judged import build_pairs, pool_of

        pools = [pool_of(c) for c in candidates]
        log(f"{len(pools)} prompts, {sum(len(p.usable) for p in pools)} usable candidates; "
            "warming up")
        build_pairs(judge, pools[:1], method="rank_sift")
        reference_construct(judge, pools[0], 8)
        measured = timed_arms(judge, pools, args.repeats, args.reference_max_new_tokens)
        out = {"judge": str(args.judge or "tiny base, untrained as a judge (temp)"),
               "judge_note": ("verdicts of an untrained judge are not meaningful; its cost is"
                              if args.judge is None else "given"),
               "candidates": str(args.candidates or "drawn here from the tiny base"),
               "n": args.n, "repeats": args.repeats, "threads": args.threads,
               "judge_mode": judge.mode, "judge_batch_size": judge.batch_size,
               "ur_max_new_tokens": judge.max_new_tokens,
               "reference_max_new_tokens": args.reference_max_new_tokens,
               "pretrain_steps": args.pretrain_steps if base is not None else None,
               "shared_prefix_reuse": "arms ur and reference encode a question's prompt and "
                                      "media once per judgment; arm shared once per batch",
               "reference_verdict_rule": "'<noun> 2 is better' in text -> second, else first",
               "reference_score_rule": "number after 'Final Score:', else 0"}
        out.update(figures(judge, pools, measured))
        out.update(prefill(judge, pools, args.repeats))
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        out["loadavg_1m_start_end"] = [load_start, round(os.getloadavg()[0], 2)]
        out["tiny_linear_us_start_end"] = [probe_start, linear_us()]
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    result = main()
    print(json.dumps(result), flush=True)
    sys.exit(0)
