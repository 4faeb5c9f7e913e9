"""The one place that knows about torch.distributed; every helper also works with one process.

Under torchrun the environment holds RANK, WORLD_SIZE and LOCAL_RANK; the process group is
initialised from it (NCCL on CUDA, Gloo on CPU). Without torchrun nothing is initialised and
the helpers fall back to the single-process answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str, local_rank: int) -> torch.device:
    """``auto``: this rank's GPU when CUDA is visible, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("trainer.device=cuda but no CUDA device is visible; use auto or cpu")
        return torch.device("cuda", local_rank)
    if requested != "cpu":
        raise ValueError(f"trainer.device must be auto, cuda or cpu; got {requested!r}")
    return torch.device("cpu")


def setup(device: str = "auto") -> Dist:
    """Initialise the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = timedelta(minutes=10)
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun keeps one store across elastic restarts; without a per-attempt prefix a
        # restarted group can read the dead workers' addresses and hang while connecting.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"genflow/attempt_{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return Dist(rank, world, local_rank, dev)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if active():
        dist.barrier()


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (a copy; the value itself on one process)."""
    value = value.detach().clone()
    if active():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (pickled by torch.distributed; small objects only)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup(wait: bool = True) -> None:
    """Leave together (``wait``): a rank that tears its Gloo pairs down while a peer still uses
    them can abort ("terminate called without an active exception") instead of exiting cleanly.
    After an error, leave at once: the peers may never reach the barrier."""
    if active():
        try:
            if wait:
                dist.barrier()
        finally:
            dist.destroy_process_group()
