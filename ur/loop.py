"""The alignment loop, stage by stage, on the synthetic world: understanding policies
(:class:`Loop`) and text-to-image or text-to-video generators (:class:`GenerationLoop`).

Does the judge's data make the policy better? One command chains the stages, and each
stage is an ordinary ``ur`` command that leaves its own folder (a user can rerun any of
them alone; the loop prints each before it runs it):

1. ``prompts``: a synthetic world of its own seed (``ur corpus synth``), whose training
   questions the policy answers. Neither the judge nor the policy has seen its items;
   the policy is tested on the judge's world's test split, as before.
2. ``candidates``: N sampled answers per question (``ur construct oracle-pairs``, which
   also writes the oracle's pairs of the same answers: the ceiling arm).
3. ``pairs``: the judge's pairs of the same answers, per arm (``ur predict`` with the
   construction config: ``rank_sift``, ``rank``, ``sift``, ``random``).
4. ``dpo``: DPO of the policy on each arm's pairs (``ur fit`` with the DPO config); the
   fit ends by answering the test questions, each answer scored by the oracle
   (``test_answers.jsonl``).
5. ``base``: the starting policy answers the same test questions (``ur test``).

Round ``r > 1`` starts from round ``r - 1``'s aligned policy of the same arm and seed:
its own answers, the judge's pairs of them, DPO from there (on-policy again).

``loop.json`` in the output folder holds every stage's command, log and output, and the
figures: per arm and seed the pairs' oracle agreement, the aligned policy's test oracle
accuracy and its gain over the base with a paired 95% bootstrap interval over the
questions; per arm the mean and spread over seeds and the interval of the gain averaged
over seeds. A stage whose output exists is not run again, so a loop killed at any point
goes on from there with the same command.

The generation loop has the same shape: the generator's samples of training captions
(``ur construct oracle-generation``, N per caption from seeded noise, kept on disk with
the oracle's pairs of them: the ceiling arm), the judge's pairs of the same samples
(``ur predict`` with ``experiments/construct/generation.yaml``), Diffusion-DPO per arm
(``ur fit``, ending by sampling the held-out captions with fixed seeds:
``test_samples.jsonl``) and the starting generator's samples of the same captions and
seeds (``ur test``). Its figure is the oracle's caption alignment of those samples,
paired sample by sample (caption and seed) with the base's.

Comparing judges or recipes: ``share`` names another loop's folder. A stage whose every
setting is the same there (the settings it depends on: the base's answers on the policy
and the DPO config's test questions, the policy's answers on the policy, prompts and
sampling, an arm's pairs also on the construction config and, for the judge's arms, the
judge; DPO also on the DPO config) is linked from there instead of run again. A loop
with another judge so shares the base, the answers and the oracle's and random arms,
and a loop with another DPO config the answers and every arm's pairs: each comparison is
made on the very same answers.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ur.io import write_json_atomic

ARMS: tuple[str, ...] = ("rank_sift", "rank", "sift", "oracle", "random")
JUDGE_ARMS = ("rank_sift", "rank", "sift", "random")
JUDGE_FREE_ARMS = ("oracle", "random")
"""Arms whose pairs do not depend on the judge (the random arm's draws depend only on
the seed and the question)."""
ANSWERS = ("policy", "prompts", "prompts_size", "prompts_seed", "n", "temperature",
           "max_new_tokens")
"""The settings the policy's answers depend on."""
SAMPLES = ("policy", "kind", "captions", "n", "sample_steps")
"""The settings a generator's samples depend on."""


@dataclass
class LoopSpec:
    """What one loop runs (paths as the stages see them, relative to the working folder)."""

    judge: str | tuple[str, ...]
    """The judge's export folder, or several: an ensemble whose judgments are pooled."""
    out: Path
    policy: str = "checkpoints/tiny/qwen2_vl-world"
    prompts: Path = Path("data/world_prompts")
    prompts_size: int = 4000
    prompts_seed: int = 1
    arms: tuple[str, ...] = ("rank_sift", "oracle", "random")
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 1
    n: int = 8
    temperature: float = 0.7
    """The policy's sampling temperature (UnifiedReward's construction samples at 0.7)."""
    max_new_tokens: int = 32
    pair_from: str = "both"
    dpo_config: tuple[str, ...] = ("experiments/dpo/understanding.yaml",)
    construct_config: tuple[str, ...] = ("experiments/construct/understanding.yaml",)
    share: Path | None = None
    """Another loop's folder whose judge-free stages this loop links instead of running."""

    def __post_init__(self):
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ValueError(f"unknown arm(s) {bad}: choose from {list(ARMS)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be above 0: {self.n} answers drawn greedily "
                             f"are one answer (got {self.temperature})")
        if self.rounds < 1 or self.n < 2:
            raise ValueError(f"rounds must be at least 1 and n at least 2 (got {self.rounds}, "
                             f"{self.n})")
        for path in (*self.dpo_config, *self.construct_config):
            if not Path(path).is_file():
                raise FileNotFoundError(f"config {path} does not exist")
        if not isinstance(self.judge, str):
            self.judge = tuple(str(j) for j in self.judge)
            if len(self.judge) == 1:
                self.judge = self.judge[0]
        for judge in self.judges:
            if not Path(judge).is_dir():
                raise FileNotFoundError(f"judge {judge} is not a folder (a judge's export)")
        if not Path(self.policy).is_dir():
            raise FileNotFoundError(f"policy {self.policy} is not a folder ({self.BUILT_BY})")
        if self.share is not None:
            self.shared_settings()

    BUILT_BY = "the quickstart builds checkpoints/tiny/qwen2_vl-world"
    answers = ANSWERS
    """The settings the candidates depend on."""
    metric = "oracle accuracy"
    """What the test figure is."""

    @property
    def judges(self) -> tuple[str, ...]:
        return (self.judge,) if isinstance(self.judge, str) else self.judge

    def settings(self) -> dict:
        """The settings as loop.json records them."""
        return {"judge": self.judge if isinstance(self.judge, str) else list(self.judge),
                "policy": str(self.policy),
                "prompts": str(self.prompts), "prompts_size": self.prompts_size,
                "prompts_seed": self.prompts_seed, "n": self.n,
                "temperature": self.temperature, "max_new_tokens": self.max_new_tokens,
                "pair_from": self.pair_from,
                "dpo_config": list(self.dpo_config),
                "construct_config": list(self.construct_config)}

    def shared_settings(self) -> dict:
        """The settings the shared loop was run with (its loop.json)."""
        other = Path(self.share) / "loop.json"
        if Path(self.share).resolve() == Path(self.out).resolve():
            raise ValueError("share names the loop's own folder: give another loop's")
        if not other.is_file():
            raise FileNotFoundError(f"share: {other} does not exist (a loop's folder holds "
                                    "one once the loop has run)")
        theirs = json.loads(other.read_text()).get("settings")
        if theirs is None:
            raise ValueError(f"share: {other} does not record its settings; run that loop's "
                             "command again (its stages are skipped) to write them")
        return theirs


GENERATION_CONFIGS = {
    "image": ("experiments/dpo/t2i.yaml", "experiments/construct/generation.yaml"),
    "video": ("experiments/dpo/t2v.yaml", "experiments/construct/generation.yaml"),
}


@dataclass
class GenerationLoopSpec(LoopSpec):
    """A text-to-image (``kind: image``) or text-to-video loop: ``policy`` is the
    generator, ``captions`` the training captions sampled, ``n`` samples per caption,
    drawn with ``sample_steps`` denoising steps. The DPO and construction configs default
    to the kind's (:data:`GENERATION_CONFIGS`)."""

    policy: str = ""
    kind: str = "image"
    captions: int = 400
    n: int = 4
    sample_steps: int = 12
    dpo_config: tuple[str, ...] = ()
    construct_config: tuple[str, ...] = ()

    BUILT_BY = "a diffusers generator: ur models generator builds checkpoints/tiny/t2i-world"
    answers = SAMPLES
    metric = "oracle caption alignment"

    def __post_init__(self):
        if self.kind not in GENERATION_CONFIGS:
            raise ValueError(f"kind must be image or video, got {self.kind!r}")
        dpo, construct = GENERATION_CONFIGS[self.kind]
        self.policy = self.policy or f"checkpoints/tiny/t2{self.kind[0]}-world"
        self.dpo_config = tuple(self.dpo_config) or (dpo,)
        self.construct_config = tuple(self.construct_config) or (construct,)
        if self.captions < 1 or self.sample_steps < 1:
            raise ValueError(f"captions and sample_steps must be at least 1 (got "
                             f"{self.captions}, {self.sample_steps})")
        super().__post_init__()

    def settings(self) -> dict:
        keep = ("judge", "policy", "n", "pair_from", "dpo_config", "construct_config")
        return {**{k: v for k, v in super().settings().items() if k in keep},
                "kind": self.kind, "captions": self.captions, "sample_steps": self.sample_steps}


@dataclass
class Stage:
    """One ``ur`` command of the loop; ``done`` when ``output`` exists."""

    name: str
    args: list[str]
    output: Path
    log: Path
    run_output: str | None = None
    """A Lightning run's file, copied from its run folder into ``output``."""
    pairs: Path | None = None
    """DPO's pairs' folder: with none in it, DPO cannot run and the policy stays as it was."""
    start: tuple[str, Path] | None = None
    """DPO's starting policy and its test answers (what an arm without pairs keeps)."""
    run_dir: str | None = None
    seconds: float | None = None
    skipped: bool = False
    depends: tuple[str, ...] = ()
    """The settings its output depends on: where all are the same in another loop, that
    loop's output can stand in (``LoopSpec.share``)."""
    shared: str | None = None
    """The other loop's folder this stage's output folder links to."""

    @property
    def done(self) -> bool:
        return self.output.exists()

    def command(self) -> str:
        return " ".join(["ur", *(_quote(a) for a in self.args)])


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " {}[],") else arg


def _configs(paths) -> list[str]:
    return [x for p in paths for x in ("--config", str(p))]


@dataclass
class Loop:
    spec: LoopSpec
    stages: list[Stage] = field(default_factory=list)
    _theirs: dict = field(default_factory=dict, repr=False)
    """The shared loop's settings (``spec.share``), read when the loop runs."""

    # -- the stages ------------------------------------------------------------------------
    TEST_FILE = "test_answers.jsonl"
    """What a DPO or test run writes per held-out item, with its oracle score."""

    def first_stages(self) -> list[Stage]:
        """What every later stage needs made first: the world of prompts."""
        return [self.prompts_stage()]

    def prompts_stage(self) -> Stage:
        s = self.spec
        return self._stage("prompts", ["corpus", "synth", "--out", str(s.prompts), "--size",
                                       str(s.prompts_size), "--seed", str(s.prompts_seed)],
                           s.prompts / "manifest.json")

    PRETRAIN = "--pretrain"
    """The DPO config's option that would build the starting policy: off, it is given."""

    def base_stage(self) -> Stage:
        s = self.spec
        return self._stage("base", ["test", *_configs(s.dpo_config), self.PRETRAIN, "null",
                                    "--model.init_args.checkpoint", s.policy,
                                    "--run.name", "loop_base"],
                           s.out / "base" / self.TEST_FILE, run_output=self.TEST_FILE)

    def folder(self, rnd: int, seed: int) -> Path:
        return self.spec.out / f"round{rnd}" / f"seed{seed}"

    def candidates_folder(self, rnd: int, seed: int, arm: str) -> Path:
        """Round 1's answers are shared between arms; later rounds' are each arm's own."""
        return self.folder(rnd, seed) / ("candidates" if rnd == 1 else f"candidates_{arm}")

    def dpo_folder(self, rnd: int, seed: int, arm: str) -> Path:
        return self.folder(rnd, seed) / f"dpo_{arm}"

    def candidates_stage(self, rnd: int, seed: int, arm: str, policy: str) -> Stage:
        """The policy's answers. Round 1 shares them between arms; later rounds sample
        each arm's own aligned policy."""
        s = self.spec
        where = self.candidates_folder(rnd, seed, arm)
        draw = seed + 1000 * (rnd - 1)
        return self._stage(f"candidates r{rnd} s{seed}" + ("" if rnd == 1 else f" {arm}"),
                           ["construct", "oracle-pairs", "--policy", policy, "--world",
                            str(s.prompts), "--out", str(where), "--n", str(s.n), "--seed",
                            str(draw), "--temperature", str(s.temperature),
                            "--max-new-tokens", str(s.max_new_tokens)],
                           where / "summary.json")

    def pairs_stage(self, rnd: int, seed: int, arm: str, candidates: Path) -> Stage:
        s = self.spec
        where = self.folder(rnd, seed) / f"pairs_{arm}"
        return self._stage(f"pairs r{rnd} s{seed} {arm}", [
            "predict", *_configs(s.construct_config),
            "--model.init_args.judge", s.judge if isinstance(s.judge, str)
            else "[" + ", ".join(s.judge) + "]", "--model.init_args.policy", "null",
            "--model.init_args.method", arm, "--model.init_args.pair_from", s.pair_from,
            "--model.init_args.seed", str(seed), *self.unscored_args(arm),
            "--data.init_args.candidates", str(candidates / "candidates.jsonl"),
            *self.media_root_args(), "--data.init_args.out", str(where),
            "--run.name", f"loop_pairs_{arm}"],
            where / "summary.json")

    @staticmethod
    def unscored_args(arm: str) -> list[str]:
        """A construction config's sifting options (``margin``, ``reject``) are for the
        arms that pair by scores; the other arms are built without them, so one config
        serves every arm of a loop."""
        from ur.construct.judged import SCORED_METHODS

        if arm in SCORED_METHODS:
            return []
        return ["--model.init_args.margin", "0.0", "--model.init_args.reject", "worst"]

    def media_root_args(self) -> list[str]:
        """The construction's media root: the prompt world, where the questions' media lie."""
        return ["--data.init_args.questions", "null",
                "--data.init_args.media_root", str(self.spec.prompts)]

    def train_sources(self, rnd: int, seed: int, arm: str, pairs: Path
                      ) -> list[tuple[str, Path, Path]]:
        """DPO's pair sources in ``pairs``: ``(schema, file, media root)``."""
        return [("image_dpo", pairs / "image_pairs.jsonl", self.spec.prompts),
                ("sharegptvideo_dpo", pairs / "video_pairs.jsonl", self.spec.prompts)]

    def dpo_stage(self, rnd: int, seed: int, arm: str, pairs: Path, policy: str) -> Stage:
        s = self.spec
        train = "[" + ", ".join(f"{{name: {name}, path: {path}, media_root: {root}}}" for
                                name, path, root in self.train_sources(rnd, seed, arm, pairs)) + "]"
        where = self.dpo_folder(rnd, seed, arm)
        before = (self.spec.out / "base" if rnd == 1
                  else self.dpo_folder(rnd - 1, seed, arm)) / self.TEST_FILE
        stage = self._stage(f"dpo r{rnd} s{seed} {arm}", [
            "fit", *_configs(s.dpo_config), self.PRETRAIN, "null", "--seed_everything", str(seed),
            "--model.init_args.checkpoint", policy, "--data.init_args.train", train,
            "--run.name", f"loop_dpo_{arm}"], where / self.TEST_FILE,
            run_output=self.TEST_FILE)
        stage.pairs, stage.start = pairs, (policy, before)
        return stage

    def _stage(self, name, args, output, run_output=None) -> Stage:
        slug = name.replace(" ", "_")
        return Stage(name, args, Path(output), self.spec.out / "logs" / f"{slug}.txt",
                     run_output=run_output)

    # -- running ---------------------------------------------------------------------------
    def plan(self) -> list[Stage]:
        """Every stage in order (round 1's candidates and pairs come before its DPO)."""
        s = self.spec
        stages = [*self.first_stages(), self.base_stage()]
        stages[-1].depends = ("policy", "dpo_config")
        for rnd in range(1, s.rounds + 1):
            for seed in s.seeds:
                shared = None
                for arm in s.arms:
                    judged = () if arm in JUDGE_FREE_ARMS else ("judge", "pair_from")
                    pairing = ("construct_config", *judged) if arm != "oracle" else ()
                    # an aligned policy's answers depend on everything that aligned it
                    before = () if rnd == 1 else (*pairing, "dpo_config")
                    policy = (s.policy if rnd == 1
                              else str(self.dpo_folder(rnd - 1, seed, arm) / "policy"))
                    if rnd == 1 and shared is None:
                        shared = self.candidates_stage(1, seed, arm, policy)
                        shared.depends = s.answers
                        stages.append(shared)
                    cand = shared if rnd == 1 else self.candidates_stage(rnd, seed, arm, policy)
                    if rnd > 1:
                        cand.depends = (*s.answers, *before)
                        stages.append(cand)
                    pairs = cand.output.parent
                    if arm != "oracle":
                        p = self.pairs_stage(rnd, seed, arm, pairs)
                        p.depends = tuple(dict.fromkeys((*cand.depends, *pairing)))
                        stages.append(p)
                        pairs = p.output.parent
                    dpo = self.dpo_stage(rnd, seed, arm, pairs, policy)
                    dpo.depends = tuple(dict.fromkeys((*s.answers, *before, *pairing,
                                                       "dpo_config")))
                    stages.append(dpo)
        return stages

    def run(self, dry_run: bool = False, echo=print) -> dict:
        self.stages = self.plan()
        self._theirs = self.spec.shared_settings() if self.spec.share is not None else {}
        todo = [st for st in self.stages if not st.done]
        echo(f"ur loop: {len(self.stages)} stages, {len(todo)} to run, into {self.spec.out}")
        for k, st in enumerate(self.stages, 1):
            if st.done:
                st.skipped = True
                continue
            other = self._shared_output(st)
            if other is not None:
                echo(f"[{k}/{len(self.stages)}] {st.name}: shared with {other}")
                if not dry_run:
                    st.output.parent.parent.mkdir(parents=True, exist_ok=True)
                    st.output.parent.symlink_to(other.resolve(), target_is_directory=True)
                    st.shared, st.skipped = str(other), True
                continue
            if not dry_run and st.pairs is not None and pair_count(st.pairs) == 0:
                keep_policy(st)
                echo(f"[{k}/{len(self.stages)}] {st.name}: no pairs in {st.pairs}; the "
                     "policy stays as it was")
                continue
            echo(f"[{k}/{len(self.stages)}] {st.name}: {st.command()}")
            if dry_run:
                continue
            self._execute(st)
            echo(f"[{k}/{len(self.stages)}] {st.name}: done in {st.seconds:.0f} s"
                 + (f" ({st.run_dir})" if st.run_dir else ""))
        return {} if dry_run else self.report()

    def _shared_output(self, st: Stage) -> Path | None:
        """The shared loop's folder holding this stage's finished output, made with the
        same settings, when this loop has nothing of its own there yet."""
        s = self.spec
        if s.share is None or not st.depends or st.output.parent.exists():
            return None
        theirs, mine = self._theirs, s.settings()
        if any(theirs.get(k) != mine[k] for k in st.depends):
            return None
        other = Path(s.share) / st.output.relative_to(s.out)
        return other.parent if other.exists() else None

    def _execute(self, st: Stage) -> None:
        st.log.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with st.log.open("w") as log:
            done = subprocess.run([sys.executable, "-m", "ur.cli", *st.args], stdout=subprocess.PIPE,
                                  stderr=log, text=True)
            log.write(done.stdout)
        st.seconds = time.monotonic() - start
        if done.returncode != 0:
            raise RuntimeError(f"stage {st.name!r} failed (exit {done.returncode}); its log: "
                               f"{st.log}\n  the command: {st.command()}")
        lines = done.stdout.strip().splitlines()
        st.run_dir = lines[-1] if lines else None
        if st.run_output is not None:  # a Lightning run: its folder's file, and its policy
            run_dir = Path(st.run_dir)
            export = run_dir / "export"
            record(st, export if export.is_dir() else None, {"run_dir": str(run_dir)},
                   run_dir / st.run_output)
        if not st.done:
            raise RuntimeError(f"stage {st.name!r} ended without writing {st.output}; its "
                               f"log: {st.log}")

    # -- figures ---------------------------------------------------------------------------
    @staticmethod
    def read_scores(path: Path) -> dict[str, float]:
        return read_answers(path)

    unit = None
    """What the gain's interval resamples, from a held-out item's id: each question."""

    def report(self) -> dict:
        s = self.spec
        base = self.read_scores(self.spec.out / "base" / self.TEST_FILE)
        cells, arms = [], {}
        for rnd in range(1, s.rounds + 1):
            for arm in s.arms:
                per_seed = []
                for seed in s.seeds:
                    dpo = self.dpo_folder(rnd, seed, arm)
                    aligned = self.read_scores(dpo / self.TEST_FILE)
                    pairs = (self.candidates_folder(rnd, seed, arm) if arm == "oracle"
                             else self.folder(rnd, seed) / f"pairs_{arm}")
                    run = json.loads((dpo / "run.json").read_text())
                    cell = {"round": rnd, "arm": arm, "seed": seed,
                            "policy_kept": bool(run.get("no_pairs")),
                            **paired_gain(base, aligned, self.unit),
                            **pair_figures(pairs / "summary.json")}
                    cells.append(cell)
                    per_seed.append((cell, aligned))
                arms[f"round{rnd}/{arm}"] = over_seeds(base, per_seed, self.unit)
        report = {"metric": s.metric,
                  "base": {"accuracy": statistics.fmean(base.values()), "questions": len(base)},
                  "settings": s.settings(), "arms": arms, "cells": cells,
                  "stages": [{"name": st.name, "command": st.command(), "log": str(st.log),
                              "output": str(st.output), "run_dir": st.run_dir,
                              "seconds": st.seconds, "skipped": st.skipped,
                              "shared": st.shared}
                             for st in self.stages]}
        write_json_atomic(s.out / "loop.json", report)
        return report


class GenerationLoop(Loop):
    """The loop for a text-to-image or text-to-video generator (:class:`GenerationLoopSpec`):
    its samples of training captions, the judge's pairs of them, Diffusion-DPO, and the
    oracle's caption alignment of fresh samples of the held-out captions."""

    spec: GenerationLoopSpec
    TEST_FILE = "test_samples.jsonl"

    def first_stages(self) -> list[Stage]:
        return []  # the captions come from the world's grammar: nothing to write first

    PRETRAIN = "--pretrain_generator"

    def candidates_stage(self, rnd: int, seed: int, arm: str, policy: str) -> Stage:
        s = self.spec
        where = self.candidates_folder(rnd, seed, arm)
        return self._stage(f"candidates r{rnd} s{seed}" + ("" if rnd == 1 else f" {arm}"),
                           ["construct", "oracle-generation", "--generator", policy, "--kind",
                            s.kind, "--out", str(where), "--prompts", str(s.captions), "--n",
                            str(s.n), "--seed", str(seed + 1000 * (rnd - 1)),
                            "--sample-steps", str(s.sample_steps)],
                           where / "summary.json")

    def media_root_args(self) -> list[str]:
        return []  # the samples lie in the candidates' folder: the construction's default

    def train_sources(self, rnd: int, seed: int, arm: str, pairs: Path
                      ) -> list[tuple[str, Path, Path]]:
        """The oracle's pairs or the judge's, in the task's schema; their media (clips)
        lie with the samples."""
        from ur.construct.oracle_generation import PAIR_FILES as ORACLE_FILES
        from ur.construct.predict import PAIR_FILES as JUDGE_FILES
        from ur.data.sources import PAIR_SCHEMAS

        task = f"{self.spec.kind}_generation"
        name = ORACLE_FILES[self.spec.kind] if arm == "oracle" else JUDGE_FILES[task]
        return [(PAIR_SCHEMAS[task], pairs / name, self.candidates_folder(rnd, seed, arm))]

    @staticmethod
    def read_scores(path: Path) -> dict[str, float]:
        return read_samples(path)

    @staticmethod
    def unit(key: str) -> str:
        """A sample's caption: its samples of other seeds are not independent of it."""
        return key.rsplit("#", 1)[0]


def read_samples(path: Path) -> dict[str, float]:
    """A generator's test samples as ``{"caption#seed": oracle alignment}``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    return {f"{r['prompt']}#{r['seed']}": float(r["alignment"]) for r in rows}


def pair_count(folder: Path) -> int:
    """Pairs a construction wrote (its ``summary.json``)."""
    return int(json.loads((Path(folder) / "summary.json").read_text())["pairs"])


def record(st: Stage, policy: Path | None, run: dict, answers: Path) -> None:
    """A DPO (or test) stage's folder: ``policy`` linked to the policy it ends with,
    ``run.json`` and its test answers, copied from ``answers`` into the stage's output."""
    st.output.parent.mkdir(parents=True, exist_ok=True)
    link = st.output.parent / "policy"
    if policy is not None and not link.exists():
        link.symlink_to(Path(policy).resolve())
    write_json_atomic(st.output.parent / "run.json", run)
    st.output.write_bytes(Path(answers).read_bytes())


def keep_policy(st: Stage) -> None:
    """A DPO stage without pairs: its policy and test answers are the starting ones."""
    policy, answers = st.start
    record(st, Path(policy), {"run_dir": None, "no_pairs": True}, answers)
    st.skipped = True


def read_answers(path: Path) -> dict[str, float]:
    """A run's test answers as ``{question id: oracle score}``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    return {r["id"]: float(r["oracle_score"]) for r in rows}


def unit_means(gains: dict[str, float], unit=None):
    """Per-item ``gains`` averaged within each unit (``unit(item id)``; by default each
    item is its own), as a tensor: what the bootstrap resamples."""
    import torch

    units: dict[str, list[float]] = {}
    for key in sorted(gains):
        units.setdefault(unit(key) if unit else key, []).append(gains[key])
    return torch.tensor([statistics.fmean(v) for v in units.values()])


def paired_gain(base: dict[str, float], aligned: dict[str, float], unit=None
                ) -> dict[str, float]:
    """The aligned policy's accuracy and its gain over the base on the same held-out items,
    with a 95% bootstrap interval of the gain that resamples the items, or the units
    ``unit(item id)`` groups them in (a caption's samples of several seeds are one unit:
    they are not independent)."""
    from ur.reward.metrics import mean_with_interval

    if set(base) != set(aligned):
        raise ValueError(f"the base was tested on {len(base)} items and the aligned policy on "
                         f"{len(aligned)}: not the same held-out items (questions, or "
                         "captions and seeds)")
    gain = unit_means({i: aligned[i] - base[i] for i in base}, unit)
    return {"accuracy": statistics.fmean(aligned.values()), **mean_with_interval("gain", gain)}


def pair_figures(summary: Path) -> dict[str, float]:
    """Pairs and their oracle agreement, per task, from a construction's summary."""
    s = json.loads(Path(summary).read_text())
    if "tasks" in s:  # the judge's construction
        out = {"pairs": s["pairs"]}
        for task, f in s["tasks"].items():
            out[f"pairs/{task}"] = f["pairs"]
            for key in ("oracle_agreement", "oracle_chosen_mean"):
                if key in f:
                    out[f"{key}/{task}"] = f[key]
        return out
    return {"pairs": s["pairs"],
            **{f"pairs/{t}": n for t, n in s.get("pairs_by_task", {}).items()}}


def over_seeds(base: dict[str, float], per_seed: list[tuple[dict, dict]], unit=None
               ) -> dict[str, float]:
    """Mean and spread over seeds, and the gain's interval with each item's gain averaged
    over the seeds first (the items, or their ``unit``, are what is resampled)."""
    from ur.reward.metrics import mean_with_interval

    cells = [c for c, _ in per_seed]
    acc = [c["accuracy"] for c in cells]
    gains = [c["gain"] for c in cells]
    mean_gain = unit_means({i: statistics.fmean(a[i] for _, a in per_seed) - base[i]
                            for i in base}, unit)
    out = {"seeds": len(cells), "accuracy_mean": statistics.fmean(acc),
           "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
           "gain_mean": statistics.fmean(gains),
           "gain_std": statistics.stdev(gains) if len(gains) > 1 else 0.0,
           **{k.replace("gain", "gain_over_seeds"): v
              for k, v in mean_with_interval("gain", mean_gain).items()}}
    for key in sorted({k for c in cells for k in c
                       if k.startswith(("oracle_agreement/", "oracle_chosen_mean/"))}):
        values = [c[key] for c in cells if key in c]
        out[key] = statistics.fmean(values)
    return out


def table(report: dict) -> str:
    """The report as a markdown table: one row per round and arm."""
    metric = report.get("metric", "oracle accuracy")
    lines = [f"base: test {metric} {report['base']['accuracy']:.3f} "
             f"({report['base']['questions']} held-out items)", "",
             f"| round / arm | {metric} (mean ± std) | gain (mean ± std) | gain, 95% interval "
             "| pairs' oracle agreement |", "|---|---|---|---|---|"]
    for name, a in report["arms"].items():
        agree = ", ".join(f"{a[k]:.3f}" for k in sorted(a) if k.startswith("oracle_agreement/"))
        lines.append(f"| {name} | {a['accuracy_mean']:.3f} ± {a['accuracy_std']:.3f} | "
                     f"{a['gain_mean']:+.3f} ± {a['gain_std']:.3f} | "
                     f"[{a['gain_over_seeds_ci_low']:+.3f}, {a['gain_over_seeds_ci_high']:+.3f}] | "
                     f"{agree or '1 (by construction)'} |")
    return "\n".join(lines)
