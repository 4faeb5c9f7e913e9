"""``genflow-train`` / ``python -m genflow.train`` / ``torchrun ... -m genflow.train``: Hydra-composed training.

    genflow-train process=vpsde model=unet_cifar10 data=cifar10 trainer.batch_size=128
    torchrun --nproc_per_node=4 -m genflow.train trainer.steps=100000 run_dir=runs/cifar
    genflow-train -m trainer.lr=1e-3,2e-3 process=ddpm,vpsde          # a sweep: genflow.training.sweep

Bad input ends in one line on stderr: exit 2 for a config or usage error, 1 for a failed run.
"""

from __future__ import annotations

import sys

USAGE = """usage: genflow-train [-m] [--cfg job] [GROUP=OPTION ...] [KEY=VALUE ...]

Hydra overrides of configs/config.yaml (or $GENFLOW_CONFIG_DIR/config.yaml). Groups and their options:
{groups}
Nets (model.name): {nets}.
A package's own model/NAME.yaml: 'hydra.searchpath=[pkg://PACKAGE.CONFIGS]' model=NAME.
Trainer keys (trainer.KEY=VALUE; default):
{trainer}
run_dir=PATH (default runs/<data>-<process>-<model>). Every float must be finite.
Running the same command again resumes from the newest loadable checkpoint in RUN_DIR/checkpoints/
(last.pt, or a newer step file) and removes temporary files of a writer killed mid-write.
GENFLOW_CONFIG_DIR=PATH composes another configs folder (default: the checkout's configs/, else the installed copy).
Under torchrun (or srun, without torchrun: the group forms from SLURM's variables) every worker
runs this; all share one run folder, which one trainer at a time may use (RUN_DIR/.genflow.lock).
trainer.stop_signals (SIGTERM, SIGUSR1) and trainer.max_minutes stop every rank at one step (within
about 0.5 s) with a checkpoint there; the same command resumes; see docs/slurm.md.
-m (--multirun): a Hydra sweep, e.g. -m trainer.lr=1e-3,2e-3 process=ddpm,vpsde: every combination in
  RUN_DIR/<its swept overrides> (RUN_DIR: run_dir, default runs/multirun), one after another; with
  hydra/launcher=submitit_local or submitit_slurm (pip install 'genflow[submitit]') through submitit,
  hydra.launcher.KEY=VALUE setting the launcher. Other hydra.* overrides are refused.
--cfg job: print the resolved config (every job's with -m) and exit.
trainer.logger=tensorboard also writes TensorBoard events to RUN_DIR/tensorboard (pip install 'genflow[tensorboard]').
Exit status: 0 done (or stopped so: trainer.requeue_exit_code, default 0), 2 bad config or usage,
1 a failed run or a run folder in use (one line on stderr)."""


def trainer_keys(width: int = 100) -> str:
    """Every trainer option with its default, wrapped: generated, so --help never misses one."""
    import dataclasses
    import textwrap

    from genflow.training.config import TrainerConfig

    items = [f"{f.name}={getattr(TrainerConfig(), f.name)}" for f in dataclasses.fields(TrainerConfig)]
    return textwrap.fill("  ".join(items), width, initial_indent="  ", subsequent_indent="  ",
                         break_on_hyphens=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from genflow.training.config import ConfigError, compose
    from genflow.training.sweep import check_hydra_keys

    if any(a in ("-h", "--help") for a in argv):
        return show_help(argv)
    from genflow.threads import set_cpu_threads

    set_cpu_threads()  # no more threads than this process may run at once (a busy machine: BENCHMARKS.md)
    try:
        overrides, multirun, show = split_flags(argv)
        check_hydra_keys(overrides, multirun)
        if multirun:
            return run_sweep(overrides, show)
        cfg = compose(overrides)
    except ConfigError as err:
        print(f"genflow-train: error: {err}", file=sys.stderr)
        return 2
    if show:
        print(config_yaml(cfg), end="")
        return 0
    return run_config(cfg)


def show_help(argv: list[str]) -> int:
    from genflow import nets
    from genflow.training.config import GROUPS, ConfigError, group_options, search_path

    try:
        extra = search_path([a for a in argv if not a.startswith("-")])
    except ConfigError as err:
        print(f"genflow-train: error: {err}", file=sys.stderr)
        return 2
    groups = "\n".join(f"  {g}: {', '.join(group_options(g, extra=extra))}" for g in GROUPS)
    print(USAGE.format(groups=groups, nets=nets.names(), trainer=trainer_keys()))
    return 0


def split_flags(argv: list[str]) -> tuple[list[str], bool, bool]:
    """(overrides, ``-m``, ``--cfg job``); any other flag is a usage error."""
    from genflow.training.config import ConfigError

    overrides, multirun, show = [], False, False
    args = iter(argv)
    for arg in args:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("-c", "--cfg") or arg.startswith("--cfg="):
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            if value != "job":
                raise ConfigError(f"--cfg takes job (print the resolved config and exit); got {value!r}")
            show = True
        elif arg.startswith("-"):
            raise ConfigError(f"unknown flag {arg!r}; pass Hydra overrides KEY=VALUE, -m or --cfg job (see --help)")
        else:
            overrides.append(arg)
    return overrides, multirun, show


def config_yaml(cfg: dict) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg))


def run_sweep(overrides: list[str], show: bool) -> int:
    """``-m``: every job checked first, then run here one after another (the basic launcher) or
    handed to a launcher plugin; the first failed job stops a basic sweep with its status."""
    import os

    from genflow.training import sweep
    from genflow.training.config import ConfigError, config_dir

    plan = sweep.parse(overrides)
    configs = sweep.compose_jobs(plan)
    if show:
        print("".join(f"# job {i}: {job.name}\n{config_yaml(c)}" for i, (job, c) in enumerate(zip(plan.jobs, configs))),
              end="")
        return 0
    if plan.launcher_name != "basic":
        sweep.check_launcher(plan)
        return sweep.launch(plan, config_dir().resolve())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("-m under torchrun: run one torchrun per job, or sweep with hydra/launcher=submitit_slurm")
    for i, (job, cfg) in enumerate(zip(plan.jobs, configs)):
        print(f"genflow-train: job {i + 1}/{len(configs)}: {job.name or '(no overrides)'}", file=sys.stderr, flush=True)
        code = run_config(cfg)
        if code:
            print(f"genflow-train: error: sweep stopped at job {i + 1}/{len(configs)} ({job.name})", file=sys.stderr)
            return code
    print(f"genflow-train: sweep done, {len(configs)} jobs; run folders under {plan.base}")
    return 0


def run_config(cfg: dict) -> int:
    """Train one checked config; the exit status (one line on stderr when it is not 0)."""
    from genflow.data.images import UnreadableImage
    from genflow.training import checkpoint, distributed, lock
    from genflow.training.config import ConfigError
    from genflow.training.trainer import Trainer, TrainingError
    from genflow.utils import OutputError, one_line

    try:  # everything that can be wrong with the input shows here, before any training
        trainer = Trainer(cfg)
    except OutputError as err:  # a run folder that cannot be written
        return _fail(one_line(err), 1, distributed)
    except (ConfigError, ValueError, TypeError, FileNotFoundError, ImportError) as err:
        return _fail(one_line(err), 2, distributed)
    finished = False
    try:
        run_dir = trainer.fit()
        finished = True
    except ConfigError as err:  # a run folder made for another model
        print(f"genflow-train: error: {one_line(err)}", file=sys.stderr)
        return 2
    except (checkpoint.CheckpointError, TrainingError, UnreadableImage, lock.RunFolderInUse,
            OSError) as err:  # OSError: a full disk
        print(f"genflow-train: error: {one_line(err)}", file=sys.stderr)
        return 1
    finally:  # after an error leave at once: the peers may never reach the last barrier
        try:
            trainer.close()
        finally:
            distributed.cleanup(wait=finished)
    if trainer.dist.main and trainer.stopped:
        print(f"genflow-train: stopped at step {trainer.step} ({trainer.stopped}), checkpoint saved; run the same "
              f"command to resume (exit {trainer.exit_code}); run folder {run_dir}", file=sys.stderr, flush=True)
    elif trainer.dist.main:
        print(f"genflow-train: done, {trainer.step} steps; run folder {run_dir}")
    return trainer.exit_code


def _fail(message: str, code: int, distributed) -> int:
    print(f"genflow-train: error: {message}", file=sys.stderr)
    distributed.cleanup(wait=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
