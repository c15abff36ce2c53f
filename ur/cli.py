"""The ``ur`` command: Lightning stages through LightningCLI, plus plain subcommands.

``ur fit|validate|test|predict --config experiments/....yaml`` runs a LightningCLI whose
model and data are chosen by ``class_path`` in YAML (later ``--config`` files override
earlier ones). Every run gets its own folder (see :mod:`ur.runs`); its path is the last
line printed. Plain subcommands (``ur corpus ...``) are ordinary argparse programs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

LIGHTNING_STAGES = ("fit", "validate", "test", "predict")

_STAGE_HELP = {
    "fit": "train a model (e.g. ur fit --config experiments/quickstart.yaml)",
    "validate": "run the validation loop and its metrics on a checkpoint",
    "test": "compute test metrics (a judge on every task, a policy's answers by the oracle)",
    "predict": "run the model's predict step (judgments, candidates, pairs)",
}


# -- plain subcommands -------------------------------------------------------------------
def _add_corpus(sub) -> None:
    from ur.data.sources import SOURCE_NAMES

    corpus = sub.add_parser("corpus", help="make or inspect preference corpora",
                            description="Make the synthetic world, or check a source's files.")
    csub = corpus.add_subparsers(dest="corpus_command", required=True, metavar="COMMAND")
    synth = csub.add_parser(
        "synth", help="write the synthetic world (all four tasks, both forms, three splits)",
        description="Write the synthetic world to DIR in the public data sets' schemas, with "
                    "train/val/test splits and a manifest.json naming what is where. Seeded and "
                    "deterministic; rerunning with the same arguments is a no-op. The world is "
                    "built beside DIR and renamed into place when complete; a second writer of "
                    "DIR waits for the first.")
    synth.add_argument("--out", required=True, type=Path, help="output folder")
    synth.add_argument("--size", type=int, default=8000,
                       help="records in all, over tasks, forms and splits (default: 8000)")
    synth.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    synth.add_argument("--difficulty", type=int, default=1,
                       help="0 = gross errors only ... higher = subtler (default: 1)")
    synth.add_argument("--image-size", type=int, default=84, help="pixels (default: 84)")
    synth.add_argument("--num-frames", type=int, default=4, help="frames per clip (default: 4)")
    synth.set_defaults(func=_corpus_synth)

    check = csub.add_parser(
        "check", help="load every record of a source and its media; report counts and problems",
        description="Load every record of SOURCE at PATH and decode its media. Strict by "
                    "default: lists every problem (file, row, field) as a BAD line and exits 1 "
                    "if there is any. --skip-bad exits 0 and counts them. For a synthetic "
                    "world ('manifest'), a val or test record that uses the image or video "
                    "file of a train record is a problem too: the held-out splits would "
                    "measure memory. One whose media have the bytes of a train record's "
                    "under another name is a WARN line: a copy, or two media that happen "
                    "to be equal (the world's blank 'no shape' frames are). An id that "
                    "several rows of one source use is a WARN line and changes neither the "
                    "exit code nor the counts: each row is still read and trained on as "
                    "its own record, and public data sets repeat ids (a prompt's id on each "
                    "of its pairs), but messages, written pairs and construction's resume "
                    "(prompts done by id) then cannot tell those rows apart.",
        epilog="sources: " + ", ".join(SOURCE_NAMES) + "; or 'manifest' with PATH a synthetic "
               "world folder (checks every entry of its manifest.json)")
    check.add_argument("source", metavar="SOURCE", choices=(*SOURCE_NAMES, "manifest"),
                       help="adapter name, or 'manifest'")
    check.add_argument("path", metavar="PATH", help="file, folder, save_to_disk folder or hub id")
    check.add_argument("--split", help="split within the source")
    check.add_argument("--media-root", type=Path, help="resolve media paths against this folder")
    check.add_argument("--skip-bad", action="store_true", help="count bad records, exit 0")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--num-frames", type=_positive_int, default=4,
                       help="frames decoded per video (default: 4)")
    check.add_argument("--no-media", action="store_true", help="check the tables only")
    check.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="adapter option, e.g. --option dimension=Overall (repeatable)")
    check.set_defaults(func=_corpus_check)


def _corpus_synth(args) -> int:
    from ur.data.synthetic.writer import read_manifest, synthesize
    from ur.io import exclusive

    def waiting(lock_file: Path):
        print(f"ur corpus synth: another process is writing {args.out} (it holds "
              f"{lock_file}); waiting for it", file=sys.stderr, flush=True)

    # The lock a training run takes when it builds its world, so that one writer at a
    # time builds the folder and the others find it built.
    try:
        with exclusive(args.out, on_busy=waiting):
            path = synthesize(args.out, size=args.size, seed=args.seed,
                              difficulty=args.difficulty, image_size=args.image_size,
                              num_frames=args.num_frames)
    except (FileExistsError, ValueError) as e:
        raise SystemExit(f"ur corpus synth: {e}") from None
    for e in read_manifest(args.out)["entries"]:
        print(f"{e['split']:5s}  {e['task']:20s} {e['form']:9s} {e['source']:21s} "
              f"{e['records']:6d}  {e['path']}")
    print(path)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parse_options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs as adapter options: a value is read as JSON when it is JSON (a
    list, a number, null) and kept as text otherwise; a pair without a key is refused."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"ur corpus check: --option takes KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, too deep, or a huge number
            out[key.strip()] = value
    return out


def _manifest_entries(world: Path) -> tuple[list[tuple[str, Path, dict, str]], list]:
    """``(source, path, options, split)`` of every usable entry of a world's
    manifest.json, and a RecordError for the manifest itself or each entry that cannot be
    used (naming the entry as its row and the key as its field): all that
    ``read_manifest`` refuses (see ``manifest_problems``), and a source no adapter reads."""
    from ur.data.records import RecordError
    from ur.data.sources import SOURCE_NAMES
    from ur.data.synthetic.writer import manifest_problems
    from ur.io import safe_join

    file = world / "manifest.json"
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], [RecordError("no manifest.json: not a world folder", file=file)]
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON
        return [], [RecordError(f"not a readable JSON file ({e})", file=file)]
    problems = manifest_problems(world, manifest)
    if any(p.row is None for p in problems):  # no list of entries
        return [], problems
    refused = {p.row for p in problems}
    found = []
    for k, entry in enumerate(manifest["entries"]):
        if k in refused:
            continue
        if entry["source"] not in SOURCE_NAMES:
            problems.append(RecordError(f"unknown source {entry['source']!r}", file=file,
                                        row=k, field="source"))
        else:
            found.append((entry["source"], safe_join(world, entry["path"]), {}, entry["split"]))
    return found, sorted(problems, key=lambda p: p.row)


class _RepeatedIds:
    """Ids that more than one row of a source uses. Records that one row yields share
    its location and are not repeats of each other."""

    def __init__(self):
        self.rows: dict[tuple, dict[tuple, None]] = {}

    def add(self, source_index: int, record) -> None:
        key = (source_index, record.source, record.id)
        self.rows.setdefault(key, {})[(record.file, record.row)] = None

    def warnings(self) -> list[dict]:
        out = []
        for (_, source, rid), rows in self.rows.items():
            if len(rows) > 1:
                where = list(rows)
                out.append({"file": where[0][0], "rows": [list(w) for w in where],
                            "field": "id",
                            "warning": f"id {rid!r} of {source} is used by {len(where)} rows"})
        return out


class _SharedMedia:
    """Images and videos that a train record and a record of another split both use,
    found by path and, when ``by_content``, by a hash of their bytes (a copy under
    another name). A clip held as frame files is one video: its frame paths and the
    bytes of all its frames."""

    def __init__(self, by_content: bool):
        self.by_content = by_content
        self.train: dict[tuple, tuple] = {}
        self.held_out: list[tuple] = []
        self._digests: dict[str, str | None] = {}

    def _file_digest(self, path: str) -> str | None:
        import hashlib

        if path not in self._digests:
            try:
                with open(path, "rb") as fh:
                    self._digests[path] = hashlib.file_digest(fh, "blake2b").hexdigest()
            except OSError:  # the media check reports the file
                self._digests[path] = None
        return self._digests[path]

    def _keys(self, media) -> list[tuple]:
        """``("path", ...)`` and ``("content", ...)`` keys of one media reference."""
        import hashlib

        from ur.data.media import frame_files

        if media.data is not None:
            return [("content", hashlib.blake2b(media.data).hexdigest())]
        files = frame_files(media) if media.kind == "frames" else [media.path]
        keys = [("path", "\x1e".join(files))]
        if self.by_content:
            digests = [self._file_digest(f) for f in files]
            if None not in digests:
                keys.append(("content", "\x1e".join(digests)))
        return keys

    def add(self, split: str | None, record) -> None:
        from ur.data.records import RecordError

        if split is None:
            return
        for m in record.media:
            try:
                keys = self._keys(m)
            except RecordError:  # the media check reports it
                continue
            what = "image" if m.kind == "image" else "video"
            where = (record.file, record.row, m.field, what, m.describe(), split)
            if split == "train":
                for key in keys:
                    self.train.setdefault(key, where)
            else:
                self.held_out.append((keys, where))

    def problems(self) -> list:
        """Held-out records that use a train record's media file: the splits share it."""
        from ur.data.records import RecordError

        return [RecordError(f"{split} record uses the same {what} as {train}: the splits "
                            "share media", file=file, row=row, field=field)
                for (file, row, field, what, split), train in self._matches("path")]

    def warnings(self) -> list[dict]:
        """Held-out records whose media have the bytes of a train record's under another
        name: a copy, or two media that happen to be equal (a blank frame)."""
        return [{"file": file, "row": row, "field": field,
                 "warning": f"{split} record's {what} has the bytes of {train}"}
                for (file, row, field, what, split), train in self._matches("content")]

    def _matches(self, wanted: str) -> list[tuple]:
        out = {}
        for keys, (file, row, field, what, _, split) in self.held_out:
            if any((kind, value) in self.train for kind, value in keys
                   if kind == "path" and wanted == "content"):
                continue  # the same file: a problem, not a warning
            for kind, value in keys:
                if kind != wanted or (kind, value) not in self.train:
                    continue
                t_file, t_row, t_field, _, t_media, _ = self.train[(kind, value)]
                train = f"train record {t_file}, row {t_row}, field {t_field!r}"
                if kind == "content":
                    train = f"{t_media} of {train}"
                out.setdefault((file, row, field, t_file, t_row), ((file, row, field, what,
                                                                     split), train))
                break
        return list(out.values())


def check_corpus(source: str, path, *, split=None, media_root=None, options=None,
                 num_frames: int = 4, decode_media: bool = True, progress: bool = False) -> dict:
    """Load every record (and by default decode its media); counts and problems.

    Each problem is reported once, with the file, row and field it concerns: a record
    error, an unreadable shard or file, a broken manifest entry, or media that do not
    decode (a row that several records share is reported once per distinct problem).
    ``shared_media`` lists each record of a world's val or test split that uses an image
    or video file of a train record, ``identical_media`` (warnings) each whose media
    have the bytes of a train record's under another name (when media are decoded);
    ``repeated_ids`` each id that several rows of one source use."""
    from ur.data.collate import load_record_media
    from ur.data.records import RecordError
    from ur.data.sources import read_source

    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if source == "manifest":
        entries, problems = _manifest_entries(Path(path))
    else:
        entries, problems = [(source, path, options or {}, None)], []
    by_task, by_form, by_label = Counter(), Counter(), Counter()
    bad, good = {}, 0
    ids, shared = _RepeatedIds(), _SharedMedia(by_content=decode_media)

    def report(error):
        p = error.as_dict()
        bad.setdefault((p["file"], str(p["row"]), p["field"], p["error"]), p)

    for p in problems:
        report(p)
    items = ((k, part, item) for k, (name, p, opts, part) in enumerate(entries)
             for item in read_source(name, p, split=split, media_root=media_root, **opts))
    if progress:
        from rich.progress import Progress, SpinnerColumn, TextColumn

        bar = Progress(SpinnerColumn(), TextColumn("{task.description} {task.completed}"),
                       transient=True, console=_stderr_console())
    for k, part, item in _with_progress(items, bar if progress else None):
        if isinstance(item, RecordError):
            report(item)
            continue
        ids.add(k, item)
        if decode_media:
            try:
                load_record_media(item, num_frames)
            except RecordError as e:
                report(e)
                continue
        shared.add(part, item)
        good += 1
        by_task[item.task] += 1
        by_form[item.form] += 1
        if item.form == "pairwise":
            by_label[item.label] += 1
    return {"records": good, "by_task": dict(by_task), "by_form": dict(by_form),
            "by_label": {k: by_label.get(k, 0) for k in ("first", "second", "tie")},
            "bad": list(bad.values()),
            "shared_media": [e.as_dict() for e in shared.problems()],
            "identical_media": shared.warnings(),
            "repeated_ids": ids.warnings()}


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _with_progress(items, bar):
    if bar is None:
        yield from items
        return
    with bar:
        task = bar.add_task("records", total=None)
        for item in items:
            yield item
            bar.advance(task)


def _where(p: dict) -> str:
    """``file, row R, field 'F'`` of a reported problem, or ``file, rows R1, R2`` / ``f1,
    row R1; f2, row R2`` of the rows that share an id."""
    rows = p.get("rows") or [(p["file"], p["row"])]
    if len({f for f, _ in rows}) == 1:
        listed = ", ".join(str(r) for _, r in rows if r is not None)
        places = ", ".join(x for x in (str(rows[0][0]), listed and
                                       f"row{'s' * (len(rows) > 1)} {listed}") if x)
    else:
        places = "; ".join(f"{f}, row {r}" for f, r in rows)
    return places + (f", field {p['field']!r}" if p["field"] else "")


def _corpus_check(args) -> int:
    report = check_corpus(args.source, args.path, split=args.split, media_root=args.media_root,
                          options=_parse_options(args.option), num_frames=args.num_frames,
                          decode_media=not args.no_media,
                          progress=not args.json and sys.stderr.isatty())
    report["skipped" if args.skip_bad else "failed"] = len(report["bad"])
    problems = len(report["bad"]) + len(report["shared_media"])
    if args.json:
        print(json.dumps(report))
    else:
        for p in report["bad"] + report["shared_media"]:
            print(f"BAD  {_where(p)}: {p['error']}")
        for p in report["identical_media"] + report["repeated_ids"]:
            print(f"WARN {_where(p)}: {p['warning']}")
        print(f"records: {report['records']}  bad: {len(report['bad'])}  shared media: "
              f"{len(report['shared_media'])}  identical media: "
              f"{len(report['identical_media'])}  repeated ids: {len(report['repeated_ids'])}")
        for key in ("by_task", "by_form", "by_label"):
            print(f"{key[3:]:6s}: " + ", ".join(f"{k}={v}" for k, v in report[key].items()))
    if problems and not args.skip_bad:
        print(f"ur corpus check: {problems} problem(s); fix them or pass --skip-bad",
              file=sys.stderr)
        return 1
    return 0


def _add_judge(sub) -> None:
    from ur.data.records import TASKS

    judge = sub.add_parser("judge", help="one-off judgments from a checkpoint (JSON out)",
                           description="Rank two candidates or score one with a judge "
                                       "checkpoint (a Hugging Face folder, e.g. a run's "
                                       "export/, or a hub id). Prints one JSON object.")
    jsub = judge.add_subparsers(dest="judge_command", required=True, metavar="COMMAND")
    for name, helptext in (("rank", "which of two candidates is better"),
                           ("score", "a score for one candidate")):
        p = jsub.add_parser(name, help=helptext, description=(
            "Generation tasks: candidates are image/video paths (a folder of frames is a "
            "video). Understanding tasks: candidates are answer texts, and --media is the "
            "image or video they answer about."))
        p.add_argument("--checkpoint", required=True, help="judge folder or hub id")
        p.add_argument("--task", required=True, choices=TASKS)
        p.add_argument("--prompt", required=True, help="the caption or the question")
        p.add_argument("candidates", nargs=2 if name == "rank" else 1, metavar="CANDIDATE")
        p.add_argument("--media", help="image or video the answers are about (understanding)")
        p.add_argument("--mode", choices=("fast", "generate"), default="generate")
        p.add_argument("--num-frames", type=int, default=4)
        p.add_argument("--trust-remote-code", action="store_true",
                       help="run code shipped with the checkpoint (off by default)")
        if name == "rank":
            p.add_argument("--both-orders", action="store_true",
                           help="judge both orders and combine (cancels position bias)")
            p.add_argument("--pair-from", choices=("verdict", "points", "both"),
                           default="verdict",
                           help="decide from the pairwise verdict, from two pointwise scores "
                                "(one per candidate, on the task's scale), or both averaged")
        else:
            p.add_argument("--scale", type=float, nargs=2, default=(1, 5), metavar=("LOW", "HIGH"))
        p.set_defaults(func=_judge)


def _judge(args) -> int:
    from dataclasses import asdict

    from ur.reward.judge import Judge

    judge = Judge.from_pretrained(args.checkpoint, mode=args.mode, num_frames=args.num_frames,
                                  trust_remote_code=args.trust_remote_code,
                                  both_orders=getattr(args, "both_orders", False),
                                  pair_from=getattr(args, "pair_from", "verdict"))
    if args.judge_command == "rank":
        result = judge.rank(args.task, args.prompt, *args.candidates, media=args.media)
    else:
        result = judge.score(args.task, args.prompt, args.candidates[0], media=args.media,
                             scale=tuple(args.scale))
    print(json.dumps(asdict(result)))
    return 0 if result.parsed else 3


EXPORTABLE = {"judge": ("ur.reward.sft", "RewardSFTModule"),
              "policy": ("ur.align.vlm_dpo", "VLMDPOModule"),
              "generator": ("ur.align.diffusion_dpo", "DiffusionDPOModule")}


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a trained judge, aligned policy or aligned "
                                      "generator as a Hugging Face / diffusers folder",
                       description="Load a Lightning checkpoint of a judge (RewardSFTModule), "
                                   "of a DPO policy (VLMDPOModule) or of a Diffusion-DPO "
                                   "generator (DiffusionDPOModule) (a .ckpt file, or a run "
                                   "folder: its checkpoints/last.ckpt) and save model + "
                                   "processor with save_pretrained, LoRA merged on request "
                                   "(a generator: the whole diffusers pipeline, LoRA merged). "
                                   "`ur fit` already exports to <run>/export. Code shipped "
                                   "with a checkpoint never runs here. The folder is written "
                                   "beside --out and renamed into place when complete.")
    p.add_argument("checkpoint", help="a .ckpt file or a run folder")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder: new or empty, unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds anything (once the new folder is complete)")
    p.add_argument("--module", choices=("auto", *EXPORTABLE), default="auto",
                   help="what the checkpoint holds (auto: the run's config.yaml says, else a "
                        "judge)")
    p.add_argument("--merge-lora", action=argparse.BooleanOptionalAction, default=True,
                   help="merge LoRA adapters into the weights (default: yes)")
    p.add_argument("--base", default=None,
                   help="the base model the run started from (a folder, or a hub id, which "
                        "is then downloaded); default: the folder the checkpoint names, "
                        "which must exist here (a hub id named in a file is never fetched)")
    p.set_defaults(func=_export)


def _exported_module(ckpt: Path, choice: str) -> str:
    """Which of EXPORTABLE the checkpoint holds: as asked, or as the run's config.yaml
    names it (only these classes, whatever the file says)."""
    if choice != "auto":
        return choice
    config = ckpt.parent.parent / "config.yaml"
    if config.exists():
        import yaml

        class_path = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get(
            "class_path", "")
        for name, (module, cls) in EXPORTABLE.items():
            if class_path == f"{module}.{cls}":
                return name
        raise SystemExit(f"ur export: {config} names model {class_path!r}, which ur export "
                         f"does not write; it writes {', '.join(EXPORTABLE)}")
    return "judge"


def _export(args) -> int:
    import importlib

    from ur.models.export import refuse_to_replace, save_hf
    from ur.runs import load_module

    ckpt = Path(args.checkpoint)
    if ckpt.is_dir():
        ckpt = ckpt / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise SystemExit(f"ur export: no checkpoint at {ckpt}")
    if ckpt.resolve().is_relative_to(args.out.resolve()):
        raise SystemExit(f"ur export: --out {args.out} holds the checkpoint {ckpt}; choose "
                         "another folder")
    try:
        if not args.overwrite:  # before the checkpoint loads, which can take minutes
            refuse_to_replace(args.out)
        module_name, cls_name = EXPORTABLE[_exported_module(ckpt, args.module)]
        cls = getattr(importlib.import_module(module_name), cls_name)
        # Weights only, remote code off, a base from this machine or this command line.
        module = load_module(cls, ckpt, "ur export", base=args.base)
        if hasattr(module, "pipe"):  # a generator: a diffusers folder, LoRA merged
            print(module.export(args.out, overwrite=args.overwrite))
        else:
            print(save_hf(module.model, module.processor, args.out,
                          merge_lora=args.merge_lora, overwrite=args.overwrite))
    except FileExistsError as e:
        raise SystemExit(f"ur export: {e}; pass --overwrite to replace it") from None
    return 0


def _add_models(sub) -> None:
    models = sub.add_parser("models", help="build local model checkpoints",
                            description="Build checkpoints locally from configs (no download).")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    p = msub.add_parser("tiny", help="build and pretrain a tiny VLM on the synthetic world",
                        description="Build a tiny real checkpoint (tokenizer trained on the "
                                    "world's text, chat template, processor) and pretrain it "
                                    "on the world's scene descriptions and Q&A. Cached: a "
                                    "folder built from the same settings is reused.")
    p.add_argument("--family", choices=("qwen2_vl", "qwen2_5_vl", "llava_onevision"),
                   default="qwen2_vl")
    p.add_argument("--out", type=Path, help="default: checkpoints/tiny/<family>-world")
    p.add_argument("--world", type=Path, default=Path("data/world"), help="world folder")
    p.add_argument("--world-size", type=int, default=8000)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_models_tiny)

    p = msub.add_parser(
        "generator", help="build and pretrain a tiny text-to-image or text-to-video generator",
        description="Build a tiny pixel-space diffusers pipeline (a transformer denoiser, a "
                    "CLIP text encoder, a word-level tokenizer of the world's captions) and "
                    "pretrain it on scenes rendered from the synthetic world's captions, the "
                    "held-out captions excepted. The oracle scores samples of the held-out "
                    "captions as it trains (pretrain_run/metrics.json, samples.png). Cached: "
                    "a folder built from the same settings is reused.")
    p.add_argument("--kind", choices=("image", "video"), default="image")
    p.add_argument("--prediction", choices=("flow", "epsilon", "v"), default="flow",
                   help="the denoiser's target (default: flow; an epsilon clip generator "
                        "samples noise, docs/generators.md)")
    p.add_argument("--out", type=Path, help="default: checkpoints/tiny/t2i-world or t2v-world")
    p.add_argument("--steps", type=int, default=1500, help="pretraining steps (default: 1500)")
    p.add_argument("--batch-size", type=int, help="default: 32 for image, 8 for video")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_models_generator)


def _models_tiny(args) -> int:
    from ur.pretrain import TinyVLMSpec, ensure_tiny_vlm

    spec = TinyVLMSpec(family=args.family, hidden_size=args.hidden_size,
                       num_layers=args.num_layers, pretrain_steps=args.pretrain_steps,
                       world={"out": str(args.world), "size": args.world_size, "seed": args.seed,
                              "difficulty": 1},
                       seed=args.seed)
    print(ensure_tiny_vlm(args.out or Path("checkpoints/tiny") / f"{args.family}-world", spec))
    return 0


def _models_generator(args) -> int:
    from ur.pretrain import TinyGeneratorSpec, ensure_tiny_generator

    video = args.kind == "video"
    spec = TinyGeneratorSpec(kind=args.kind,
                             prediction=args.prediction,
                             steps=args.steps, batch_size=args.batch_size or (8 if video else 32),
                             seed=args.seed)
    out = args.out or Path("checkpoints/tiny") / ("t2v-world" if video else "t2i-world")
    print(ensure_tiny_generator(out, spec))
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run a W&B sweep file locally, no W&B server needed",
        description="Run the runs of a W&B sweep file (the one `wandb sweep FILE` takes), one "
                    "after another or --jobs at a time, each as the command wandb's agent "
                    "would build. grid: every "
                    "combination; random: --count draws (seeded by the file and --seed); bayes: "
                    "sampled as random search (the Bayesian model lives on the W&B server). "
                    "Finished runs are recorded in <root>/sweeps/<sweep>.jsonl; rerunning "
                    "runs only what is missing. One sweep of a ledger runs at a time; "
                    "stopping it (Ctrl-C, SIGTERM) stops its runs too.")
    p.add_argument("file", type=Path, help="sweep YAML (experiments/sweeps/...)")
    p.add_argument("--count", type=int, help="random/bayes: runs to draw; grid: the first N")
    p.add_argument("--seed", type=int, default=0, help="seed of random draws (default: 0)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side, sharing the cores (default: 1)")
    p.add_argument("--root", type=Path, default=Path("checkpoints"),
                   help="where the ledger and run logs go (default: checkpoints)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.set_defaults(func=_sweep)


def _sweep(args) -> int:
    import shlex

    from ur import sweeps

    try:
        if args.dry_run:
            done = sweeps.finished(sweeps.ledger_path(args.file, args.root))
            for run in sweeps.plan(args.file, count=args.count, seed=args.seed):
                mark = "done " if run.key in done else "todo "
                print(mark + shlex.join(run.command))
            return 0
        results = sweeps.run_sweep(args.file, count=args.count, seed=args.seed, jobs=args.jobs,
                                   root=args.root)
    except sweeps.SweepError as e:
        raise SystemExit(f"ur sweep: {e}") from None
    except sweeps.SweepStopped as e:
        print(f"ur sweep: {e}; the runs in flight were stopped; the same command runs what "
              "is missing", file=sys.stderr)
        return 128 + e.signum
    failed = [r for r in results if r["returncode"] != 0]
    return 1 if failed else 0


def _add_results(sub) -> None:
    p = sub.add_parser(
        "results", help="gather run folders into one table (CSV or markdown)",
        description="Find every run folder under DIR... and print one row per run: arm (the "
                    "tasks it trained on), seed, sweep parameters, and the stage's metrics per "
                    "task, accuracies and correlations with their 95% bootstrap interval "
                    "(markdown: '0.80 [0.76, 0.84]'; CSV: the bounds as <metric>_ci_low and "
                    "<metric>_ci_high columns). With --summary METRIC, the ablation table "
                    "instead: arms x tasks, mean ± std over seeds (number of seeds). With "
                    "--kinds, pairwise accuracy per kind of difference (synthetic world: "
                    "wrong_colour, blur, ... for generation; what the question asks for "
                    "understanding): task and kind x arms, mean ± std over seeds. With "
                    "--gains METRIC, each arm's gain over the arm trained on the task alone, "
                    "with a 95%% interval over seeds (Welch's t). "
                    "--wandb ENTITY/PROJECT reads the W&B API instead.")
    p.add_argument("dirs", nargs="*", type=Path, metavar="DIR", help="run folders or their parents")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from the W&B API")
    p.add_argument("--stage", default="test", help="metrics of this stage (default: test)")
    p.add_argument("--summary", metavar="METRIC",
                   help="e.g. pair_acc_diff or point_spearman: arms x tasks, mean ± std over "
                        "seeds (number of seeds)")
    p.add_argument("--kinds", action="store_true",
                   help="pair_acc_diff (or --summary's metric) per kind of difference: task "
                        "and kind x arms, mean ± std over seeds (number of seeds)")
    p.add_argument("--gains", metavar="METRIC",
                   help="e.g. pair_acc_diff: arms x tasks, the arm's mean minus the task-alone "
                        "arm's, with its 95%% interval over seeds")
    p.add_argument("--format", choices=("csv", "markdown"), default="markdown")
    p.add_argument("--out", type=Path, help="write here instead of printing")
    p.set_defaults(func=_results)


def _results(args) -> int:
    from ur import results

    if args.wandb:
        df = results.collect_wandb(args.wandb, stage=args.stage)
    elif args.dirs:
        try:
            df = results.collect(list(args.dirs), stage=args.stage)
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from None
    else:
        raise SystemExit("ur results: give run folders (DIR...) or --wandb ENTITY/PROJECT")
    if df.empty:
        raise SystemExit(f"ur results: no run with {args.stage} metrics found")
    summarised = bool(args.summary or args.kinds or args.gains)
    try:
        if args.gains:
            df = results.gain_intervals(df, args.gains)
        elif args.kinds:
            df = results.formatted(results.kinds_table(df, args.summary or "pair_acc_diff"))
        elif args.summary:
            df = results.formatted(results.synergy_table(df, args.summary))
    except KeyError as e:
        raise SystemExit(f"ur results: {e.args[0]}") from None
    if not summarised and args.format == "markdown":
        df = results.with_intervals(df)
    # a signed gain stays as written ("+0.150"), not reparsed as a number
    text = (df.to_csv(index=summarised) if args.format == "csv"
            else df.to_markdown(disable_numparse=bool(args.gains)))
    if args.out:
        from ur.io import write_text_atomic

        write_text_atomic(args.out, text)
        print(args.out)
    else:
        print(text)
    return 0


def _add_construct(sub) -> None:
    construct = sub.add_parser(
        "construct", help="build DPO pairs from a policy's own samples",
        description="Build preference pairs from a policy's own samples, written in the DPO "
                    "pair schemas that `ur.align` reads.")
    csub = construct.add_subparsers(dest="construct_command", required=True, metavar="COMMAND")
    p = csub.add_parser(
        "oracle-pairs", help="pairs of a VLM's sampled answers, ranked by the world's oracle",
        description="Sample N answers from a VLM policy to every understanding question of a "
                    "synthetic world's split (its pairwise and pointwise understanding "
                    "records; a question asked twice about the same image or video is asked "
                    "once), score each answer with the world's oracle (1 right, 1/k for a "
                    "hedge among k values, a description's share of right attributes), and "
                    "pair the best answer (chosen) with the worst (rejected). A question is "
                    "dropped when fewer than two answers are non-empty, when all answers "
                    "score the same, or when the gap is below --min-gap; drops are counted "
                    "by reason. This is the ceiling arm of the alignment experiments: the "
                    "pairs a perfect judge would build.",
        epilog="Writes into OUT: candidates.jsonl (every sample, one question a line, with "
               "the model and sampling settings), image_pairs.jsonl (image_dpo schema), "
               "video_pairs.jsonl (sharegptvideo_dpo schema) and summary.json (questions, "
               "pairs, drops by reason, mean oracle score of the samples, share of questions "
               "with a right and a wrong answer). Media paths in the pair files are relative "
               "to the world folder: read them with media_root set to it. The folder's path "
               "is printed last.")
    p.add_argument("--policy", required=True, help="the VLM: a Hugging Face folder or hub id")
    p.add_argument("--world", required=True, type=Path, help="a written synthetic world folder")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--split", default="train", choices=("train", "val", "test"),
                   help="the world's split to ask (default: train)")
    p.add_argument("--n", type=int, default=8, help="answers sampled per question (default: 8)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature; 0 decodes greedily and needs --n 1 (default: 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus cut (default: 1.0, none)")
    p.add_argument("--top-k", type=int, default=0, help="top-k cut (default: 0, none)")
    p.add_argument("--max-new-tokens", type=int, default=48,
                   help="tokens per answer at most (default: 48)")
    p.add_argument("--max-questions", type=int,
                   help="ask a subset of this many questions, chosen with --seed (default: all)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampling and of the question subset (default: 0)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="questions per generate call, each drawn N times (default: 16)")
    p.add_argument("--num-frames", type=int,
                   help="frames read per video (default: the world's frames per clip)")
    p.add_argument("--min-gap", type=float, default=0.0,
                   help="drop a question whose best and worst oracle scores differ by less "
                        "(default: 0, any difference makes a pair)")
    p.set_defaults(func=_construct_oracle_pairs)

    p = csub.add_parser(
        "oracle-generation",
        help="pairs of a generator's own samples, best against worst by the world's oracle",
        description="Sample N images or clips from a text-to-image or text-to-video generator "
                    "for each of --prompts training captions of the synthetic world (never a "
                    "held-out one), score each with the world's oracle (caption alignment "
                    "times quality), and pair the best sample (chosen) with the worst "
                    "(rejected). A caption is dropped when its best and worst differ by less "
                    "than --min-gap. This is the ceiling arm of the generation alignment "
                    "experiments: the pairs a perfect judge would build.",
        epilog="Writes into OUT: every sample under candidates/ (a PNG per image, a folder of "
               "PNG frames per clip) and listed in candidates.jsonl with its seed and oracle "
               "score (the judge pairs the same samples: experiments/construct/"
               "generation.yaml); image_pairs.parquet (Pick-a-Pic v2 schema, images inline) "
               "or video_pairs.jsonl (VideoDPO schema, pointing to the clips' folders), "
               "each pair with both oracle scores in ur_scores; and summary.json. The "
               "folder's path is printed last.")
    p.add_argument("--generator", required=True,
                   help="the generator: a diffusers folder or hub id")
    p.add_argument("--kind", choices=("image", "video"), default="image")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--prompts", type=int, default=400,
                   help="training captions to sample (default: 400)")
    p.add_argument("--n", type=int, default=4, help="samples per caption (default: 4)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the captions and of every sample's noise (default: 0)")
    p.add_argument("--min-gap", type=float, default=0.1,
                   help="drop a caption whose best and worst scores differ by less "
                        "(default: 0.1)")
    p.add_argument("--sample-steps", type=int, default=12,
                   help="denoising steps per sample (default: 12)")
    p.add_argument("--guidance", type=float, default=3.0,
                   help="classifier-free guidance scale (default: 3.0)")
    p.add_argument("--num-frames", type=int, default=4, help="frames per clip (default: 4)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="samples drawn at once (default: 64)")
    p.set_defaults(func=_construct_oracle_generation)


def _construct_oracle_generation(args) -> int:
    from ur.construct.oracle_generation import construct_oracle_generation_pairs, summary_line

    try:
        out = construct_oracle_generation_pairs(
            args.generator, args.out, kind=args.kind, prompts=args.prompts, n=args.n,
            seed=args.seed, min_gap=args.min_gap, sample_steps=args.sample_steps,
            guidance=args.guidance, num_frames=args.num_frames, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"ur construct oracle-generation: {e}") from None
    print(summary_line(out), file=sys.stderr)
    print(out)
    return 0


def _construct_oracle_pairs(args) -> int:
    from ur.construct.oracle_pairs import construct_oracle_pairs, summary_line

    try:
        out = construct_oracle_pairs(
            args.policy, args.world, args.out, split=args.split, n=args.n,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            max_new_tokens=args.max_new_tokens, max_questions=args.max_questions,
            seed=args.seed, batch_size=args.batch_size, num_frames=args.num_frames,
            min_gap=args.min_gap)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"ur construct oracle-pairs: {e}") from None
    print(summary_line(out), file=sys.stderr)
    print(out)
    return 0


def _add_loop(sub) -> None:
    loop = sub.add_parser(
        "loop", help="the alignment loop: candidates, the judge's pairs, DPO, the oracle's check",
        description="Does the judge's data make the policy better? Chains the stages of the "
                    "alignment loop on the synthetic world, each an ordinary ur command that "
                    "leaves its own folder and is printed before it runs: the policy's "
                    "candidates (answers to a fresh world's questions, or a generator's "
                    "samples of training captions), whose oracle pairs are the ceiling arm; "
                    "the judge's pairs of the same candidates per arm (ur predict); DPO or "
                    "Diffusion-DPO on each arm's pairs (ur fit, which ends by testing on "
                    "held-out questions or captions); and the starting policy's test (ur "
                    "test). A stage whose output exists is not run again: killed, the same "
                    "command goes on from there.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arms: rank_sift (pair ranking, then point sifting: the paper's), rank, sift, "
               "random (the floor) and oracle (the ceiling).\n"
               "Writes OUT/loop.json (every stage's command, log and output; per arm and "
               "seed the pairs' oracle agreement, the test figure (oracle accuracy of the "
               "answers, or the oracle's caption alignment of fresh samples) and the gain "
               "over the base with a paired 95% interval over the held-out items; per arm "
               "mean ± std over seeds) and prints its table.")
    lsub = loop.add_subparsers(dest="loop_task", required=True, metavar="TASK")
    p = lsub.add_parser("understanding", help="image and video understanding, by VLM DPO",
                        description=loop.description, epilog=loop.epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _loop_common(p)
    p.add_argument("--policy", default="checkpoints/tiny/qwen2_vl-world",
                   help="the starting policy (default: the quickstart's base)")
    p.add_argument("--prompts", type=Path, default=Path("data/world_prompts"),
                   help="the prompt world's folder, written when missing "
                        "(default: data/world_prompts)")
    p.add_argument("--prompts-size", type=int, default=4000,
                   help="records of the prompt world; its training split is asked "
                        "(default: 4000, about 1,600 questions)")
    p.add_argument("--prompts-seed", type=int, default=1,
                   help="seed of the prompt world: not the judge's world's (default: 1)")
    p.add_argument("--n", type=int, default=8, help="answers per question (default: 8)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="the policy's sampling temperature (default: 0.7, UnifiedReward's)")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="tokens per answer at most (default: 32)")
    p.add_argument("--dpo-config", nargs="+", default=["experiments/dpo/understanding.yaml"],
                   help="the DPO stage's config files, in order (default: "
                        "experiments/dpo/understanding.yaml)")
    p.add_argument("--construct-config", nargs="+",
                   default=["experiments/construct/understanding.yaml"],
                   help="the pairs stage's config files (default: "
                        "experiments/construct/understanding.yaml)")
    p.set_defaults(func=_loop)
    g = lsub.add_parser("generation", help="text-to-image or text-to-video, by Diffusion-DPO",
                        description=loop.description, epilog=loop.epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _loop_common(g)
    g.add_argument("--kind", choices=("image", "video"), default="image",
                   help="text-to-image or text-to-video (default: image)")
    g.add_argument("--generator", default=None,
                   help="the starting generator, a diffusers folder (default: the tiny "
                        "one, checkpoints/tiny/t2i-world or t2v-world, which ur models "
                        "generator builds)")
    g.add_argument("--captions", type=int, default=400,
                   help="training captions sampled per seed (default: 400)")
    g.add_argument("--n", type=int, default=4, help="samples per caption (default: 4)")
    g.add_argument("--sample-steps", type=int, default=12,
                   help="denoising steps per sample (default: 12)")
    g.add_argument("--dpo-config", nargs="+", default=None,
                   help="the Diffusion-DPO stage's config files, in order (default: "
                        "experiments/dpo/t2i.yaml or t2v.yaml)")
    g.add_argument("--construct-config", nargs="+", default=None,
                   help="the pairs stage's config files (default: "
                        "experiments/construct/generation.yaml)")
    g.set_defaults(func=_loop)


def _loop_common(p) -> None:
    """The options every loop takes."""
    p.add_argument("--judge", required=True, nargs="+",
                   help="the judge's export folder; several make an ensemble whose "
                        "judgments are pooled (the mean of their probabilities and scores)")
    p.add_argument("--out", required=True, type=Path, help="the loop's folder")
    p.add_argument("--arms", nargs="+", default=["rank_sift", "oracle", "random"],
                   help="arms to run (default: rank_sift oracle random)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="seeds: of the candidates drawn and of DPO's pair order "
                        "(default: 0 1 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds; round r samples round r-1's aligned policy (default: 1)")
    p.add_argument("--pair-from", default="both", choices=("verdict", "points", "both"),
                   help="where pair ranking's decisions come from (default: both)")
    p.add_argument("--share", type=Path, default=None,
                   help="another loop's folder: each stage it made with the settings this "
                        "one would use (another judge: the base, the candidates, the oracle "
                        "and random arms; another --dpo-config: the candidates and the "
                        "pairs) is linked, not run again, so the comparison is made on the "
                        "same candidates")
    p.add_argument("--dry-run", action="store_true",
                   help="print the stages still to run, and run none")


def _loop(args) -> int:
    from ur.loop import GenerationLoop, GenerationLoopSpec, Loop, LoopSpec, table

    common = dict(judge=args.judge, out=args.out, arms=tuple(args.arms), seeds=tuple(args.seeds),
                  rounds=args.rounds, n=args.n, pair_from=args.pair_from, share=args.share)
    try:
        if args.loop_task == "generation":
            loop = GenerationLoop(GenerationLoopSpec(
                **common, policy=args.generator or "", kind=args.kind, captions=args.captions,
                sample_steps=args.sample_steps, dpo_config=tuple(args.dpo_config or ()),
                construct_config=tuple(args.construct_config or ())))
        else:
            loop = Loop(LoopSpec(
                **common, policy=args.policy, prompts=args.prompts,
                prompts_size=args.prompts_size, prompts_seed=args.prompts_seed,
                temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                dpo_config=tuple(args.dpo_config),
                construct_config=tuple(args.construct_config)))
        report = loop.run(dry_run=args.dry_run)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"ur loop: {e}") from None
    if report:
        print(table(report))
        print(args.out / "loop.json")
    return 0


PLAIN_COMMANDS = {"corpus": _add_corpus, "judge": _add_judge, "export": _add_export,
                  "models": _add_models, "sweep": _add_sweep, "results": _add_results,
                  "construct": _add_construct, "loop": _add_loop}


def _plain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ur",
        description="ur: unified multimodal reward models and the alignment of vision models "
                    "with them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Lightning stages (each takes --config FILE.yaml [...] and --help):\n"
               + "\n".join(f"  ur {s:9s} {h}" for s, h in _STAGE_HELP.items())
               + "\n\nEvery run writes into its own folder under checkpoints/ and prints its "
                 "path last.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage, text in _STAGE_HELP.items():
        sub.add_parser(stage, help=text, add_help=False)
    for add in PLAIN_COMMANDS.values():
        add(sub)
    return parser


# -- Lightning stages --------------------------------------------------------------------
def run_lightning(argv: list[str]) -> None:
    from ur.callbacks import UnusableData
    from ur.data.datamodule import CorpusError
    from ur.data.records import RecordError
    from ur.lightning_cli import URCLI

    try:
        # LightningCLI reads sys.argv itself when given nothing; pass argv only when it
        # differs.
        URCLI(None if argv == sys.argv[1:] else argv)
    except (CorpusError, UnusableData, RecordError) as e:
        # Bad data is the user's to fix: the message names file, row and field, and a
        # traceback would bury it.
        raise SystemExit(f"ur {argv[0] if argv else 'fit'}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] in LIGHTNING_STAGES:
        run_lightning(argv)
        return 0
    parser = _plain_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
