"""Diffusion-DPO training cost: ``DiffusionDPOModule`` against the diffusers training
script's step, same tiny generator and pairs.

Every arm trains LoRA (r 8, alpha 8, gaussian init, on ``to_q``, ``to_k``, ``to_v``,
``to_out.0``) on the same tiny random pixel-space SD3 generator
(:func:`ur.models.generators.build_tiny_generator`, image, flow matching; its shape set
by ``--size``, ``--layers``, ``--heads``, ``--head-dim``) with the same ``--pairs``
pairs a step (random pixels in [-1, 1] and world training captions, drawn with one seed,
the same batch every step), sigmoid loss at beta ``--beta``, plain AdamW at a flat
``--lr``, float32 on CPU with ``--threads`` threads. A step is the pair loss, backward
and the optimizer step:

* ``ours``: ``DiffusionDPOModule(finetune="lora", reference="adapters_off",
  cache_text=False).pair_step(batch, "train")`` then ``backward`` and ``AdamW.step``;
* ``peer``: the step of diffusers' ``train_diffusion_dpo.py`` written plainly (and of
  flow_grpo's SD3 DPO for the flow target): noise drawn for half the batch and repeated,
  one logit-normal sigma per pair repeated, the prompts tokenized and encoded every
  step, the denoiser on the concatenated [winners; losers], MSE over every non-batch
  dim, the reference as the same denoiser after ``disable_adapters()`` under
  ``no_grad``, loss ``-logsigmoid(-0.5 * beta * (model_diff - ref_diff))``, implicit
  accuracy as the script computes it;
* ``ours_cached``: ``ours`` with ``cache_text=True`` (each prompt encoded once; the
  text encoder is frozen). The generator works on pixels, so there are no VAE latents
  to cache: text embeddings are all there is.
* ``cache_ab``: one module, its steps alternating between cached and freshly encoded
  text (``hparams.cache_text`` switched each step), so both halves share the process,
  its memory layout and the machine's load; it also times ``encode_text`` alone;
* ``mem_adapters_off`` and ``mem_copy``: ``ours`` (cached text) on a larger generator
  (``--memory-layers``, ``--memory-heads``, ``--memory-head-dim``, ``--memory-size``,
  ``--memory-pairs``) so its weights dominate, with the reference as the LoRA denoiser
  with adapters disabled (one copy of the weights) against ``reference="copy"`` (LoRA
  trained the same way, the reference a frozen copy of the starting denoiser), for
  ``--memory-steps`` steps.

Each arm runs in a child process of its own (the script calls itself with ``--arm``);
the order alternates over ``--repeats`` rounds. Measured:

1. ms per step: wall time of each step after ``--warmup`` untimed ones, median over
   ``--steps`` steps and every round. Goal: ``step_ours_over_peer`` <= 1.0.
2. peak memory: each child imports the same modules, takes its RSS and resets the peak
   RSS counter (``/proc/self/clear_refs``); ``*_peak_over_imports_mb`` is the peak of
   loading, setup and training over that RSS (the weights are memory-mapped from their
   safetensors files, so they count once touched). Goal:
   ``memory_adapters_off_over_copy`` <= 0.6.
3. ``step_cached_over_encoding``: ``ours_cached`` over ``ours`` ms per step (separate
   processes), and ``ab_step_cached_over_encoding``: the same within ``cache_ab``, with
   ``ab_encode_ms_cached`` / ``ab_encode_ms_encoding`` (the text alone).

Every arm's first loss is ln 2 (policy = reference).

    python benchmarks/diffusion_dpo_step.py [--pairs 16] [--steps 20] [--warmup 3]
        [--repeats 3] [--size 32] [--layers 4] [--heads 2] [--head-dim 32]
        [--memory-layers 8] [--memory-heads 8] [--memory-head-dim 64] [--memory-size 8]
        [--memory-pairs 1] [--memory-steps 3] [--work DIR]

Prints progress to stderr and a JSON object with every figure, ratio and setting as the
last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

TIME_ARMS = ("ours", "peer", "ours_cached", "cache_ab")
MEMORY_ARMS = ("mem_adapters_off", "mem_copy")
ARMS = TIME_ARMS + MEMORY_ARMS
LORA = {"r": 8, "alpha": 8}


def log(msg: str) -> None:
    print(f"[diffusion_dpo_step] {msg}", file=sys.stderr, flush=True)


# -- memory --------------------------------------------------------------------------------
def rss_mb() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, MB."""
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def reset_peak() -> bool:
    """Set the peak RSS counter to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- the generators and the pairs -----------------------------------------------------------
def build(work: Path, name: str, *, size: int, layers: int, heads: int, head_dim: int) -> Path:
    """A tiny random image/flow generator saved under ``work/name`` (reused)."""
    from ur.models.generators import TinyGeneratorConfig, build_tiny_generator
    from ur.pretrain.tiny_generator import world_vocabulary

    folder = work / f"{name}_s{size}_l{layers}_h{heads}x{head_dim}"
    if not (folder / "model_index.json").exists():
        config = TinyGeneratorConfig(kind="image", prediction="flow", size=size, layers=layers,
                                     heads=heads, head_dim=head_dim)
        build_tiny_generator(world_vocabulary(), config, seed=0).save_pretrained(folder)
    return folder


def pair_batch(pairs: int, size: int) -> dict:
    """The one batch every arm trains on: ``pairs`` training captions of the world and
    random winner and loser pixels in [-1, 1]."""
    import numpy as np
    import torch

    from ur.data.synthetic.captions import training_captions

    g = torch.Generator().manual_seed(0)
    return {"prompts": training_captions("image", pairs, np.random.default_rng(0)),
            "chosen": torch.rand(pairs, 3, size, size, generator=g) * 2 - 1,
            "rejected": torch.rand(pairs, 3, size, size, generator=g) * 2 - 1}


# -- the arms (each in a child process) ------------------------------------------------------
def import_all() -> None:
    """The same imports in every arm, so the RSS after them is the same baseline."""
    import diffusers  # noqa: F401
    import lightning  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import ur.align.diffusion_dpo  # noqa: F401
    import ur.models.generators  # noqa: F401


def ours(args, batch):
    """``DiffusionDPOModule`` and its step (pair loss, backward, AdamW)."""
    import torch

    from ur.align.diffusion_dpo import DiffusionDPOModule, DiffusionLoraSpec

    copy = args.arm == "mem_copy"
    module = DiffusionDPOModule(checkpoint=args.generator, finetune="lora",
                                lora=DiffusionLoraSpec(**LORA), beta=args.beta,
                                reference="copy" if copy else "adapters_off",
                                cache_text=args.arm != "ours", export=False,
                                log_samples=False)
    opt = torch.optim.AdamW([p for p in module.denoiser.parameters() if p.requires_grad],
                            lr=args.lr)

    def step() -> float:
        loss = module.pair_step(batch, "train")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    step.module = module
    return step, module.denoiser


def peer(args, batch):
    """The diffusers script's Diffusion-DPO step, written plainly (flow target)."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig

    from ur.models.generators import load_generator

    pipe = load_generator(args.generator)
    transformer, text_encoder = pipe.transformer, pipe.text_encoder
    transformer.requires_grad_(False)
    text_encoder.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                       init_lora_weights="gaussian",
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    transformer.train()
    opt = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad],
                            lr=args.lr)
    x0 = torch.cat([batch["chosen"], batch["rejected"]])

    def step() -> float:
        tokens = pipe.tokenizer(batch["prompts"], padding="max_length", truncation=True,
                                max_length=pipe.tokenizer.model_max_length,
                                return_tensors="pt")
        with torch.no_grad():
            out = text_encoder(input_ids=tokens["input_ids"],
                               attention_mask=tokens["attention_mask"])
        cond = {"encoder_hidden_states": out.last_hidden_state.repeat(2, 1, 1),
                "pooled_projections": out.pooler_output.repeat(2, 1)}
        bsz = x0.shape[0]
        noise = torch.randn_like(x0).chunk(2)[0].repeat(2, 1, 1, 1)
        sigmas = torch.sigmoid(torch.randn(bsz // 2)).repeat(2)
        s = sigmas.view(-1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        timesteps = sigmas * 1000
        target = noise - x0
        model_pred = transformer(hidden_states=noisy, timestep=timesteps, return_dict=False,
                                 **cond)[0]
        model_losses = F.mse_loss(model_pred.float(), target.float(), reduction="none")
        model_losses = model_losses.mean(dim=list(range(1, len(target.shape))))
        model_losses_w, model_losses_l = model_losses.chunk(2)
        model_diff = model_losses_w - model_losses_l
        with torch.no_grad():
            transformer.disable_adapters()
            ref_pred = transformer(hidden_states=noisy, timestep=timesteps,
                                   return_dict=False, **cond)[0]
            ref_losses = F.mse_loss(ref_pred.float(), target.float(), reduction="none")
            ref_losses = ref_losses.mean(dim=list(range(1, len(target.shape))))
            ref_losses_w, ref_losses_l = ref_losses.chunk(2)
            ref_diff = ref_losses_w - ref_losses_l
            transformer.enable_adapters()
        inside_term = -0.5 * args.beta * (model_diff - ref_diff)
        loss = -1 * F.logsigmoid(inside_term).mean()
        implicit_acc = (inside_term > 0).sum().float() / inside_term.size(0)  # noqa: F841
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss.detach())

    return step, transformer


def run_arm(args) -> dict:
    import_all()
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = rss_mb()["VmRSS"]
    resettable = reset_peak()
    batch = pair_batch(args.pairs, args.size)
    step, denoiser = (peer if args.arm == "peer" else ours)(args, batch)
    times, losses, split = [], [], {"cached": [], "encoding": [], "encode_cached": [],
                                    "encode_encoding": []}
    for i in range(args.warmup + args.steps):
        arm = "cached" if i % 2 else "encoding"
        if args.arm == "cache_ab":
            step.module.hparams.cache_text = arm == "cached"
            t0 = time.perf_counter()
            step.module.encode_text(batch["prompts"])
            encode_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        losses.append(step())
        if i >= args.warmup:
            times.append((time.perf_counter() - t0) * 1000)
            if args.arm == "cache_ab":
                split[arm].append(times[-1])
                split[f"encode_{arm}"].append(encode_ms)
    peak = rss_mb()["VmHWM"]
    return {"arm": args.arm, "ms": times, "split_ms": split,
            "first_loss": losses[0], "last_loss": losses[-1],
            "peak_over_imports_mb": round(peak - base, 1) if resettable else None,
            "rss_after_imports_mb": round(base, 1),
            "parameters": sum(p.numel() for p in denoiser.parameters()),
            "trainable": sum(p.numel() for p in denoiser.parameters() if p.requires_grad)}


# -- the parent ------------------------------------------------------------------------------
def child(args, arm: str, generator: Path) -> dict:
    memory = arm in MEMORY_ARMS
    size, pairs = (args.memory_size, args.memory_pairs) if memory else (args.size, args.pairs)
    steps, warmup = (args.memory_steps, 0) if memory else (args.steps, args.warmup)
    cmd = [sys.executable, os.path.abspath(__file__), "--arm", arm, "--generator",
           str(generator), "--size", str(size), "--pairs", str(pairs), "--steps",
           str(steps), "--warmup", str(warmup), "--beta", str(args.beta),
           "--lr", str(args.lr), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        log(f"{arm} failed (exit {proc.returncode}):\n{tail}")
        return {"arm": arm, "error": tail.splitlines()[-1] if tail else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(results: dict[str, list[dict]]) -> dict:
    out: dict = {}
    for arm, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            out[f"{arm}_error"] = runs[0]["error"] if runs else "not run"
            continue
        out[f"{arm}_ms_per_step"] = round(statistics.median(t for r in ok for t in r["ms"]), 2)
        out[f"{arm}_ms_per_step_rounds"] = [round(statistics.median(r["ms"]), 2) for r in ok]
        if ok[0]["peak_over_imports_mb"] is not None:
            out[f"{arm}_peak_over_imports_mb"] = round(statistics.median(
                r["peak_over_imports_mb"] for r in ok), 1)
            out[f"{arm}_peak_over_imports_mb_rounds"] = [r["peak_over_imports_mb"] for r in ok]
        for key in ("first_loss", "last_loss"):
            out[f"{arm}_{key}"] = round(ok[0][key], 5)
        out[f"{arm}_parameters"], out[f"{arm}_trainable"] = ok[0]["parameters"], ok[0]["trainable"]

    def ratio(a: str, b: str):
        return round(out[a] / out[b], 3) if out.get(a) and out.get(b) else None

    out["step_ours_over_peer"] = ratio("ours_ms_per_step", "peer_ms_per_step")
    out["step_ours_cached_over_peer"] = ratio("ours_cached_ms_per_step", "peer_ms_per_step")
    out["step_cached_over_encoding"] = ratio("ours_cached_ms_per_step", "ours_ms_per_step")
    ab = [r for r in results.get("cache_ab", []) if "error" not in r]
    if ab:
        for key in ("cached", "encoding", "encode_cached", "encode_encoding"):
            out[f"ab_{'step' if key in ('cached', 'encoding') else 'encode'}_ms_"
                f"{key.removeprefix('encode_')}"] = round(statistics.median(
                    t for r in ab for t in r["split_ms"][key]), 3)
        out["ab_step_cached_over_encoding"] = ratio("ab_step_ms_cached", "ab_step_ms_encoding")
    out["memory_adapters_off_over_copy"] = ratio("mem_adapters_off_peak_over_imports_mb",
                                                 "mem_copy_peak_over_imports_mb")
    out["memory_ours_over_peer"] = ratio("ours_peak_over_imports_mb", "peer_peak_over_imports_mb")
    out["first_loss_ln2"] = round(math.log(2), 5)
    out["goals"] = {"step_ours_over_peer": "<= 1.0", "memory_adapters_off_over_copy": "<= 0.6"}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--pairs", type=int, default=16, help="pairs per step (time arms)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per arm and round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every arm (order alternates)")
    ap.add_argument("--beta", type=float, default=2000.0, help="beta_dpo (with the 0.5)")
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (flat)")
    ap.add_argument("--size", type=int, default=32, help="image side (time arms)")
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks (time arms)")
    ap.add_argument("--heads", type=int, default=2, help="attention heads (time arms)")
    ap.add_argument("--head-dim", type=int, default=32, help="head width (time arms)")
    ap.add_argument("--memory-pairs", type=int, default=1, help="pairs per step (memory arms)")
    ap.add_argument("--memory-steps", type=int, default=3, help="steps of the memory arms")
    ap.add_argument("--memory-size", type=int, default=8, help="image side (memory arms)")
    ap.add_argument("--memory-layers", type=int, default=8, help="blocks (memory arms)")
    ap.add_argument("--memory-heads", type=int, default=8, help="heads (memory arms)")
    ap.add_argument("--memory-head-dim", type=int, default=64, help="head width (memory arms)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--work", default=None, help="folder for the generators (reused); "
                                                 "default: a temp dir")
    ap.add_argument("--arm", choices=ARMS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--generator", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.arm:
        return run_arm(args)

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="diffusion_dpo_step_")
        args.work = tmp.name
    try:
        t0 = time.perf_counter()
        work = Path(args.work)
        timed = build(work, "time", size=args.size, layers=args.layers, heads=args.heads,
                      head_dim=args.head_dim)
        large = build(work, "memory", size=args.memory_size, layers=args.memory_layers,
                      heads=args.memory_heads, head_dim=args.memory_head_dim)
        load = round(os.getloadavg()[0], 2)
        results = {arm: [] for arm in ARMS}
        for k in range(args.repeats):
            for arm in ARMS if k % 2 == 0 else tuple(reversed(ARMS)):
                res = child(args, arm, large if arm in MEMORY_ARMS else timed)
                results[arm].append(res)
                if "error" not in res:
                    log(f"round {k + 1} {arm}: {statistics.median(res['ms']):.1f} ms/step, "
                        f"peak {res['peak_over_imports_mb']} MB, first loss "
                        f"{res['first_loss']:.5f}")
        out = {"pairs": args.pairs, "steps": args.steps, "warmup": args.warmup,
               "repeats": args.repeats, "beta": args.beta, "lr": args.lr,
               "time_model": {"size": args.size, "layers": args.layers, "heads": args.heads,
                              "head_dim": args.head_dim},
               "memory_model": {"size": args.memory_size, "layers": args.memory_layers,
                                "heads": args.memory_heads, "head_dim": args.memory_head_dim,
                                "pairs": args.memory_pairs, "steps": args.memory_steps},
               "threads": args.threads, "dtype": "float32", "device": "cpu",
               **summarize(results)}
        out["loadavg_1m_start_end"] = [load, round(os.getloadavg()[0], 2)]
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    result = main()
    print(json.dumps(result), flush=True)
    sys.exit(0)
