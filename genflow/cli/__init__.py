"""Command-line tools: genflow-train (genflow/train.py, Hydra), genflow-sample and genflow-eval (flags)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class UsageError(ValueError):
    """Bad command-line input."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other bad input
        raise UsageError(message)


def guarded(prog: str, work: Callable[[], str]) -> int:
    """Run ``work`` and print what it returns. Bad input ends in one line and exit 2; a checkpoint
    that cannot be used, a missing file or a failed run in one line and exit 1."""
    from genflow.training.checkpoint import CheckpointError

    try:
        message = work()
    except (UsageError, ValueError, TypeError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, FileNotFoundError, KeyError, RuntimeError) as err:
        print(f"{prog}: error: {_first_line(err)}", file=sys.stderr)
        return 1
    print(message)
    return 0


def rebuild(state: dict, path, *, ema: bool = True, device: str = "cpu"):
    """(process, net) from a loaded checkpoint's stored config, the net with its EMA (or raw) weights.

    Whatever the checkpoint itself gets wrong (an unknown net or process, keys the class does not
    take, weights that do not fit) is a ``CheckpointError``: one line, exit 1, not a usage error.
    """
    from genflow import nets, processes
    from genflow.training.checkpoint import CheckpointError

    cfg = state["config"]
    try:
        process, net = processes.build(cfg["process"]), nets.build(cfg["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config cannot be rebuilt: {_first_line(err)}") from None
    try:
        net.load_state_dict(state["ema"]["model"] if ema else state["model"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its {'EMA ' if ema else ''}weights do not fit its net: "
                              f"{_first_line(err)}") from None
    return process, net.to(device).eval()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
