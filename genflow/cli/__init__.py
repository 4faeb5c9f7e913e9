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
        print(f"{prog}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1
    print(message)
    return 0
