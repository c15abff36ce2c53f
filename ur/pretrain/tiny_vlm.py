"""The tiny VLM base: a tiny real VLM pretrained on the synthetic world before it judges
or is aligned.

A judge starts from a pretrained VLM, and so does a tiny one. :func:`ensure_tiny_vlm`
builds a tiny checkpoint (:mod:`ur.models.tiny`; its tokenizer trained on the world's
text and the prompt templates), then pretrains it with dense supervision drawn from the
world's training records: a description of every image and clip ("The image shows a red
circle on the left."), the correct answer to every question, and (``answer_checks``)
checks of given answers ("The image shows ... Answer: blue vs red no. Wrong."). It is
saved as a plain Hugging Face folder at the requested path, cached under a lock (rebuilt
only when its spec, the world's format or the tiny builder's format changes), and
recorded as a run of its own (``<checkpoint>/pretrain_run/``: the loss curve and
``metrics.json``, which includes :func:`perception`: how often the base's own
descriptions of validation images and clips name colour, shape and place or motion
right).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from lightning import LightningModule

from ur.data.collate import Conversation, ConversationCollator, size_key
from ur.data.datamodule import WorldSpec, load_records
from ur.data.records import PreferenceRecord
from ur.data.templates import PromptTemplates
from ur.models.module import VLMTrainingMixin
from ur.pretrain.cache import SPEC_FILE, needs_build
from ur.training import OptimizerSpec


@dataclass
class TinyVLMSpec:
    """A tiny VLM base: its build and its pretraining on the synthetic world."""

    family: Literal["qwen2_vl", "qwen2_5_vl", "llava_onevision"] = "qwen2_vl"
    hidden_size: int = 128
    num_layers: int = 4
    rope_theta: float = 4.0
    """RoPE base of the text model (see :func:`ur.models.tiny.build_tiny_vlm`)."""
    answer_checks: bool = False
    """Also pretrain on checks of given answers against the image ("The image shows a red
    circle ... Answer: blue vs red no. Wrong."), the reading skill behind understanding
    judgments."""
    check_style: Literal["claims", "restate"] = "claims"
    """How checks are written (:class:`ur.data.templates.PromptTemplates`); keep it the
    judge's."""
    pretrain_steps: int = 600
    """Steps of dense supervision on the synthetic world (scene descriptions, Q&A)."""
    pretrain_lr: float = 1e-3
    batch_size: int = 32
    length_grouping: int = 0
    """Batches are cut from runs of this many batches sorted by prompt length (0: shuffled
    freely; the base's prompts hardly differ, so grouping saves little there)."""
    world: WorldSpec = field(default_factory=WorldSpec)
    """The synthetic world the base is pretrained on (keep it the judge's)."""
    num_workers: int = 1
    """DataLoader workers preparing pretraining batches while the model trains."""
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.world, dict):
            self.world = WorldSpec(**self.world)


class DensePretrainModule(VLMTrainingMixin, LightningModule):
    """Next-token loss on the assistant turn of dense conversations (descriptions,
    answers, checks), every part of the model training, AdamW with warmup and cosine."""

    def __init__(self, model, processor, optimizer: OptimizerSpec):
        super().__init__()
        self.model, self.processor, self.optim = model.train(), processor, optimizer

    def training_step(self, batch, batch_idx):
        inputs = {k: v for k, v in batch.items() if k != "records"}
        loss = self.model(**inputs).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["records"]))
        return loss




def check_instruction(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}\nCheck the answer."


def dense_conversations(records: list[PreferenceRecord], *, answers: bool = True,
                        checks: bool = False, descriptions: bool = True,
                        check_style: str = "claims") -> list[Conversation]:
    """Descriptions of every distinct image/clip with evidence, (``answers``) the correct
    answers to the understanding questions, and (``checks``) each answer of a pair that
    knows how right its answers are, checked: "The image shows ... Answer: It is red.
    Right." (the reading skill an understanding judgment needs, on its own), written in
    ``check_style`` (:class:`PromptTemplates`)."""
    templates = PromptTemplates(answer_checks=True, check_style=check_style)
    seen, out = set(), []
    for r in records:
        for m, ev in zip(r.media, r.evidence or () if descriptions else (), strict=False):
            key = m.path or m.frames or hash(m.data)
            if key in seen:
                continue
            seen.add(key)
            kind = "image" if m.kind == "image" else "video"
            out.append(Conversation((m,), templates.describe(kind),
                                    templates.description_target(kind, ev), r))
        if not r.task.endswith("understanding") or r.form != "pairwise":
            continue
        if answers and r.label != "tie":
            best = r.responses[0 if r.label == "first" else 1]
            out.append(Conversation(r.media, r.prompt, best, r))
        if checks and r.evidence and r.response_scores is not None:
            for text, score in zip(r.responses, r.response_scores, strict=True):
                out.append(Conversation(
                    r.media, check_instruction(r.prompt, text),
                    f"The {r.modality} shows {r.evidence[0]}. "
                    + templates.check("Answer", r.prompt, text, score, r.evidence[0]), r))
    return out


def tokenizer_texts(records: list[PreferenceRecord], templates: PromptTemplates) -> list[str]:
    """Everything the judge will read or write: prompts, answers, verdicts, descriptions."""
    from ur.data.answers import format_score

    texts = []
    for r in records:
        texts.append(templates.instruction(r))
        texts.append(templates.target(r))
        texts.extend(r.responses)
        texts.extend(templates.description_target(k, ev) for ev in r.evidence or ()
                     for k in ("image", "video"))
    for scale in {r.scale for r in records if r.scale}:
        lo, hi = scale
        texts.extend(f"Final Score: {format_score(v)}" for v in range(int(lo), int(hi) + 1))
    texts += [templates.describe("image"), templates.describe("video"),
              check_instruction("What is shown?", "It is.")]
    return texts


def attribute_hits(said: str, truth: str, kind: str = "image") -> dict[str, bool]:
    """Which attributes of the first object a description names correctly: colour,
    shape and place (``kind`` image) or motion (video), by the world's own parser.
    Empty when ``truth`` names no object ("no shape")."""
    from ur.data.synthetic.scene import Element, parse_text

    want = parse_text(truth)[:1]
    if not want:
        return {}
    got, want = (parse_text(said)[:1] or (Element(),))[0], want[0]
    where = "place" if kind == "image" else "motion"
    return {"colour": got.colour == want.colour, "shape": got.shape == want.shape,
            where: getattr(got, where) == getattr(want, where)}


@torch.no_grad()
def perception(model, processor, records: list[PreferenceRecord], *, per_kind: int = 48,
               checks: bool = True, num_frames: int = 4, batch_size: int = 24,
               check_style: str = "claims") -> dict[str, float]:
    """What a model perceives and reads, greedily, on ``records`` (a validation split):

    - ``image/colour``, ``image/shape``, ``image/place``, ``video/colour``,
      ``video/shape``, ``video/motion``: how often its description of one of
      ``per_kind`` distinct images and clips names the first object's attribute right
      (chance about 1/6 colour, 1/4 shape, 1/5 place and motion);
    - with ``checks``, ``image/check`` and ``video/check``: how often, asked to check one
      of ``per_kind`` answers to a question, it marks it the way the oracle does
      ("Right.", "Partly right." or "Wrong."; about half the answers are right).
    """
    from collections import defaultdict

    described = dense_conversations(records, answers=False, checks=False)
    checked = (dense_conversations(records, answers=False, checks=True, descriptions=False,
                                   check_style=check_style) if checks else [])
    chosen = []
    for convs in (described, checked):
        chosen += [c for c in convs if c.media[0].kind == "image"][:per_kind]
        chosen += [c for c in convs if c.media[0].kind != "image"][:per_kind]
    collate = ConversationCollator(processor, num_frames=num_frames, with_targets=False)
    was_training = model.training
    model.eval()
    hits = defaultdict(list)
    for start in range(0, len(chosen), batch_size):
        chunk = chosen[start:start + batch_size]
        batch = collate(chunk)
        batch.pop("records", None)
        width = batch["input_ids"].shape[1]
        out = model.generate(**batch, max_new_tokens=64, do_sample=False)
        for conv, seq in zip(chunk, out, strict=True):
            said = processor.tokenizer.decode(seq[width:], skip_special_tokens=True)
            kind = "image" if conv.media[0].kind == "image" else "video"
            if conv.instruction == PromptTemplates().describe(kind):
                for name, hit in attribute_hits(said, conv.target, kind).items():
                    hits[f"{kind}/{name}"].append(hit)
            else:
                hits[f"{kind}/check"].append(last_mark(said) == last_mark(conv.target))
    model.train(was_training)
    return {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}


def last_mark(text: str) -> str | None:
    """The mark a check ends in ("Right", "Partly right" or "Wrong"), or None."""
    marks = re.findall(r"\b(Right|Partly right|Wrong)\.", text)
    return marks[-1] if marks else None


def ensure_tiny_vlm(checkpoint: str | Path, spec: TinyVLMSpec) -> Path:
    """Return ``checkpoint``, building and pretraining it first if it is missing or was
    built from another spec, another world format or another tiny builder. Processes
    that ask at once (DDP ranks, sweep jobs) build it once: the others wait, then find
    it built."""
    from ur.data.synthetic.writer import VERSION as world_format
    from ur.io import exclusive
    from ur.models.tiny import VERSION as tiny_format

    checkpoint = Path(checkpoint)
    wanted = json.loads(json.dumps(  # as the marker file reads back (tuples as lists)
        {**asdict(spec), "world_format": world_format, "tiny_format": tiny_format}))
    with exclusive(checkpoint):
        if needs_build(checkpoint, wanted, option="pretrain"):
            _build(checkpoint, spec, wanted)
    return checkpoint


def _build(checkpoint: Path, spec: TinyVLMSpec, wanted: dict) -> None:
    from ur.io import atomic_dir, write_json_atomic
    from ur.models.export import save_hf
    from ur.models.tiny import build_tiny_vlm

    world = spec.world
    records = [r for recs in load_records(world.sources("train"))[0] for r in recs]
    with atomic_dir(checkpoint) as tmp:
        raw = build_tiny_vlm(tmp / "init", family=spec.family,
                             texts=tokenizer_texts(records, PromptTemplates(
                                 answer_checks=True, check_style=spec.check_style)),
                             hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                             seed=spec.seed, rope_theta=spec.rope_theta,
                             image_size=world.image_size)
        conversations = dense_conversations(records, checks=spec.answer_checks,
                                            check_style=spec.check_style)
        module, metrics = _pretrain(raw, conversations, spec, world, tmp / "pretrain_run")
        val = [r for recs in load_records(world.sources("val"))[0] for r in recs]
        metrics["perception"] = perception(module.model, module.processor, val,
                                           checks=spec.answer_checks,
                                           check_style=spec.check_style,
                                           num_frames=world.num_frames)
        print(f"what the tiny base perceives (greedy, val): {metrics['perception']}",
              file=sys.stderr)
        write_json_atomic(tmp / "pretrain_run" / "metrics.json", {"pretrain": metrics})
        save_hf(module.model, module.processor, tmp / "model", merge_lora=False)
        for f in (tmp / "model").iterdir():
            os.replace(f, tmp / f.name)
        (tmp / "model").rmdir()
        shutil.copy(raw / "ur_tiny.json", tmp / "ur_tiny.json")
        shutil.rmtree(raw)
        write_json_atomic(tmp / SPEC_FILE, {"spec": wanted, "metrics": metrics})


def _pretrain(path: Path, conversations: list[Conversation], spec, world, run_dir: Path):
    """Dense supervised pretraining with Lightning; logs into ``run_dir`` (CSV)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from ur.data.sampling import MixtureSampler
    from ur.models.loading import load_vlm, trainable_parts

    L.seed_everything(spec.seed, workers=True)
    model, processor = load_vlm(str(path))
    trainable_parts(model, vision=True, projector=True, language=True)
    module = DensePretrainModule(model, processor, OptimizerSpec(
        lr=spec.pretrain_lr, warmup_ratio=0.05, weight_decay=0.0, min_lr_ratio=0.1))
    collate = ConversationCollator(module.processor, num_frames=world.num_frames)
    sampler = MixtureSampler([len(conversations)], [1.0], seed=spec.seed,
                             item_sizes=([size_key(c) for c in conversations]
                                         if spec.length_grouping else None),
                             batch_size=spec.batch_size, group=spec.length_grouping)
    loader = torch.utils.data.DataLoader(conversations, batch_size=spec.batch_size,
                                         sampler=sampler, collate_fn=collate, drop_last=True,
                                         num_workers=spec.num_workers,
                                         persistent_workers=spec.num_workers > 0,
                                         generator=torch.Generator().manual_seed(spec.seed))
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = []
    if not sys.stderr.isatty():  # the progress bar stays silent without a terminal
        from ur.callbacks import ProgressLines

        print(f"pretraining the tiny base: {spec.pretrain_steps} steps", file=sys.stderr)
        callbacks.append(ProgressLines(every=100))
    trainer = L.Trainer(max_steps=spec.pretrain_steps, accelerator="cpu", devices=1,
                        logger=CSVLogger(str(run_dir), name="", version=""),
                        enable_checkpointing=False, enable_model_summary=False,
                        log_every_n_steps=10, default_root_dir=str(run_dir),
                        enable_progress_bar=True, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=loader)
    metrics = {"train/loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
               "steps": trainer.global_step, "conversations": len(conversations)}
    return module, metrics
