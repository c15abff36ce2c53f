"""``URCLI``: the LightningCLI behind ``ur fit|validate|test|predict``.

On top of LightningCLI it gives every run one folder (:mod:`ur.runs`) holding the
resolved config, the checkpoints, the W&B run and ``metrics.json``, and prints the
folder's path last. Under DDP the processes Lightning starts for the other ranks use
the folder rank 0 chose, so a run has one folder and one W&B run whatever its size.

It adds these options to every stage:

- ``--run.*``: name, root folder, an exact folder, W&B project and tags, free-form
  facts to record, and ``test_after_fit``;
- ``--pretrain``: build and pretrain a tiny base (:class:`ur.pretrain.TinyVLMSpec`) at
  ``model.init_args.checkpoint`` before the model is made, when it is missing.

The model's checkpoint is handed to the DataModule as its ``processor`` where the model
has a ``checkpoint`` and the DataModule a ``processor`` (a diffusion model or a pairs
DataModule without one is left alone). Subclass :class:`URCLI` to add options or
change a step of the setup: each step is a small function of the config.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from ur import runs
from ur.io import write_json_atomic
from ur.pretrain import TinyVLMSpec

RUN_DIR_ENV = "UR_RUN_DIR"
"""Set by rank 0 to its run folder; the processes Lightning starts for the other ranks
inherit it and write into the same folder."""


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config into the run folder and logs it to W&B once."""

    def __init__(self, *args, run_dir: str = ".", **kwargs):
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)
        self.run_dir = Path(run_dir)

    def save_config(self, trainer, pl_module, stage) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Replaying config.yaml starts a new run; --ckpt_path last finds this one by name.
        config = self.config.clone()
        config.run.dir = None
        self.parser.save(config, str(self.run_dir / "config.yaml"), skip_none=False,
                         overwrite=True, multifile=False)
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
    parser.add_argument("--pretrain", type=TinyVLMSpec | None, default=None,
                        help="build and pretrain a tiny base at model.init_args.checkpoint "
                             "first, when it is missing or was built from other settings "
                             "(cached; processes started together build it once)")


def is_other_rank() -> bool:
    """True in a process Lightning (or a launcher) started for a rank other than 0."""
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("LOCAL_RANK", "RANK",
                                                                   "NODE_RANK"))


def choose_run_dir(cfg: Namespace, stage: str) -> Path:
    """The run folder: rank 0's for the other ranks, ``--run.dir`` when given, the
    newest run of the name for ``--ckpt_path last``, else a new one."""
    if is_other_rank() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    configs = cfg.get("config") or []
    cfg.run.name = cfg.run.name or (Path(str(configs[-1])).stem if configs else "run")
    if cfg.run.dir:
        run_dir = Path(cfg.run.dir)
    elif cfg.get("ckpt_path") == "last":
        run_dir = runs.latest_run_dir(cfg.run.root, cfg.run.name)
        if run_dir is None:
            raise SystemExit(f"ur {stage}: --ckpt_path last, but no run of {cfg.run.name!r} "
                             f"under {cfg.run.root} has checkpoints/last.ckpt")
    else:
        run_dir = runs.new_run_dir(cfg.run.root, cfg.run.name)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def default_logger(cfg: Namespace, run_dir: Path, stage: str) -> None:
    """W&B, inside the run folder, unless the config names another logger or none."""
    trainer = cfg.trainer
    trainer.default_root_dir = str(run_dir)
    if trainer.logger in (None, True):
        trainer.logger = Namespace(
            class_path="lightning.pytorch.loggers.WandbLogger",
            init_args=Namespace(save_dir=str(run_dir), project=cfg.run.project,
                                name=f"{cfg.run.name}/{run_dir.name}", group=cfg.run.name,
                                tags=list(cfg.run.tags) or None, job_type=stage))


def default_callbacks(cfg: Namespace, run_dir: Path) -> None:
    """A checkpoint callback writing into the run folder (unless the config has one), and
    plain progress lines where no terminal shows Lightning's progress bar."""
    callbacks = list(cfg.trainer.callbacks or [])
    if not any("ModelCheckpoint" in str(getattr(c, "class_path", c)) for c in callbacks):
        callbacks.append(Namespace(
            class_path="lightning.pytorch.callbacks.ModelCheckpoint",
            init_args=Namespace(dirpath=str(run_dir / "checkpoints"), save_last="link",
                                save_top_k=1)))
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
    """``--pretrain``: the tiny base at the model's checkpoint, built once."""
    if cfg.get("pretrain") is None:
        return
    from ur.pretrain import ensure_tiny_vlm

    model = _init_args(cfg, "model")
    if model is None or "checkpoint" not in model:
        raise SystemExit("ur: pretrain: needs a model with a `checkpoint` to build the base at")
    spec = cfg.pretrain
    spec = spec if isinstance(spec, TinyVLMSpec) else TinyVLMSpec(**spec.as_dict())
    ensure_tiny_vlm(model.checkpoint, spec)


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
        if self.trainer.is_global_zero and stage != "predict":
            runs.record_metrics(self.run_dir, stage, dict(self.trainer.callback_metrics))
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
