"""VLM DPO training cost: ``VLMDPOModule`` against TRL's ``DPOTrainer``, same model and pairs.

Both arms fully fine-tune (every part: vision tower, projector, language model) the same
tiny Qwen2-VL, built and briefly pretrained on the synthetic world
(:func:`ur.pretrain.ensure_tiny_vlm`), on the same ``--pairs`` image-understanding pairs
of the world's train split (the first ones that are not ties, written to one file both
arms read), ``--batch-size`` pairs a step, sigmoid DPO with beta 0.1, no SFT term, AdamW
at a flat learning rate (no warmup or decay), no gradient clipping, float32 on CPU with
``--threads`` threads, each for ``--epochs`` epochs through its own training loop:

* ours: ``Trainer.fit`` (Lightning, as ``ur fit`` runs it; no logger, checkpointing or
  progress bar) of ``VLMDPOModule(finetune="full", train_vision=True,
  train_projector=True)`` on ``PairsDataModule`` (its ``PairCollator`` makes each batch
  on the fly), with ``reference="copy"`` (a frozen copy of the starting weights) and,
  in another process, ``reference="cached"`` (the reference's log-probabilities of
  every pair computed once, on the first step, into a fresh table, so a step runs the
  policy alone). Both run each pair's prompt and image once for both answers
  (``shared_prompt``, :mod:`ur.models.prefix`); a third arm, ``ours_full_rows``, runs
  ``reference="copy"`` with ``shared_prompt=False`` (prompt + chosen and prompt +
  rejected as two full rows, as TRL does), which measures what sharing the prompt gives;
* TRL (the peer): ``DPOTrainer.train()`` with ``DPOConfig(bf16=False,
  gradient_checkpointing=False, use_cpu=True, lr_scheduler_type="constant",
  max_grad_norm=0, num_train_epochs=...)`` on a conversational dataset (an ``images``
  column, prompt / chosen / rejected as messages, the prompt with an image item),
  ``processing_class=processor``; it loads a second copy of the model as the reference.
  ``precompute_ref_log_probs=True`` is refused for vision data, so TRL has no cached arm.

Each arm runs in a child process of its own (the script re-invokes itself with
``--arm ours|ours_full_rows|ours_cached|trl``), one after another, so memory peaks do not mix; the
order alternates over ``--repeats`` rounds. Measured:

1. ms per optimizer step: a callback takes the time at each step's begin and end
   (Lightning ``on_train_batch_start`` / ``on_train_batch_end``; TRL
   ``on_step_begin`` / ``on_step_end``: in both the batch is fetched and collated just
   before the begin). ``*_ms_per_step`` is the median, over every round, of the time
   from one step's begin to the next's within an epoch (the whole loop: data, forward,
   backward, AdamW, logging), after the first ``--warmup`` steps;
   ``*_in_step_ms`` the median begin-to-end time (data loading left out). Goal:
   ``step_ours_over_trl`` (ours with ``reference="copy"`` over TRL) <= 1.0.
2. peak memory: every child imports the same modules (torch, transformers, trl,
   datasets, lightning, ur), then takes its RSS; the peak RSS counter is reset there
   (``/proc/self/clear_refs``) and again once the trainer and models are set up.
   ``*_peak_over_imports_mb``: the peak of setup and training over the RSS after the
   imports (the models, the reference, the optimizer state, activations, the
   framework's own structures); ``*_train_increase_mb``: the peak during training over
   the RSS once set up. Goal: ``memory_ours_over_trl`` (the former, ours with
   ``reference="copy"`` over TRL) <= 1.0.
3. an epoch with cached reference log-probabilities: the seconds from an epoch's start
   to its end (Lightning ``on_train_epoch_start`` / ``on_train_epoch_end``; TRL
   ``on_epoch_begin`` / ``on_epoch_end``), the median over epochs 2.. (the table exists
   by then; ``ours_cached_first_epoch_s`` includes computing it), and the CPU seconds
   of the same epochs (``*_epoch_cpu_s``: less shaken by other processes' load). Goal:
   ``epoch_trl_over_ours_cached`` >= 1.4.

Both arms' first loss should be ln 2 (policy = reference). TRL's completion ends with
"<|im_end|>\\n" and ours with "<|im_end|>": TRL trains one more token per answer.

    python benchmarks/vlm_dpo_step.py [--pairs 64] [--batch-size 8] [--epochs 6]
        [--warmup 4] [--repeats 2] [--hidden-size 128] [--num-layers 4] [--work DIR]

Prints progress to stderr and a JSON object with every figure, ratio and setting as the
last line of stdout.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = ("ours", "ours_full_rows", "ours_cached", "trl")


def log(msg: str) -> None:
    print(f"[vlm_dpo_step] {msg}", file=sys.stderr, flush=True)


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


# -- the pairs -----------------------------------------------------------------------------
def write_pairs(world: Path, count: int) -> Path:
    """The first ``count`` non-tie image-understanding pairs of the train split, in the
    world's own format, beside the original (so media paths stay valid)."""
    source = world / "train" / "image_understanding_pairwise.json"
    rows = [r for r in json.loads(source.read_text())
            if len(set(r["human_ranking"])) == len(r["human_ranking"])]
    if len(rows) < count:
        raise SystemExit(f"the world has {len(rows)} image pairs in train, fewer than "
                         f"--pairs {count}: raise --world-size")
    out = source.with_name(f"bench_image_pairs_{count}.json")
    out.write_text(json.dumps(rows[:count]))
    return out


def build(args) -> tuple[Path, Path]:
    """The world, the tiny base and the pairs file under ``args.work``."""
    import torch

    from ur.data.datamodule import WorldSpec
    from ur.pretrain import TinyVLMSpec, ensure_tiny_vlm

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    world = WorldSpec(out=str(work / "world"), size=args.world_size, seed=0, difficulty=1,
                      splits=(0.8, 0.1, 0.1))
    world.manifest()
    spec = TinyVLMSpec(hidden_size=args.hidden_size, num_layers=args.num_layers,
                       pretrain_steps=args.pretrain_steps, batch_size=16, world=world)
    base = ensure_tiny_vlm(work / f"base_h{args.hidden_size}_l{args.num_layers}", spec)
    return base, write_pairs(Path(world.out), args.pairs)


# -- the arms (each in a child process) ------------------------------------------------------
def import_all():
    """The same imports in every arm, so the RSS after them is the same baseline."""
    import datasets  # noqa: F401
    import lightning  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from trl import DPOConfig, DPOTrainer  # noqa: F401

    from ur.align.vlm_dpo import VLMDPOModule  # noqa: F401
    from ur.data.pairs import PairsDataModule  # noqa: F401


class Clock:
    """Step and epoch begin/end times and the per-step losses."""

    def __init__(self):
        self.begin, self.end, self.epoch_of, self.epochs, self.losses = [], [], [], [], []
        self.epoch = -1

    def epoch_start(self):
        self.epoch += 1
        self.epochs.append([time.perf_counter(), None, time.process_time(), None])

    def epoch_end(self):
        self.epochs[-1][1] = time.perf_counter()
        self.epochs[-1][3] = time.process_time()

    def step_start(self):
        self.begin.append(time.perf_counter())
        self.epoch_of.append(self.epoch)

    def step_end(self):
        self.end.append(time.perf_counter())


def run_ours(args, clock: Clock, mem: dict) -> dict:
    import lightning as L

    from ur.align.vlm_dpo import VLMDPOModule
    from ur.data.datamodule import SourceSpec
    from ur.data.pairs import PairsDataModule
    from ur.training import OptimizerSpec

    class Timing(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            clock.epoch_start()

        def on_train_epoch_end(self, trainer, pl_module):
            clock.epoch_end()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.step_start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.step_end()
            clock.losses.append(float(outputs["loss"]))

    reference = "cached" if args.arm == "ours_cached" else "copy"
    shared = args.arm != "ours_full_rows"
    cache = tempfile.mkdtemp(prefix="ur_ref_")  # a fresh table: the first step computes it
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    dm = PairsDataModule(train=[SourceSpec("vl_rewardbench", args.pairs_file)],
                         processor=args.base, batch_size=args.batch_size, seed=0)
    module = VLMDPOModule(checkpoint=args.base, finetune="full", train_vision=True,
                          train_projector=True, train_language=True, loss="sigmoid",
                          beta=args.beta, sft_weight=0.0, reference=reference,
                          reference_cache=cache, export=False, shared_prompt=shared,
                          optimizer=OptimizerSpec(lr=args.lr, warmup_ratio=0.0,
                                                  min_lr_ratio=1.0))
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[Timing()])
    dm.setup("fit")
    n_pairs = len(dm.pairs["train"])
    mem["set_up"] = rss_mb()
    reset_peak()
    trainer.fit(module, datamodule=dm)
    params = sum(p.numel() for p in module.model.parameters())
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    return {"pairs": n_pairs, "parameters": params, "trainable": trainable,
            "loop": "lightning Trainer.fit", "reference": reference, "shared_prompt": shared}


def run_trl(args, clock: Clock, mem: dict) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from ur.data.collate import load_record_media
    from ur.data.datamodule import SourceSpec, load_records
    from ur.data.pairs import chosen_first
    from ur.models.loading import load_vlm

    class Timing(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kw):
            clock.epoch_start()

        def on_epoch_end(self, args, state, control, **kw):
            clock.epoch_end()

        def on_step_begin(self, args, state, control, **kw):
            clock.step_start()

        def on_step_end(self, args, state, control, **kw):
            clock.step_end()

    pairs = [p for p in (chosen_first(r) for r in load_records(
        [SourceSpec("vl_rewardbench", args.pairs_file)])[0][0]) if p is not None]
    rows = []
    for p in pairs:
        images, _ = load_record_media(p, 4)
        rows.append({
            "images": images,
            "prompt": [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": p.prompt}]}],
            "chosen": [{"role": "assistant",
                        "content": [{"type": "text", "text": p.responses[0]}]}],
            "rejected": [{"role": "assistant",
                          "content": [{"type": "text", "text": p.responses[1]}]}],
        })
    dataset = Dataset.from_list(rows)
    model, processor = load_vlm(args.base)
    out = tempfile.mkdtemp(prefix="trl_dpo_")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    config = DPOConfig(output_dir=out, use_cpu=True,
                       report_to=[], bf16=False, fp16=False, gradient_checkpointing=False,
                       per_device_train_batch_size=args.batch_size,
                       num_train_epochs=args.epochs, learning_rate=args.lr,
                       lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                       max_grad_norm=0.0, beta=args.beta, loss_type=["sigmoid"],
                       save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
                       seed=0)
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=processor, callbacks=[Timing()])
    compute_loss = trainer.compute_loss

    def recorded(*a, **kw):
        out = compute_loss(*a, **kw)
        loss = out[0] if isinstance(out, tuple) else out
        clock.losses.append(float(loss.detach()))
        return out

    trainer.compute_loss = recorded
    mem["set_up"] = rss_mb()
    reset_peak()
    trainer.train()
    params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"pairs": len(dataset), "parameters": params, "trainable": trainable,
            "loop": "trl DPOTrainer.train", "reference": "second model loaded from the "
            "checkpoint"}


def run_arm(args) -> dict:
    t0 = time.perf_counter()
    import_all()
    import torch

    torch.set_num_threads(args.threads)
    mem = {"imports": rss_mb()}
    resettable = reset_peak()
    clock = Clock()
    run = run_trl if args.arm == "trl" else run_ours
    info = run(args, clock, mem)
    mem["trained"] = rss_mb()
    setup_peak = mem["set_up"]["VmHWM"]
    train_peak = mem["trained"]["VmHWM"]
    base = mem["imports"]["VmRSS"]
    return {
        "arm": args.arm, **info,
        "step_begin": clock.begin, "step_end": clock.end, "step_epoch": clock.epoch_of,
        "epochs": clock.epochs, "losses": clock.losses,
        "rss_after_imports_mb": round(base, 1),
        "rss_set_up_mb": round(mem["set_up"]["VmRSS"], 1),
        "peak_over_imports_mb": round(max(setup_peak, train_peak) - base, 1)
        if resettable else None,
        "train_increase_mb": round(train_peak - mem["set_up"]["VmRSS"], 1)
        if resettable else None,
        "peak_rss_mb": round(max(setup_peak, train_peak), 1),
        "peak_reset": resettable,
        "child_wall_s": round(time.perf_counter() - t0, 1),
    }


# -- the parent --------------------------------------------------------------------------
def child(args, arm: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--arm", arm, "--base", str(args.base),
           "--pairs-file", str(args.pairs_file), "--batch-size", str(args.batch_size),
           "--epochs", str(args.epochs), "--lr", str(args.lr), "--beta", str(args.beta),
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        log(f"{arm} failed (exit {proc.returncode}):\n{tail}")
        return {"arm": arm, "error": tail.splitlines()[-1] if tail else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_figures(runs: list[dict], warmup: int) -> dict:
    """Per-step interval and in-step medians pooled over the rounds, and each round's."""
    intervals, inside, per_round = [], [], []
    for r in runs:
        b, e, ep = r["step_begin"], r["step_end"], r["step_epoch"]
        iv = [(b[i + 1] - b[i]) * 1000 for i in range(warmup, len(b) - 1) if ep[i + 1] == ep[i]]
        intervals += iv
        inside += [(e[i] - b[i]) * 1000 for i in range(warmup, len(b))]
        per_round.append(round(statistics.median(iv), 2))
    return {"ms_per_step": round(statistics.median(intervals), 2),
            "in_step_ms": round(statistics.median(inside), 2),
            "ms_per_step_rounds": per_round, "timed_intervals": len(intervals)}


def epoch_figures(runs: list[dict]) -> dict:
    """Wall and CPU seconds per epoch, epochs 2.. pooled over the rounds (median)."""
    later = [e[1] - e[0] for r in runs for e in r["epochs"][1:]]
    cpu = [e[3] - e[2] for r in runs for e in r["epochs"][1:]]
    return {"epoch_s": round(statistics.median(later), 3) if later else None,
            "epoch_cpu_s": round(statistics.median(cpu), 3) if cpu else None,
            "first_epoch_s": round(statistics.median(r["epochs"][0][1] - r["epochs"][0][0]
                                                     for r in runs), 3),
            "epoch_s_rounds": [round(statistics.median(e[1] - e[0] for e in r["epochs"][1:]), 3)
                               for r in runs if len(r["epochs"]) > 1]}


def summarize(args, results: dict[str, list[dict]], meta: dict) -> dict:
    import lightning
    import torch
    import transformers
    import trl

    out = {**meta}
    figures = {}
    for arm, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            figures[arm] = None
            out[f"{arm}_error"] = runs[0]["error"] if runs else "not run"
            continue
        f = {**step_figures(ok, args.warmup), **epoch_figures(ok)}
        for key in ("peak_over_imports_mb", "train_increase_mb"):
            f[key] = (round(statistics.median(r[key] for r in ok), 1)
                      if ok[0][key] is not None else None)
        f["peak_over_imports_mb_rounds"] = [r["peak_over_imports_mb"] for r in ok]
        f["train_increase_mb_rounds"] = [r["train_increase_mb"] for r in ok]
        f["rss_after_imports_mb"] = round(statistics.median(r["rss_after_imports_mb"]
                                                            for r in ok), 1)
        f["peak_rss_mb"] = round(statistics.median(r["peak_rss_mb"] for r in ok), 1)
        f["first_loss"] = round(ok[0]["losses"][0], 5)
        f["last_loss"] = round(ok[0]["losses"][-1], 5)
        f["steps"] = len(ok[0]["step_begin"])
        f["parameters"], f["trainable"] = ok[0]["parameters"], ok[0]["trainable"]
        f["pairs"] = ok[0]["pairs"]
        figures[arm] = f
        for k, v in f.items():
            out[f"{arm}_{k}"] = v

    def ratio(a, b, digits=3):
        return round(a / b, digits) if a is not None and b else None

    o, c, t = figures.get("ours"), figures.get("ours_cached"), figures.get("trl")
    f = figures.get("ours_full_rows")
    out["step_ours_over_trl"] = ratio(o and o["ms_per_step"], t and t["ms_per_step"])
    out["in_step_ours_over_trl"] = ratio(o and o["in_step_ms"], t and t["in_step_ms"])
    out["step_ours_cached_over_trl"] = ratio(c and c["ms_per_step"], t and t["ms_per_step"])
    out["memory_ours_over_trl"] = ratio(o and o["peak_over_imports_mb"],
                                        t and t["peak_over_imports_mb"])
    out["train_increase_ours_over_trl"] = ratio(o and o["train_increase_mb"],
                                                t and t["train_increase_mb"])
    out["memory_ours_cached_over_trl"] = ratio(c and c["peak_over_imports_mb"],
                                               t and t["peak_over_imports_mb"])
    out["epoch_trl_over_ours_cached"] = ratio(t and t["epoch_s"], c and c["epoch_s"])
    out["epoch_trl_over_ours_copy"] = ratio(t and t["epoch_s"], o and o["epoch_s"])
    out["epoch_cpu_trl_over_ours_cached"] = ratio(t and t["epoch_cpu_s"], c and c["epoch_cpu_s"])
    out["step_ours_full_rows_over_trl"] = ratio(f and f["ms_per_step"], t and t["ms_per_step"])
    out["memory_ours_full_rows_over_trl"] = ratio(f and f["peak_over_imports_mb"],
                                                  t and t["peak_over_imports_mb"])
    out["step_shared_over_full_rows"] = ratio(o and o["ms_per_step"], f and f["ms_per_step"])
    out["memory_shared_over_full_rows"] = ratio(o and o["peak_over_imports_mb"],
                                                f and f["peak_over_imports_mb"])
    out["first_loss_ln2"] = round(math.log(2), 5)
    out["goals"] = {"step_ours_over_trl": "<= 1.0", "memory_ours_over_trl": "<= 1.0",
                    "epoch_trl_over_ours_cached": ">= 1.4"}
    out["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "trl": trl.__version__, "lightning": lightning.__version__}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--pairs", type=int, default=64, help="image-understanding pairs")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--epochs", type=int, default=6, help="epochs over the pairs per arm")
    ap.add_argument("--warmup", type=int, default=4, help="first steps left out of step times")
    ap.add_argument("--repeats", type=int, default=2,
                    help="rounds of the four arms (the order alternates)")
    ap.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (flat)")
    ap.add_argument("--beta", type=float, default=0.1, help="sigmoid DPO beta")
    ap.add_argument("--hidden-size", type=int, default=128, help="tiny base text width")
    ap.add_argument("--num-layers", type=int, default=4, help="tiny base text layers")
    ap.add_argument("--pretrain-steps", type=int, default=10,
                    help="pretraining steps of the tiny base (it only has to exist)")
    ap.add_argument("--world-size", type=int, default=800,
                    help="synthetic world records (about 1 in 10 is a train image pair)")
    ap.add_argument("--work", default=None,
                    help="folder for the world and base (reused); default: a temp dir")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--arm", choices=ARMS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--base", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pairs-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.arm:
        return run_arm(args)

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="vlm_dpo_step_")
        args.work = tmp.name
    try:
        t0 = time.perf_counter()
        log(f"building the world ({args.world_size}) and tiny base in {args.work}")
        args.base, args.pairs_file = build(args)
        log(f"built in {time.perf_counter() - t0:.0f} s")
        load = round(os.getloadavg()[0], 2)
        results = {arm: [] for arm in ARMS}
        for k in range(args.repeats):
            order = ARMS if k % 2 == 0 else tuple(reversed(ARMS))
            for arm in order:
                t1 = time.perf_counter()
                res = child(args, arm)
                results[arm].append(res)
                if "error" not in res:
                    log(f"round {k + 1} {arm}: {len(res['step_begin'])} steps, "
                        f"{time.perf_counter() - t1:.0f} s, first loss {res['losses'][0]:.4f}")
        meta = {"pairs": args.pairs, "batch_size": args.batch_size, "epochs": args.epochs,
                "steps_per_epoch": math.ceil(args.pairs / args.batch_size),
                "warmup": args.warmup, "repeats": args.repeats, "lr": args.lr,
                "beta": args.beta, "hidden_size": args.hidden_size,
                "num_layers": args.num_layers, "threads": args.threads,
                "dtype": "float32", "device": "cpu",
                "trl_precompute_ref_log_probs": "refused for vision datasets (no TRL "
                                                "cached arm)"}
        out = summarize(args, results, meta)
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
