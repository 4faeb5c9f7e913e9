"""CPU threads that survive a busy machine (BENCHMARKS.md, "Training on a busy CPU").

OpenMP's threads spin-wait at every barrier for their peers; when the kernel deschedules a peer
(other jobs share the cores) each spin burns the CPU time the peer needs, and a training step on
2 cores went from 0.1 s to 18 s. Two remedies, both applied by genflow's command-line tools: a
bounded spin (``GOMP_SPINCOUNT=10000``, against libgomp's 300,000: threads sleep soon after a
barrier; read once by OpenMP when torch is imported, so ``genflow/__init__.py`` and the scripts set
it beforehand unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set already) and no more threads than
the process may run at once (its CPU affinity and its cgroup's CPU quota). Measured interleaved on
2 cores (BENCHMARKS.md): quiet 0.110 s a step against the default's 0.108 (``PASSIVE``: 0.168);
beside 3 CPU burners 0.50 s against the default's 1.31 (``PASSIVE``: 0.40). ``OMP_WAIT_POLICY=PASSIVE``
is the choice for nodes that are always shared, ``ACTIVE`` for dedicated ones.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

SPIN_COUNT = "10000"


def default_wait_policy(environ=os.environ, imported: bool = False) -> bool:
    """Bound OpenMP's spin (``GOMP_SPINCOUNT``) unless a wait policy or spin count is set or torch is
    loaded (too late); whether it did."""
    if imported or "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return False
    environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (v2 ``cpu.max``, v1 ``cpu.cfs_*``), None if unlimited."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1"):
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def usable_cpus() -> int:
    """The CPUs this process may run on at once: its affinity, capped by its cgroup's quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpus()
    return min(affinity, quota) if quota else affinity


def set_cpu_threads() -> int:
    """torch's intra-op threads down to ``usable_cpus()`` unless ``OMP_NUM_THREADS`` says otherwise; the count."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > usable_cpus():
        torch.set_num_threads(usable_cpus())
    return torch.get_num_threads()
