"""The one place that knows about torch.distributed; every helper also works with one process.

Under torchrun the environment holds RANK, WORLD_SIZE and LOCAL_RANK; the process group is
initialised from it (NCCL on CUDA, Gloo on CPU). Without them, a task of ``srun`` takes the same from
SLURM's variables (``slurm_env``). Without either nothing is initialised and the helpers fall back to
the single-process answer.
"""

from __future__ import annotations

import os
import pickle
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from genflow.utils import one_line


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
    """``auto``: this rank's GPU when CUDA is visible, else the CPU. The GPU is ``cuda:LOCAL_RANK``, or
    ``cuda:0`` where the rank sees only one (srun's ``--gpus-per-task=1``)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("trainer.device=cuda but no CUDA device is visible; use auto or cpu")
        return torch.device("cuda", local_rank if torch.cuda.device_count() > 1 else 0)
    if requested != "cpu":
        raise ValueError(f"trainer.device must be auto, cuda or cpu; got {requested!r}")
    return torch.device("cpu")


SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 10000  # MASTER_PORT = 15000 + job id % 10000 under srun


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list, expanded: ``node[01-03,07],gpu1`` -> node01, node02, node03,
    node07, gpu1 (zero padding kept; several bracket groups in one name multiply out)."""
    names = re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    return [host for name in names for host in _expand_name(name)]


def _expand_name(name: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", name)
    if match is None:
        return [name]
    head, tail = name[: match.start()], name[match.end():]
    out = []
    for part in match.group(1).split(","):
        lo, _, hi = part.partition("-")
        if not (lo.isdigit() and (hi.isdigit() or not hi)):
            raise ValueError(f"cannot read the SLURM node list {name!r}: {part!r} is not a number or a range A-B")
        out += [f"{head}{n:0{len(lo)}d}" for n in range(int(lo), int(hi or lo) + 1)]
    return [host for prefix in out for host in _expand_name(prefix + tail)]


def slurm_env(environ: dict) -> dict[str, str]:
    """torchrun's variables for a task of ``srun`` (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID; the
    master is the first host of the step's node list, the port 15000 + job id % 10000 unless
    MASTER_PORT is set); empty under torchrun (RANK or WORLD_SIZE set), outside SLURM, and in an
    sbatch script's own shell, which SLURM gives SLURM_NTASKS but no SLURM_STEP_* variables."""
    if "RANK" in environ or "WORLD_SIZE" in environ or "SLURM_STEP_NUM_TASKS" not in environ:
        return {}
    world = environ["SLURM_STEP_NUM_TASKS"]  # the step's tasks (srun's SLURM_NTASKS too)
    if int(world) < 2:
        return {}
    nodelist = environ.get("SLURM_STEP_NODELIST", environ.get("SLURM_JOB_NODELIST", ""))
    if not nodelist or "SLURM_PROCID" not in environ:
        raise ValueError("a task of srun needs SLURM_PROCID and SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST); "
                         "start genflow under srun (or torchrun)")
    port = environ.get("MASTER_PORT") or str(SLURM_PORT_BASE + int(environ.get("SLURM_JOB_ID", "0")) % SLURM_PORT_SPAN)
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": world, "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": environ.get("MASTER_ADDR") or expand_nodelist(nodelist)[0], "MASTER_PORT": port}


def setup(device: str = "auto") -> Dist:
    """Initialise the process group when launched by torchrun or srun; pick this rank's device."""
    os.environ.update(slurm_env(os.environ))
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


# Tensors handed to a collective, until their memory is freed. A backend thread keeps its own
# reference to a finished collective's tensors for a moment (Gloo's worker until the end of its
# loop, NCCL's watchdog until its next poll); when this process has dropped its own by then, the
# last release falls to that thread, which takes the GIL to free the Python object. Older torch
# (2.4 at least; pytorch#154976, mid-2025, changed it) destroys a process group holding the GIL
# while ~ProcessGroupGloo joins its workers: the worker waits for the GIL, the teardown for the
# worker, for ever. cleanup() therefore waits, the GIL released, for this set to empty first.
_IN_FLIGHT: set[weakref.ref] = set()
SETTLE_LIMIT_S = 10.0  # a backend thread frees them within ms of getting the GIL (NCCL: 0.1 s polls)


def _sent(*tensors: torch.Tensor) -> None:
    """Note tensors given to a collective; each leaves ``_IN_FLIGHT`` when its memory is freed."""
    for tensor in tensors:
        _IN_FLIGHT.add(weakref.ref(tensor, _IN_FLIGHT.discard))


def _settle(limit: float = SETTLE_LIMIT_S) -> None:
    """Wait, the GIL released, until every tensor given to a collective is freed (see ``_IN_FLIGHT``);
    one still held after ``limit`` seconds is held by something other than a thread wanting the GIL."""
    deadline = time.monotonic() + limit
    while _IN_FLIGHT and time.monotonic() < deadline:
        time.sleep(0.001)
    _IN_FLIGHT.clear()


def _collective_device() -> torch.device:
    """Where the default group's tensors live: this rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (a copy; the value itself on one process)."""
    if not active():
        return value.detach().clone()
    total = value.detach().clone()
    _sent(total)
    dist.all_reduce(total)
    return total / dist.get_world_size()


def agree_max(values: list[int], device: torch.device) -> list[int]:
    """Each value's largest over ranks (one all-reduce of a few integers; the values on one process)."""
    if not active():
        return list(values)
    out = torch.tensor(values, dtype=torch.int64, device=device)
    _sent(out)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.tolist()


def agree(step: Callable[[], object], usage: tuple[type, ...] = (ValueError, TypeError)):
    """``step()`` on every rank, then one gather of the failures: when it raised on any rank, every
    rank raises the first failing rank's error as one line, ``rank R: ...`` (a ValueError for the
    ``usage`` kinds, an exit-2 usage error in the CLIs; else a RuntimeError, exit 1), so no rank
    waits in a later collective for a peer that has left, and all exit alike. ``step()``'s result
    on this rank (not gathered); with one process an error is raised as it is."""
    try:
        result, error = step(), None
    except Exception as err:  # noqa: BLE001 - handed to every rank, then raised
        if not active():
            raise
        result, error = None, (isinstance(err, usage), one_line(err))
    for rank, failed in enumerate(gather_objects(error)):
        if failed is not None:
            raise (ValueError if failed[0] else RuntimeError)(f"rank {rank}: {failed[1]}")
    return result


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (small picklable objects only). As ``all_gather_object``:
    the lengths of the pickles, then the pickles padded to the longest, in two all-gathers; here,
    so that their tensors are noted for ``cleanup`` (``_IN_FLIGHT``)."""
    if not active():
        return [obj]
    world, device = dist.get_world_size(), _collective_device()
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    _sent(length, *lengths)
    dist.all_gather(lengths, length)
    sizes = torch.cat(lengths).tolist()
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[: len(payload)] = payload
    pickles = [torch.empty_like(padded) for _ in range(world)]
    _sent(padded, *pickles)
    dist.all_gather(pickles, padded)
    return [pickle.loads(part[:size].cpu().numpy().tobytes()) for part, size in zip(pickles, sizes)]


def gather_checked(work: Callable[[], object], usage: tuple[type, ...] = (ValueError, TypeError)) -> list:
    """Every rank's ``work()``, in rank order, failing on every rank as ``agree`` does (small results only)."""
    return gather_objects(agree(work, usage))


def cleanup(wait: bool = True) -> None:
    """Leave together (``wait``): a rank that tears its Gloo pairs down while a peer still uses
    them can abort ("terminate called without an active exception") instead of exiting cleanly.
    After an error, leave at once: the peers may never reach the barrier. Either way the group is
    destroyed only once the collectives' tensors are freed (``_settle``): on torch < 2.8 a Gloo
    thread still freeing one would otherwise wait for the GIL that the teardown holds (a hang)."""
    if active():
        try:
            if wait:
                dist.barrier()
        finally:
            _settle()
            dist.destroy_process_group()


def share(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of the indices 0..n-1 over ``world`` ranks: the first n % world
    ranks take one more than the others, so the shares in rank order are exactly range(n)."""
    if world < 1 or not 0 <= rank < world or n < 0:
        raise ValueError(f"share needs n >= 0 and 0 <= rank < world; got n={n}, rank={rank}, world={world}")
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))
