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
Common keys: trainer.steps trainer.batch_size (global) trainer.lr trainer.ckpt_every
trainer.sample_every trainer.precision (fp32|bf16|fp16) trainer.compile trainer.channels_last trainer.seed run_dir=PATH.
Running the same command again resumes from RUN_DIR/checkpoints/last.pt.
Under torchrun every worker runs this; all share one run folder and only rank 0 writes."""


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
        print(USAGE.format(groups=groups, nets=nets.names()))
        return 0
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        print(f"genflow-train: error: unknown flag {flags[0]!r}; pass Hydra overrides KEY=VALUE (see --help)",
              file=sys.stderr)
        return 2
    from genflow.training import checkpoint, distributed
    from genflow.training.trainer import Trainer, TrainingError

    try:  # everything that can be wrong with the input shows here, before any training
        trainer = Trainer(compose(argv))
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"genflow-train: error: {err}", file=sys.stderr)
        distributed.cleanup(wait=False)
        return 2
    finished = False
    try:
        run_dir = trainer.fit()
        finished = True
    except ConfigError as err:  # a run folder made for another model
        print(f"genflow-train: error: {err}", file=sys.stderr)
        return 2
    except (checkpoint.CheckpointError, TrainingError) as err:
        print(f"genflow-train: error: {err}", file=sys.stderr)
        return 1
    finally:  # after an error leave at once: the peers may never reach the last barrier
        try:
            trainer.close()
        finally:
            distributed.cleanup(wait=finished)
    if trainer.dist.main:
        print(f"genflow-train: done, {trainer.step} steps; run folder {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
