"""CPU threads on a busy machine: the thread count from affinity and cgroup quota, and a passive
OpenMP wait policy set before torch loads (checked through OpenMP's own OMP_DISPLAY_ENV report)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from genflow import threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cpu_max, cpus", [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2),
                                           ("50000 100000", 1)])
def test_cgroup_v2_quota_in_whole_cpus(tmp_path, cpu_max, cpus):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert threads.cgroup_cpus(tmp_path) == cpus


def test_cgroup_v1_quota_and_no_cgroup(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpus(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpus(tmp_path) is None
    assert threads.cgroup_cpus(tmp_path / "absent") is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 1)
    assert threads.usable_cpus() == 1
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    assert threads.usable_cpus() == len(os.sched_getaffinity(0))


def test_the_wait_policy_is_a_default_only():
    env = {}
    assert threads.default_wait_policy(env) and env == {"GOMP_SPINCOUNT": "10000"}
    for given in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(given)
        assert not threads.default_wait_policy(env) and env == given
    env = {}
    assert not threads.default_wait_policy(env, imported=True) and env == {}  # too late: OpenMP has read it


def openmp_report(code: str, **env: str) -> str:
    """What OpenMP says of its settings when torch loads (OMP_DISPLAY_ENV), after running ``code``."""
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    full.update({"PYTHONPATH": str(ROOT), "OMP_DISPLAY_ENV": "VERBOSE", "OMP_NUM_THREADS": "1", **env})
    done = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_importing_genflow_first_bounds_openmps_spin():
    report = openmp_report("import genflow")
    if "GOMP_SPINCOUNT" not in report:
        pytest.skip("this torch's OpenMP does not report its spin count (OMP_DISPLAY_ENV=VERBOSE)")
    assert "GOMP_SPINCOUNT = '10000'" in report
    assert "GOMP_SPINCOUNT = '10000'" not in openmp_report("import torch, genflow")  # torch first: too late
    active = openmp_report("import genflow", OMP_WAIT_POLICY="ACTIVE")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in active and "GOMP_SPINCOUNT = '10000'" not in active


def test_set_cpu_threads_keeps_an_explicit_omp_num_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        assert threads.set_cpu_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.set_cpu_threads() == 1
    finally:
        torch.set_num_threads(before)
