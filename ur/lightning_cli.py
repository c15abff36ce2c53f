"""``URCLI``: the LightningCLI behind ``ur fit|validate|test|predict``.

On top of LightningCLI it gives every run one folder (:mod:`ur.runs`) holding the
resolved config, the checkpoints, the W&B run and ``metrics.json``, and prints the
folder's path last. Under DDP the processes Lightning starts for the other ranks use
the folder rank 0 chose, so a run has one folder and one W&B run whatever its size.

It adds these options to every stage:

- ``--run.*``: name, root folder, an exact folder, W&B project and tags, free-form
  facts to record, ``test_after_fit`` and how often fit saves a checkpoint;
- ``--pretrain``: build and pretrain a tiny base (:class:`ur.pretrain.TinyVLMSpec`) at
  ``model.init_args.checkpoint`` before the model is made, when it is missing;
  ``--pretrain_generator`` does the same for a tiny generator
  (:class:`ur.pretrain.TinyGeneratorSpec`).

The model's checkpoint is handed to the DataModule as its ``processor`` where the model
has a ``checkpoint`` and the DataModule a ``processor`` (a diffusion model or a pairs
DataModule without one is left alone). Subclass :class:`URCLI` to add options or
change a step of the setup: each step is a small function of the config.

``--ckpt_path`` brings weights and training state, never settings, and only from a local
file; ``--ckpt_path last`` resumes the newest run of the name (its folder, its W&B run,
its config.yaml kept) or stops when that run has no checkpoint. Values under a key that
names a secret (``hf_token``, ``api_key``, ``password``...) are saved and logged as
``***``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from ur import runs
from ur.io import write_json_atomic
from ur.pretrain import TinyGeneratorSpec, TinyVLMSpec

RUN_DIR_ENV = "UR_RUN_DIR"
"""Set by rank 0 to its run folder; the processes Lightning starts for the other ranks
inherit it and write into the same folder."""


SECRET = "***"

_SECRET_WORDS = {"token", "password", "passwd", "passphrase", "secret", "credential",
                 "credentials", "apikey"}


def names_a_secret(key: str) -> bool:
    """Whether a config key names a key, token, password or secret: ``hf_token``,
    ``WANDB_API_KEY``, ``password``, ``clientSecret`` (not ``max_new_tokens``, not a bare
    ``key`` such as a sweep's run key)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", words) if w]
    return bool(_SECRET_WORDS & set(words)) or (len(words) > 1 and words[-1] == "key")


def mask_secrets(value, key: str = ""):
    """``value`` (a config Namespace, dict or list) with each text under a key that names
    a secret replaced by ``***``: a token resolved from the environment
    (``${oc.env:HF_TOKEN}``) never lands in config.yaml or W&B."""
    if isinstance(value, Namespace):
        return Namespace(**{k: mask_secrets(v, k) for k, v in vars(value).items()})
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_secrets(v, key) for v in value)
    if isinstance(value, str) and value and names_a_secret(key):
        return SECRET
    return value


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config into the run folder and logs it to W&B, secrets masked.
    A resumed run keeps the folder's config.yaml and saves its own beside it."""

    def __init__(self, *args, run_dir: str = ".", **kwargs):
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)
        self.run_dir = Path(run_dir)

    def save_config(self, trainer, pl_module, stage) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Replaying config.yaml starts a new run; --ckpt_path last finds this one by name.
        config = mask_secrets(self.config)
        config.run.dir = None
        path = self.run_dir / "config.yaml"
        if path.exists():
            path = path.with_name(time.strftime("config-%Y%m%d-%H%M%S.yaml", time.gmtime()))
        self.parser.save(config, str(path), skip_none=False, overwrite=True, multifile=False)
        for logger in trainer.loggers:
            logger.log_hyperparams(config.as_dict())


def add_run_arguments(parser: LightningArgumentParser) -> None:
    parser.add_argument("--run.name", type=str | None, default=None,
                        help="experiment name: runs go to <run.root>/<run.name>/<id> "
                             "(default: the last --config file's name)")
    parser.add_argument("--run.root", type=str, default="checkpoints",
                        help="folder holding all run folders")
    parser.add_argument("--run.dir", type=str | None, default=None,
                        help="use this exact run folder (e.g. to resume a run)")
    parser.add_argument("--run.project", type=str, default="ur", help="W&B project name")
    parser.add_argument("--run.tags", type=list[str], default=[], help="W&B tags")
    parser.add_argument("--run.meta", type=dict, default={},
                        help="free-form facts to record with the run (e.g. sweep parameters); "
                             "saved in config.yaml and logged to W&B")
    parser.add_argument("--run.test_after_fit", type=bool, default=False,
                        help="after fit, run the test loop on the trained model")
    parser.add_argument("--run.checkpoint_minutes", type=float | None, default=10.0,
                        help="fit also saves a checkpoint (last.ckpt, for --ckpt_path last) "
                             "every N minutes of training, besides at validation; null: "
                             "only at validation")
    parser.add_argument("--pretrain", type=TinyVLMSpec | None, default=None,
                        help="build and pretrain a tiny base at model.init_args.checkpoint "
                             "first, when it is missing or was built from other settings "
                             "(cached; processes started together build it once)")
    parser.add_argument("--pretrain_generator", type=TinyGeneratorSpec | None, default=None,
                        help="build and pretrain a tiny text-to-image or text-to-video "
                             "generator at model.init_args.checkpoint first, when it is "
                             "missing or was built from other settings (cached)")


def is_other_rank() -> bool:
    """True in a process Lightning (or a launcher) started for a rank other than 0."""
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("LOCAL_RANK", "RANK",
                                                                   "NODE_RANK"))


def choose_run_dir(cfg: Namespace, stage: str) -> Path:
    """The run folder: rank 0's for the other ranks, ``--run.dir`` when given, the
    newest run of the name for ``--ckpt_path last`` (which becomes that run's last
    checkpoint), else a new one."""
    if is_other_rank() and os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])
    else:
        configs = cfg.get("config") or []
        cfg.run.name = cfg.run.name or (Path(str(configs[-1])).stem if configs else "run")
        if cfg.run.dir:
            run_dir = Path(cfg.run.dir)
        elif cfg.get("ckpt_path") == "last":
            run_dir = runs.latest_run_dir(cfg.run.root, cfg.run.name)
            if run_dir is None:
                raise SystemExit(f"ur {stage}: --ckpt_path last, but {cfg.run.root} holds no "
                                 f"run of {cfg.run.name!r}")
        else:
            run_dir = runs.new_run_dir(cfg.run.root, cfg.run.name)
        run_dir = run_dir.resolve()
    if cfg.get("ckpt_path") == "last":
        cfg.ckpt_path = str(resumable_checkpoint(run_dir, stage))
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def resumable_checkpoint(run_dir: Path, stage: str) -> Path:
    """The checkpoint ``--ckpt_path last`` resumes in ``run_dir``; a run without one
    stops the command rather than start over in (and overwrite) that folder or continue
    an older run."""
    ckpt = runs.last_checkpoint(run_dir)
    if ckpt is None:
        raise SystemExit(f"ur {stage}: --ckpt_path last: the run to resume, {run_dir}, has no "
                         "checkpoint yet (checkpoints/last.ckpt), so there is nothing to resume "
                         "there. Start a new run without --ckpt_path, or resume another run "
                         "with --run.dir FOLDER --ckpt_path last.")
    return ckpt


def check_ckpt_path(cfg: Namespace, stage: str) -> None:
    """A ``--ckpt_path`` is a local file that exists (or Lightning's ``best``/``hpc``), read
    with ``weights_only=True`` unless the command line says otherwise."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return
    runs.refuse_remote_checkpoint(ckpt, f"ur {stage}")
    if ckpt not in ("last", "best", "hpc") and not Path(ckpt).is_file():
        raise SystemExit(f"ur {stage}: --ckpt_path {ckpt}: no checkpoint file there")
    if "weights_only" in cfg and cfg.weights_only is None:
        cfg.weights_only = True


def default_logger(cfg: Namespace, run_dir: Path, stage: str) -> None:
    """W&B, inside the run folder, unless the config names another logger or none."""
    trainer = cfg.trainer
    trainer.default_root_dir = str(run_dir)
    if trainer.logger in (None, True):
        trainer.logger = Namespace(
            class_path="lightning.pytorch.loggers.WandbLogger",
            init_args=Namespace(save_dir=str(run_dir), project=cfg.run.project,
                                name=f"{cfg.run.name}/{run_dir.name}", group=cfg.run.name,
                                tags=list(cfg.run.tags) or None, job_type=stage,
                                id=runs.wandb_run_id(run_dir), resume="allow"))


def default_callbacks(cfg: Namespace, run_dir: Path) -> None:
    """A checkpoint callback writing into the run folder at validation and every
    ``run.checkpoint_minutes`` (unless the config has one), seeds per training step (so
    a resumed run draws what an uninterrupted one draws), and plain progress lines where
    no terminal shows Lightning's progress bar."""
    callbacks = list(cfg.trainer.callbacks or [])
    names = [str(getattr(c, "class_path", c)) for c in callbacks]
    if not any("ModelCheckpoint" in name for name in names):
        callbacks.append(Namespace(
            class_path="ur.callbacks.PeriodicModelCheckpoint",
            init_args=Namespace(dirpath=str(run_dir / "checkpoints"), save_last="link",
                                save_top_k=1, every_minutes=cfg.run.checkpoint_minutes)))
    if not any("StepSeeds" in name for name in names):
        callbacks.append(Namespace(class_path="ur.callbacks.StepSeeds",
                                   init_args=Namespace(seed=None)))
    if not sys.stderr.isatty():
        callbacks.append(Namespace(class_path="ur.callbacks.ProgressLines",
                                   init_args=Namespace(every=50)))
    cfg.trainer.callbacks = callbacks


def _init_args(cfg: Namespace, key: str) -> Namespace | None:
    part = cfg.get(key)
    return part.get("init_args") if isinstance(part, Namespace) else None


def share_seed(cfg: Namespace) -> None:
    """One seed per run, the data order included: a DataModule whose ``seed`` is left
    empty gets ``seed_everything``."""
    data = _init_args(cfg, "data")
    seed = cfg.get("seed_everything")
    if data is not None and "seed" in data and data.seed is None:
        data.seed = seed if type(seed) is int else 0


def link_processor(cfg: Namespace) -> None:
    """Hand the model's checkpoint to the DataModule as its processor, where both exist
    and the DataModule's is not set."""
    model, data = _init_args(cfg, "model"), _init_args(cfg, "data")
    if (model is not None and data is not None and "checkpoint" in model
            and "processor" in data and data.processor is None):
        data.processor = str(model.checkpoint)


def record_sweep(cfg: Namespace, run_dir: Path) -> None:
    """What a sweep runner says of this run, in ``run.meta`` and ``sweep.json``."""
    sweep = sweep_record()
    if sweep:
        cfg.run.meta = {**dict(cfg.run.meta or {}), "sweep": sweep}
        if not is_other_rank():
            write_json_atomic(run_dir / "sweep.json", sweep)


def sweep_record() -> dict | None:
    """``ur sweep`` passes its sweep, run key and parameters; under ``wandb agent``, the
    sweep id and the parameter file's values."""
    from ur.sweeps import SWEEP_ENV

    if os.environ.get(SWEEP_ENV):
        return json.loads(os.environ[SWEEP_ENV])
    if os.environ.get("WANDB_SWEEP_ID"):
        record = {"sweep": os.environ["WANDB_SWEEP_ID"], "key": os.environ.get("WANDB_RUN_ID")}
        path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
        if path and Path(path).exists():
            import yaml

            record["params"] = {k: v.get("value") if isinstance(v, dict) else v
                                for k, v in (yaml.safe_load(Path(path).read_text()) or {}).items()
                                if k != "wandb_version"}
        return record
    return None


def build_pretrained_base(cfg: Namespace) -> None:
    """``--pretrain`` / ``--pretrain_generator``: the tiny base at the model's
    checkpoint, built once."""
    from ur.pretrain import ensure_tiny_generator, ensure_tiny_vlm
    from ur.pretrain.cache import NotABuiltBase

    for key, cls, ensure in (("pretrain", TinyVLMSpec, ensure_tiny_vlm),
                             ("pretrain_generator", TinyGeneratorSpec, ensure_tiny_generator)):
        if cfg.get(key) is None:
            continue
        model = _init_args(cfg, "model")
        if model is None or "checkpoint" not in model:
            raise SystemExit(f"ur: {key}: needs a model with a `checkpoint` to build the base at")
        spec = cfg[key]
        spec = spec if isinstance(spec, cls) else cls(**spec.as_dict())
        try:
            ensure(model.checkpoint, spec)
        except NotABuiltBase as e:
            raise SystemExit(f"ur: {e}") from None


class URCLI(LightningCLI):
    """LightningCLI with run folders, W&B inside them, and ``--pretrain``."""

    def __init__(self, args=None, **kwargs):
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf", "default_env": False})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 0)
        super().__init__(args=args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_run_arguments(parser)

    def _parse_ckpt_path(self) -> None:
        """The model is built from the command line and its config files alone; a
        ``--ckpt_path`` brings weights and training state, never settings (LightningCLI
        would merge the checkpoint's stored hyperparameters, such as
        ``trust_remote_code`` or a hub id, into the config)."""

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        check_ckpt_path(cfg, self.subcommand)
        self.run_dir = choose_run_dir(cfg, self.subcommand)
        cfg.run.dir = str(self.run_dir)
        runs.point_wandb_at(self.run_dir)
        default_logger(cfg, self.run_dir, self.subcommand)
        if self.subcommand == "fit":
            default_callbacks(cfg, self.run_dir)
        share_seed(cfg)
        link_processor(cfg)
        record_sweep(cfg, self.run_dir)
        build_pretrained_base(cfg)
        self.save_config_kwargs["run_dir"] = str(self.run_dir)

    def _finish(self, stage: str) -> None:
        metrics = dict(self.trainer.callback_metrics)
        # predict logs nothing itself; what its callbacks report (construction's summary)
        if self.trainer.is_global_zero and (stage != "predict" or metrics):
            runs.record_metrics(self.run_dir, stage, metrics)
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                if wandb.run is not None:
                    wandb.finish()
        if self.trainer.is_global_zero:
            print(self.run_dir, flush=True)

    def after_fit(self) -> None:
        if self.config[self.subcommand].run.test_after_fit:
            if self.trainer.is_global_zero:
                runs.record_metrics(self.run_dir, "fit", dict(self.trainer.callback_metrics))
            self.trainer.test(self.model, datamodule=self.datamodule)
            self._finish("test")
        else:
            self._finish("fit")

    def after_validate(self) -> None:
        self._finish("validate")

    def after_test(self) -> None:
        self._finish("test")

    def after_predict(self) -> None:
        self._finish("predict")
