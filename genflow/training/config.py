"""The training config: Hydra composition of configs/, checked against a schema before any work.

Group files (``process/``, ``model/``, ``data/``, ``sampler/``) are the plain mappings that each
kind's ``build(cfg)`` takes, so they are checked by building them; ``trainer`` and the top level
are checked against the dataclasses below (types and key names).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genflow.accel import PRECISIONS
from genflow.training.loggers import LOGGERS
from genflow.utils import one_line

GROUPS = ("process", "model", "data", "sampler", "trainer")
PRECISION_ALIASES = {"off": "fp32"}  # the name before the GPU fast path


class ConfigError(ValueError):
    """A config that cannot run: one line naming what is wrong and what is allowed."""


@dataclass
class TrainerConfig:
    steps: int = 2000                 # optimizer steps in total
    batch_size: int = 128             # global: split across ranks and micro-batches
    micro_batches: int = 1            # gradient accumulation: micro-batches per rank and step
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup: int = 100                 # linear learning-rate warm-up steps
    grad_clip: float = 1.0            # max global gradient norm; 0 turns clipping off
    ema_decay: float = 0.999
    ema_warmup: bool = True
    precision: str = "fp32"           # fp32 | bf16 | fp16 (autocast; fp16 with a grad scaler)
    tf32: bool = True                 # TF32 matmuls and convolutions on CUDA (Ampere and newer)
    channels_last: bool = False       # channels-last memory format for image data (4-D); vectors ignore it
    compile: bool = False             # torch.compile the net (eager, with one line, where it cannot)
    seed: int = 0
    device: str = "auto"              # auto | cuda | cpu
    num_workers: int = 0              # DataLoader workers per rank (persistent across epochs)
    log_every: int = 50
    ckpt_every: int = 500
    sample_every: int = 1000          # 0: only at the end
    num_samples: int = 64             # images in each sample grid
    keep: int = 3                     # step checkpoints kept besides last.pt
    max_bad_steps: int = 10           # stop after this many non-finite steps in a row (fp16's first
                                      # loss-scale overflows count too: they are skipped steps)
    progress: bool = True
    logger: str = "jsonl"             # jsonl (metrics.jsonl) | tensorboard (also TensorBoard events)
    cond_drop_prob: float = 0.0       # classifier-free guidance: P(label -> null class) per example
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])  # stop at the next step, saved
    max_minutes: float = 0.0          # wall-clock budget of this start; stops like a signal when it runs out (0: none)
    requeue_exit_code: int = 0        # exit status after such a stop (e.g. 3 for a script that requeues the job)


@dataclass
class Schema:
    process: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run_dir: str | None = None


def config_dir() -> Path:
    """``$GENFLOW_CONFIG_DIR``, else the checkout's ``configs/`` (beside ``genflow/``), else the copy
    the wheel installs inside the package (``genflow/configs``)."""
    if os.environ.get("GENFLOW_CONFIG_DIR"):
        return Path(os.environ["GENFLOW_CONFIG_DIR"])
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "configs"
    return checkout if (checkout / "config.yaml").is_file() else package / "configs"


def search_path(overrides: list[str]) -> list[Path]:
    """The folders a ``hydra.searchpath=[pkg://PACKAGE,file://DIR]`` override adds (read by Hydra's parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    wanted = [item for item in overrides if item.lstrip("+").startswith("hydra.searchpath=")]
    found = [o.value() for o in OverridesParser.create().parse_overrides(wanted)]
    return [_source_dir(str(entry)) for value in found for entry in (value if isinstance(value, list) else [value])]


def _source_dir(entry: str) -> Path:
    if entry.startswith("pkg://"):
        try:
            return Path(str(resources.files(entry[len("pkg://"):])))
        except (ModuleNotFoundError, TypeError, ValueError):
            raise ConfigError(f"hydra.searchpath: no package {entry[len('pkg://'):]!r} to read configs from") from None
    return Path(entry.removeprefix("file://"))


def group_options(group: str, root: Path | None = None, extra: Sequence[Path] = ()) -> list[str]:
    """The options of ``group`` in ``root`` and the ``extra`` search path."""
    return sorted({p.stem for d in (root or config_dir(), *extra) for p in (d / group).glob("*.yaml")})


def _one_line(err: Exception) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line, led by the key at fault."""
    text = one_line(err, limit=10_000).split(" Set the environment variable HYDRA_FULL_ERROR")[0]
    message, _, rest = text.partition(" full_key: ")
    key = rest.split(" ")[0] if rest else getattr(err, "full_key", None)
    return f"{key}: {message}" if key else message


def _check_group_choices(overrides: list[str], root: Path) -> None:
    extra = search_path(overrides)
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key in GROUPS and value and value not in group_options(key, root, extra):
            raise ConfigError(f"unknown {key} option {value!r}; available: {', '.join(group_options(key, root, extra))}")


def compose(overrides: list[str], root: Path | None = None) -> dict:
    """Compose ``config.yaml`` with command-line ``overrides``; returns the checked plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    root = (root or config_dir()).resolve()
    if not (root / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in {root}; set GENFLOW_CONFIG_DIR to the configs folder")
    try:
        _check_group_choices(overrides, root)
        with initialize_config_dir(config_dir=str(root), version_base=None, job_name="genflow"):
            cfg = hydra_compose("config", overrides=overrides)
        return checked(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from None


def checked(cfg) -> dict:
    """A composed ``DictConfig`` as the checked plain dict: no ``???`` left, then ``validate``."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be given (the config marks it ???); pass {missing[0]}=VALUE")
    try:
        return validate(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None


def validate(cfg: dict) -> dict:
    """Check key names and types against ``Schema``; the plain dict with defaults filled in."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Schema), cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None
    out = OmegaConf.to_container(merged, resolve=True)
    out["trainer"]["precision"] = PRECISION_ALIASES.get(out["trainer"]["precision"], out["trainer"]["precision"])
    trainer = TrainerConfig(**out["trainer"])
    _check_trainer(trainer)
    if out["run_dir"] is not None and not str(out["run_dir"]).strip():
        raise ConfigError("run_dir is empty; give a folder path, or leave it out for runs/<data>-<process>-<model>")
    return out


def _check_finite(t: TrainerConfig) -> None:
    """Every float option is a finite number (NaN would turn a check like ``grad_clip > 0`` off)."""
    floats = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.type in ("float", float)}
    floats.update({f"betas[{i}]": b for i, b in enumerate(t.betas)})
    bad = [f"trainer.{k}={v}" for k, v in floats.items() if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: must be a finite number")


def _check_trainer(t: TrainerConfig) -> None:
    _check_finite(t)
    positive = ["steps", "batch_size", "micro_batches", "log_every", "ckpt_every", "num_samples", "max_bad_steps"]
    bad = [f"trainer.{k}={getattr(t, k)}" for k in positive if getattr(t, k) < 1]
    bad += [f"trainer.{k}={getattr(t, k)}" for k in ("warmup", "sample_every", "keep", "num_workers", "grad_clip",
                                                     "weight_decay") if getattr(t, k) < 0]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: counts must be >= 1 (warmup, sample_every, keep, num_workers, "
                          "grad_clip, weight_decay >= 0)")
    if t.logger not in LOGGERS:
        raise ConfigError(f"trainer.logger must be one of {', '.join(LOGGERS)}; got {t.logger!r}")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {', '.join(PRECISIONS)}; got {t.precision!r}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"trainer.ema_decay must be in [0, 1); got {t.ema_decay}")
    if t.lr <= 0:
        raise ConfigError(f"trainer.lr must be > 0; got {t.lr}")
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"trainer.betas must be two numbers in [0, 1); got {t.betas}")
    if not 0 <= t.seed < 2**31:
        raise ConfigError(f"trainer.seed must be in [0, 2^31); got {t.seed}")
    if not 0.0 <= t.cond_drop_prob < 1.0:
        raise ConfigError(f"trainer.cond_drop_prob must be in [0, 1); got {t.cond_drop_prob}")
    _check_stops(t)


def _check_stops(t: TrainerConfig) -> None:
    from genflow.training.stops import parse_signals

    try:
        parse_signals(t.stop_signals)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if t.max_minutes < 0:
        raise ConfigError(f"trainer.max_minutes must be >= 0 (0: no budget); got {t.max_minutes}")
    if not (t.requeue_exit_code == 0 or 3 <= t.requeue_exit_code <= 255):
        raise ConfigError(f"trainer.requeue_exit_code must be 0 or in 3..255 (1 and 2 mean a failed run and a bad "
                          f"config); got {t.requeue_exit_code}")


def trainer_config(cfg: dict) -> TrainerConfig:
    fields = {f.name for f in dataclasses.fields(TrainerConfig)}
    return TrainerConfig(**{k: v for k, v in cfg["trainer"].items() if k in fields})
