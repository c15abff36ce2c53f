"""Construction as a Lightning predict run: ``ur predict --config experiments/construct/...``.

- :class:`PromptsDataModule` hands out the prompts not yet done: a candidates file
  (what :func:`ur.construct.candidates.write_candidates` writes: answers already
  drawn, or a generator's images or clips, as ``ur construct oracle-generation``
  writes them) or the synthetic world's understanding questions of a split (the policy
  answers them during the run).
- :class:`ConstructModule` draws the candidates it lacks from the policy (N per prompt,
  seeded per prompt) and builds each prompt's pair with the judge
  (:func:`ur.construct.judged.build_pairs`: pair ranking, then point sifting, or one
  of the comparison arms). On the synthetic world it also scores every candidate by
  the oracle, so that the pairs can be checked.
- :class:`ConstructWriter` (added by the module) writes each batch's prompts to a part
  file of its own under ``<out>/parts/`` (temporary file, then rename), named by the
  prompts it holds, on every rank. A prompt is done once its part exists, so a run
  killed at any moment and started again with the same command does the rest, every
  prompt exactly once; under DDP Lightning's predict sampler gives each rank its own
  prompts. At the end rank 0 merges the parts into the outputs.

Outputs in ``out``:

- ``image_pairs.jsonl`` (``image_dpo`` schema) and ``video_pairs.jsonl``
  (``sharegptvideo_dpo``) for understanding, ``image_generation_pairs.parquet``
  (Pick-a-Pic v2) and ``video_generation_pairs.jsonl`` (VideoDPO) for generation: what
  the DPO modules, TRL and the reference trainers read;
- ``pairs_meta.jsonl``: per pair, the prompt's id, the candidates' indices, the judge's
  verdicts, probabilities, scores and words, the candidates' origin (model, seed,
  sampling settings) and, on the world, their oracle scores;
- ``summary.json``: prompts, pairs, drops by reason, ties and unparsed judgments, the
  chosen and rejected scores, and on the world the share of pairs whose chosen answer
  the oracle also scores above the rejected one (``oracle_agreement``, with its 95%
  bootstrap interval; a pair the oracle scores level counts against it: for generated
  samples, less than :data:`ORACLE_LEVEL_GAP` apart), the pairs the oracle scores level
  (``oracle_ties``), the share among the others
  (``oracle_agreement_untied``), and the oracle's mean score of the chosen answers, of
  the rejected ones and of all the prompt's answers (``oracle_chosen_mean``,
  ``oracle_rejected_mean``, ``oracle_candidates_mean``), per task.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from ur.construct.candidates import (
    Candidates,
    Samples,
    candidates_of,
    candidates_row,
    parse_row,
    read_candidates,
    sample_answers,
    samples_row,
)
from ur.construct.judged import DROP_REASONS, Built, build_pairs, check_method, pool_of
from ur.construct.oracle_generation import MIN_GAP
from ur.data.datamodule import WorldSpec
from ur.data.questions import Question, world_questions
from ur.data.records import PreferenceRecord, is_generation
from ur.io import write_json_atomic, write_text_atomic

SOURCE = "judge_pairs"
PAIR_FILES = {"image_understanding": "image_pairs.jsonl",
              "video_understanding": "video_pairs.jsonl",
              "image_generation": "image_generation_pairs.parquet",
              "video_generation": "video_generation_pairs.jsonl"}
ORIGIN = ("model", "seed", "seeds", "temperature", "top_p", "top_k", "max_new_tokens", "n",
          "settings")
"""A prompt row's fields that say what drew its candidates (answers or samples)."""


def _prompt_id(item: Candidates | Samples | Question) -> str:
    return (item.question if isinstance(item, Candidates) else item).id


def outside_media_root(items: list[Candidates | Samples | Question], root: Path,
                       candidates: str | None) -> None:
    """Fail before any work when a prompt's media lies outside ``root``: the pair files
    write media paths relative to it, so the merge at the end could not."""
    for item in items:
        q = item.question if isinstance(item, Candidates) else item
        for m in (q.samples if isinstance(q, Samples) else q.media):
            for path in ((m.path,) if m.path else ()) + tuple(m.frames or ()):
                if not Path(path).resolve().is_relative_to(root):
                    where = f"{q.file or candidates}: row {q.row}" if q.file or candidates \
                        else f"prompt {q.id!r}"
                    raise ValueError(
                        f"{where}: {m.field or 'media'} {path!r} lies outside the media root "
                        f"{str(root)!r} the pair files are written relative to; pass "
                        "data.init_args.media_root (a folder holding every prompt's media, "
                        "such as the world's)")


def done_ids(out: Path) -> set[str]:
    """Ids of the prompts whose part is written under ``out/parts``."""
    return {row["id"] for row in read_parts(out)}


class PromptsDataModule(LightningDataModule):
    """The prompts construction has not done yet.

    Args:
        out: The construction's folder (its parts say which prompts are done).
        candidates: A candidates JSONL (answers already drawn, or generated samples);
            or None and ``questions``.
        questions: The synthetic world whose understanding questions the policy answers.
        split: The world's split the questions come from (never the judge's test split
            when the pairs are measured).
        max_questions: How many of them (a seeded subset, in the world's order).
        seed: Seed of that subset.
        batch_size: Prompts per predict step.
        media_root: The folder the pair files' media paths are written relative to (read
            them with the same ``media_root``); default: the world's folder, or the
            candidates file's.
    """

    def __init__(self, out: str = "data/pairs/judge", candidates: str | None = None,
                 questions: WorldSpec | None = None, split: str = "train",
                 max_questions: int | None = None, seed: int = 0, batch_size: int = 8,
                 media_root: str | None = None):
        super().__init__()
        if (candidates is None) == (questions is None):
            raise ValueError("give exactly one of candidates (a file of drawn answers) or "
                             "questions (a synthetic world the policy answers)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.out = Path(out)
        self.candidates, self.world = candidates, questions
        self.split, self.max_questions, self.seed = split, max_questions, seed
        self.batch_size = batch_size
        self.media_root = Path(media_root or (questions.out if questions is not None
                                              else Path(candidates).parent)).resolve()
        self.items: list[Candidates | Question] = []
        self.total = 0

    def setup(self, stage: str | None = None) -> None:
        if self.candidates is not None:
            items = read_candidates(self.candidates)
        else:
            self.world.manifest()
            items = world_questions(self.world.out, self.split,
                                    max_questions=self.max_questions, seed=self.seed)
        seen = Counter(_prompt_id(i) for i in items)
        twice = sorted(k for k, v in seen.items() if v > 1)
        if twice:
            where = self.candidates or f"{self.world.out} ({self.split})"
            raise ValueError(f"{where}: prompt ids must be unique to be done exactly once; "
                             f"{len(twice)} repeat, e.g. {twice[:3]}")
        outside_media_root(items, self.media_root, self.candidates)
        done = done_ids(self.out)
        self.total = len(items)
        self.items = [i for i in items if _prompt_id(i) not in done]

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=self.batch_size, shuffle=False,
                          collate_fn=list)


class ConstructModule(LightningModule):
    """Candidates from a policy, pairs from a judge.

    Args:
        judge: The reward model's checkpoint (a local folder or hub id), or a list of
            them: an ensemble whose judgments are pooled
            (:class:`ur.reward.judge.JudgeEnsemble`).
        policy: The policy that answers questions without drawn answers (None when the
            data module reads a candidates file).
        method: ``rank_sift`` (pair ranking, then point sifting), ``rank``, ``sift`` or
            ``random`` (:mod:`ur.construct.judged`).
        both_orders: Judge each pair in both orders and average (position bias).
        margin: Drop a prompt unless chosen scores above rejected by more than this
            share of the scale's range (``rank_sift`` and ``sift``; 0: the paper's
            rule, above at all). Wider gaps are the judge's surer pairs.
        reject: Which scored loser is rejected (``rank_sift`` and ``sift``): ``worst``
            (the paper's) or ``typical``, the first in sampling order scoring below the
            middle of the scale, a wrong answer as the policy writes it
            (:mod:`ur.construct.judged`).
        pair_from: Where pair ranking's decisions come from: ``verdict``, ``points``
            (two pointwise scores) or ``both`` (:class:`ur.reward.judge.Judge`).
        judge_mode: ``fast`` or ``generate`` (:class:`ur.reward.judge.Judge`).
        judge_batch_size: Judgments per forward pass.
        share_prefix: Run the start that a batch's judgments of one question share (the
            template, the image or clip, the question) once, not once per judgment; the
            judgments are the same to float rounding (:class:`ur.reward.judge.Judge`).
        describe_first: Tasks whose questions are judged from descriptions: each image or
            clip described on its own first, then the question asked with the
            descriptions as text (:class:`ur.reward.judge.Judge`).
        describer: The checkpoint that writes those descriptions (default: each judge
            itself), e.g. the base the judge was trained from.
        processor_kwargs: Extra keywords for the judges' processor call, as the judge
            was trained with (``data.init_args.processor_kwargs``). A Qwen2-VL processor
            resizes a picture into its pixel bounds; the tiny base's lower bound is
            28 x 28, a single visual token, so a 32-pixel generated sample is judged at
            the world's 84 x 84 with ``{images_kwargs: {size: {shortest_edge: 7056,
            longest_edge: 7056}}}`` (experiments/construct/generation.yaml).
        scale: Pointwise scale (default: the scale the judge learned the task on).
        n: Candidates per prompt (UnifiedReward: 10).
        temperature: Sampling temperature of the policy.
        top_p: Nucleus sampling of the policy.
        top_k: Top-k of the policy (0: off).
        max_new_tokens: Longest candidate answer.
        sample_batch_size: Prompts per ``generate`` call of the policy.
        num_frames: Frames read from each video.
        seed: Seed of the draws (per prompt: the same prompt draws the same candidates
            in a resumed run or on another rank) and of the ``random`` arm.
        dtype: Weights dtype (``bfloat16`` on GPUs).
        trust_remote_code: Run code shipped with the checkpoints (off unless you opt in).
    """

    def __init__(self, judge: str | list[str] = "checkpoints/quickstart-judge",
                 policy: str | None = None,
                 method: str = "rank_sift", both_orders: bool = False, margin: float = 0.0,
                 reject: str = "worst", pair_from: str = "verdict",
                 judge_mode: str = "fast", judge_batch_size: int = 32,
                 share_prefix: bool = False, describe_first: list[str] | None = None,
                 describer: str | None = None, processor_kwargs: dict | None = None,
                 scale: tuple[float, float] | None = None, n: int = 10,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 max_new_tokens: int = 48, sample_batch_size: int = 16, num_frames: int = 4,
                 seed: int = 0, dtype: str | None = None, trust_remote_code: bool = False):
        super().__init__()
        check_method(method, margin, reject)
        self.save_hyperparameters()
        from ur.models.loading import load_vlm
        from ur.reward.judge import Judge, JudgeEnsemble

        paths = [judge] if isinstance(judge, str) else list(judge)
        if not paths:
            raise ValueError("model.init_args.judge: give a judge's checkpoint, or a list")
        describing = None
        processor_kwargs = dict(processor_kwargs or {})
        if describer is not None:
            model, processor = load_vlm(describer, dtype=dtype,
                                        trust_remote_code=trust_remote_code)
            describing = Judge(model=model.eval().requires_grad_(False), processor=processor,
                               mode="generate", max_new_tokens=48,
                               batch_size=judge_batch_size, num_frames=num_frames,
                               processor_kwargs=processor_kwargs)
        judges = []
        for path in paths:
            model, processor = load_vlm(path, dtype=dtype, trust_remote_code=trust_remote_code)
            judges.append(Judge(model=model.eval().requires_grad_(False), processor=processor,
                                mode=judge_mode, batch_size=judge_batch_size,
                                both_orders=both_orders, pair_from=pair_from,
                                num_frames=num_frames, share_prefix=share_prefix,
                                describe_first=tuple(describe_first or ()),
                                describer=describing,
                                processor_kwargs=processor_kwargs))
        # Registered as submodules, so Lightning moves them to the device.
        self.judge_models = torch.nn.ModuleList(
            [j.model for j in judges] + ([describing.model] if describing else []))
        self.judge = judges[0] if len(judges) == 1 else JudgeEnsemble(judges)
        self.policy = self.policy_processor = None
        if policy is not None:
            model, self.policy_processor = load_vlm(policy, dtype=dtype,
                                                    trust_remote_code=trust_remote_code)
            self.policy = model.eval().requires_grad_(False)

    def candidates(self, items: list[Candidates | Samples | Question]
                   ) -> list[Candidates | Samples]:
        """The batch's candidates, drawing the answers of questions that have none."""
        hp = self.hparams
        out = []
        for item in items:
            if isinstance(item, (Candidates, Samples)):
                out.append(item)
                continue
            if self.policy is None:
                raise ValueError(f"question {item.id!r} has no answers and no policy is "
                                 "given to draw them (model.init_args.policy)")
            seed = int.from_bytes(hashlib.blake2b(f"{hp.seed}:{item.id}".encode(),
                                                  digest_size=4).digest(), "little")
            answers = sample_answers(self.policy, self.policy_processor, [item], n=hp.n,
                                     temperature=hp.temperature, top_p=hp.top_p, top_k=hp.top_k,
                                     max_new_tokens=hp.max_new_tokens, seed=seed,
                                     num_frames=hp.num_frames)
            out += candidates_of([item], answers, model=str(hp.policy), seed=seed,
                                 temperature=hp.temperature, top_p=hp.top_p, top_k=hp.top_k,
                                 max_new_tokens=hp.max_new_tokens)
        return out

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Prompts stay as they are: the policy and the judge move what they read."""
        return batch

    def predict_step(self, batch: list, batch_idx: int) -> list[dict]:
        drawn = self.candidates(batch)
        built = build_pairs(self.judge, [pool_of(c) for c in drawn],
                            method=self.hparams.method, scale=self.hparams.scale,
                            seed=self.hparams.seed, margin=self.hparams.margin,
                            reject=self.hparams.reject)
        return [prompt_row(c, b) for c, b in zip(drawn, built, strict=True)]

    def configure_callbacks(self):
        return [ConstructWriter()]


def oracle_scores(c: Candidates | Samples) -> list[float] | None:
    """The oracle's score of every answer when the question carries its scene; of every
    generated sample, as its candidates file gives it."""
    if isinstance(c, Samples):
        return None if c.oracle_scores is None else list(c.oracle_scores)
    if c.question.evidence is None:
        return None
    from ur.data.synthetic.oracle import oracle_score

    return [oracle_score(c.question, a) for a in c.answers]


def prompt_row(c: Candidates | Samples, built: Built) -> dict:
    """One prompt's line in a part file: its candidates (with their origin), what the
    judge made of them and, on the world, the oracle's scores."""
    row = samples_row(c) if isinstance(c, Samples) else candidates_row(c)
    return {**row, "built": built.as_dict(), "oracle_scores": oracle_scores(c)}


class ConstructWriter(BasePredictionWriter):
    """Each predict batch to its own part file, atomically; the parts merged at the end."""

    def __init__(self):
        super().__init__(write_interval="batch")
        self._merged = False

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0):
        if not prediction:
            return
        out = Path(trainer.datamodule.out) / "parts"
        out.mkdir(parents=True, exist_ok=True)
        name = hashlib.blake2b("\n".join(r["id"] for r in prediction).encode(),
                               digest_size=8).hexdigest()
        write_text_atomic(out / f"part-{name}.jsonl",
                          "".join(json.dumps(r) + "\n" for r in prediction))

    def on_predict_end(self, trainer, pl_module):
        self._merge(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # Lightning skips the predict loop, and with it on_predict_end, when no prompt is
        # left: a run killed after its last part and before the merge still merges here.
        if stage == "predict" and not self._merged:
            self._merge(trainer)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._merged = False

    def _merge(self, trainer) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            dm = trainer.datamodule
            summary = merge(Path(dm.out), media_root=dm.media_root, expected=dm.total)
            trainer.callback_metrics.update(
                {k: torch.tensor(float(v)) for k, v in flat_figures(summary).items()})
        trainer.strategy.barrier()
        self._merged = True


def read_parts(out: Path) -> list[dict]:
    """Every prompt row of the parts, each id once (a repeat is an error: it would mean
    a prompt was done twice)."""
    rows, seen = [], {}
    for part in sorted((out / "parts").glob("part-*.jsonl")):
        for line in part.read_text().splitlines():
            if not line:
                continue
            row = json.loads(line)
            if row["id"] in seen:
                raise RuntimeError(f"prompt {row['id']!r} is in {seen[row['id']]} and {part}")
            seen[row["id"]] = part
            rows.append(row)
    return sorted(rows, key=lambda r: r["id"])


def pair_of(row: dict) -> PreferenceRecord | None:
    """The DPO pair of a prompt row (chosen first), or None when it was dropped."""
    b = row["built"]
    if b["chosen"] is None:
        return None
    item = parse_row(row, "parts", 0)
    c, r = b["chosen"], b["rejected"]
    scores = b["scores"]
    if isinstance(item, Samples):
        media = tuple(replace(item.samples[k], field=f"jpg_{m}") for m, k in enumerate((c, r)))
        return PreferenceRecord(
            task=item.task, form="pairwise", source=SOURCE, id=f"{item.id}-c{c}-r{r}",
            prompt=item.prompt, media=media, label="first",
            meta={"question_id": item.id, "chosen_index": c, "rejected_index": r,
                  "chosen_score": scores.get(str(c)), "rejected_score": scores.get(str(r)),
                  "model_0": item.model, "model_1": item.model})
    q = item.question
    return PreferenceRecord(
        task=q.task, form="pairwise", source=SOURCE, id=f"{q.id}-c{c}-r{r}", prompt=q.prompt,
        media=q.media, responses=(row["answers"][c], row["answers"][r]), label="first",
        evidence=q.evidence,
        meta={"question_id": q.id, "chosen_index": c, "rejected_index": r,
              "chosen_score": scores.get(str(c)), "rejected_score": scores.get(str(r))})


def merge(out: Path, media_root: Path, expected: int | None = None) -> dict:
    """Write the pair files (media paths relative to ``media_root``), ``pairs_meta.jsonl``
    and ``summary.json`` from the parts; returns the summary."""
    from ur.data.sources import PAIR_SCHEMAS, write_pairs
    from ur.reward.metrics import mean_with_interval

    rows = read_parts(out)
    pairs, meta = [], []
    for row in rows:
        pair = pair_of(row)
        if pair is None:
            continue
        pairs.append(pair)
        origin = {k: row[k] for k in ORIGIN if k in row}
        meta.append({"id": pair.id, **pair.meta, "task": pair.task, **origin,
                     "judge": row["built"], "oracle_scores": row["oracle_scores"]})
    # Understanding's files are always written (the loop reads both); a generation
    # task's when its prompts are here.
    files = {task: name for task, name in PAIR_FILES.items()
             if task.endswith("_understanding") or any(r["task"] == task for r in rows)}
    for task, name in files.items():
        write_pairs(PAIR_SCHEMAS[task], out / name, [p for p in pairs if p.task == task],
                    media_root=media_root)
    write_text_atomic(out / "pairs_meta.jsonl", "".join(json.dumps(m) + "\n" for m in meta))
    summary = {"prompts": len(rows), "expected_prompts": expected, "pairs": len(pairs),
               "media_root": str(media_root), "files": files,
               "methods": sorted({r["built"]["method"] for r in rows}), "tasks": {}}
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        built = [r["built"] for r in mine]
        kept = [b for b in built if b["chosen"] is not None]
        figures = {
            "prompts": len(mine), "pairs": len(kept),
            "dropped": {k: sum(b["dropped"] == k for b in built) for k in DROP_REASONS},
            "ties": sum(v == "tie" for b in built for v in b["verdicts"]),
            "unparsed_verdicts": sum(v is None for b in built for v in b["verdicts"]),
            "unparsed_scores": sum(s is None for b in built for s in b["scores"].values()),
        }
        for side in ("chosen", "rejected"):
            values = [b["scores"][str(b[side])] for b in kept if str(b[side]) in b["scores"]]
            values = [v for v in values if v is not None]
            if values:
                figures[f"{side}_score_mean"] = statistics.fmean(values)
                figures[f"{side}_score_std"] = statistics.pstdev(values)
        judged = [r for r in mine if r["oracle_scores"] is not None
                  and r["built"]["chosen"] is not None]
        if judged:
            gaps = torch.tensor([r["oracle_scores"][r["built"]["chosen"]]
                                 - r["oracle_scores"][r["built"]["rejected"]] for r in judged],
                                dtype=torch.float64)
            level = oracle_level(task, gaps)
            figures["oracle_level_gap"] = ORACLE_LEVEL_GAP if is_generation(task) else 0.0
            figures.update({k.replace("value", "oracle_agreement"): v for k, v in
                            mean_with_interval("value", ((gaps > 0) & ~level).float()).items()})
            figures["oracle_ties"] = int(level.sum())
            # How good the chosen answers are, against the answers they were chosen from:
            # DPO with an NLL term on the chosen answer trains the policy towards them.
            for side in ("chosen", "rejected"):
                figures[f"oracle_{side}_mean"] = statistics.fmean(
                    r["oracle_scores"][r["built"][side]] for r in judged)
            figures["oracle_candidates_mean"] = statistics.fmean(
                statistics.fmean(r["oracle_scores"]) for r in judged)
            if (~level).any():  # among the pairs the oracle tells apart
                figures.update({k.replace("value", "oracle_agreement_untied"): v for k, v in
                                mean_with_interval("value", (gaps[~level] > 0).float()).items()})
        summary["tasks"][task] = figures
    write_json_atomic(out / "summary.json", summary)
    return summary


ORACLE_LEVEL_GAP = MIN_GAP
"""Generated samples the oracle scores less than this apart count as level: their scores
are continuous, and this is the gap below which ``ur construct oracle-generation`` builds
no pair (:data:`ur.construct.oracle_generation.MIN_GAP`). Answers' scores are exact
(right, a hedge, a share of a description's attributes): only equal ones are level."""


def oracle_level(task: str, gaps: torch.Tensor) -> torch.Tensor:
    """Which chosen-minus-rejected oracle ``gaps`` of ``task``'s pairs count as level."""
    if is_generation(task):
        return gaps.abs() < ORACLE_LEVEL_GAP
    return gaps == 0


def flat_figures(summary: dict) -> dict[str, float]:
    """The summary's numbers as ``construct/<task>/<figure>`` (for metrics.json)."""
    flat = {"construct/prompts": summary["prompts"], "construct/pairs": summary["pairs"]}
    for task, figures in summary["tasks"].items():
        for k, v in figures.items():
            if isinstance(v, dict):
                flat.update({f"construct/{task}/{k}/{kk}": vv for kk, vv in v.items()})
            elif isinstance(v, (int, float)):
                flat[f"construct/{task}/{k}"] = v
    return flat
