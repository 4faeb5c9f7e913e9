"""Command-line tools: genflow-train (genflow/train.py, Hydra), genflow-sample and genflow-eval (flags)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from genflow.utils import one_line


class UsageError(ValueError):
    """Bad command-line input."""


class FailedRun(RuntimeError):
    """A run that produced no usable result (e.g. non-finite samples or metrics): exit 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other bad input
        raise UsageError(message)


def guarded(prog: str, work: Callable[[], str | None]) -> int:
    """Run ``work`` and print what it returns (nothing for None: a rank other than 0). Bad input ends
    in one line and exit 2; a checkpoint that cannot be used, a missing file or a failed run in one
    line and exit 1. The line is one write with its newline: under torchrun the ranks share stderr,
    and a print's two writes (text, then newline) can interleave into one line (seen on torch 2.4)."""
    from genflow.threads import set_cpu_threads
    from genflow.training.checkpoint import CheckpointError

    set_cpu_threads()  # no more threads than this process may run at once (a busy machine: BENCHMARKS.md)
    try:
        message = work()
    except (UsageError, ValueError, TypeError) as err:
        return _error_line(prog, err, 2)
    except (CheckpointError, OSError, KeyError, RuntimeError) as err:  # OSError: missing, unwritable, disk full
        return _error_line(prog, err, 1)
    if message is not None:
        print(message)
    return 0


def _error_line(prog: str, err: BaseException, code: int) -> int:
    sys.stderr.write(f"{prog}: error: {one_line(err)}\n")
    sys.stderr.flush()
    return code


def check_seed(seed: int) -> int:
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2^63); got {seed}")
    return seed


def check_device(name: str) -> str:
    """``--device``: cpu, or cuda[:N] with that GPU visible; refused up front in one line, not later
    as an unreadable checkpoint."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise UsageError(f"--device must be cpu or cuda[:N]; got {name!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            visible = f"cuda:0..cuda:{count - 1}" if count else "none"
            raise UsageError(f"--device {name}: no such CUDA device on this machine (visible: {visible}); use cpu")
    return name


def rank_device(name: str, dist) -> str:
    """This rank's device: auto, cuda and cpu as ``distributed.setup`` picked it (cuda:LOCAL_RANK under
    torchrun); a named GPU cuda:N itself, on one process only (every rank would share it)."""
    if ":" not in name:
        return str(dist.device)
    if dist.world > 1:
        raise UsageError(f"--device {name} names one GPU, but {dist.world} ranks would share it; under torchrun "
                         "use --device auto or cuda (each rank takes cuda:LOCAL_RANK)")
    return name


def rebuild(state: dict, path, *, ema: bool = True, device: str = "cpu"):
    """(process, net) from a loaded checkpoint's stored config, the net with its EMA (or raw) weights.

    Whatever the checkpoint itself gets wrong (an unknown net or process, keys the class does not
    take, weights that do not fit) is a ``CheckpointError``: one line, exit 1, not a usage error.
    """
    from genflow import nets, processes
    from genflow.export import check_weights
    from genflow.training.checkpoint import CheckpointError

    check_weights(state, path, ema)  # an export holds one set of weights: ask for the other in one line
    cfg = state["config"]
    try:
        process, net = processes.build(cfg["process"]), nets.build(cfg["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config cannot be rebuilt: {one_line(err)}") from None
    try:
        net.load_state_dict(state["ema"]["model"] if ema else state["model"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its {'EMA ' if ema else ''}weights do not fit its net: "
                              f"{one_line(err)}") from None
    return process, net.to(device).eval()
