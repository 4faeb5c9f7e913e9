"""``genflow-train`` / ``python -m genflow.train`` / ``torchrun ... -m genflow.train``: Hydra-composed training.

    genflow-train process=vpsde model=unet_cifar10 data=cifar10 trainer.batch_size=128
    torchrun --nproc_per_node=4 -m genflow.train trainer.steps=100000 run_dir=runs/cifar

Bad input ends in one line on stderr: exit 2 for a config or usage error, 1 for a failed run.
"""

from __future__ import annotations

import sys

USAGE = """usage: genflow-train [GROUP=OPTION ...] [KEY=VALUE ...]

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
    from genflow.training.config import GROUPS, ConfigError, compose, group_options, search_path

    if any(a in ("-h", "--help") for a in argv):
        from genflow import nets

        try:
            extra = search_path([a for a in argv if not a.startswith("-")])
        except ConfigError as err:
            print(f"genflow-train: error: {err}", file=sys.stderr)
            return 2
        groups = "\n".join(f"  {g}: {', '.join(group_options(g, extra=extra))}" for g in GROUPS)
        print(USAGE.format(groups=groups, nets=nets.names(), trainer=trainer_keys()))
        return 0
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        print(f"genflow-train: error: unknown flag {flags[0]!r}; pass Hydra overrides KEY=VALUE (see --help)",
              file=sys.stderr)
        return 2
    from genflow.data.images import UnreadableImage
    from genflow.training import checkpoint, distributed, lock
    from genflow.training.trainer import Trainer, TrainingError
    from genflow.utils import OutputError, one_line

    try:  # everything that can be wrong with the input shows here, before any training
        trainer = Trainer(compose(argv))
    except OutputError as err:  # a run folder that cannot be written
        return _fail(one_line(err), 1, distributed)
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as err:
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
