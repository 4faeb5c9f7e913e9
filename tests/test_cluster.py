"""Training on clusters (issue 17): stops by a signal or a time budget at one step on every rank,
saved there and resumed exactly; one trainer per run folder; the process group from SLURM's
variables under srun; SLURM's compressed node lists."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_training import ROOT, WORKER, assert_same, finish, fit, launch, params, tiny

from genflow.train import main
from genflow.training import checkpoint, lock, stops
from genflow.training.distributed import expand_nodelist, slurm_env

STEPS = 150  # above the two stops: a rank held at step n stops by step n + 1 + stops.CHECK_STEPS
TARGET = [f"trainer.steps={STEPS}", "trainer.ckpt_every=1000"]  # checkpoints only where a run stops or ends


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> str:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < end, f"no {path.name}: {proc.communicate()[1][-3000:]}"
        time.sleep(0.05)
    time.sleep(0.05)  # the pid is written
    return path.read_text()


def events(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("event") == "stop"]


def stopped(run: Path) -> list[dict]:
    return [json.loads((run / f"stopped_rank{r}.json").read_text()) for r in (0, 1)]


def free_slurm_port() -> int:
    """A free port that genflow's SLURM rule (15000 + job id % 10000) can name."""
    rng = random.Random(os.getpid())
    for _ in range(100):
        port = rng.randrange(15000, 25000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port in 15000..24999")


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory) -> tuple[Path, list[int], str]:
    """Two plain processes with the variables srun gives its tasks (no torchrun), to the target step."""
    run = tmp_path_factory.mktemp("slurm")
    job = free_slurm_port() - 15000
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "SLURM_NTASKS": "2",
            "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": str(job), "SLURM_JOB_NODELIST": "localhost"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        base.pop(key, None)
    tasks = [subprocess.Popen([sys.executable, WORKER, *tiny(run, *TARGET)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                              env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)}) for r in (0, 1)]
    results = [finish(task) for task in tasks]
    return run, [code for code, _ in results], "\n".join(err[-2000:] for _, err in results)


def test_slurm_variables_form_one_group_without_torchrun(slurm_run):
    run, codes, err = slurm_run
    assert codes == [0, 0], err
    assert_same(params(run / "params_rank0.pt"), params(run / "params_rank1.pt"), atol=0)
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["step"] == STEPS and state["data"]["world"] == 2  # one group of two, not two runs of one
    # torchrun's run of the same config gives these weights bit for bit (the next test)


def test_sigterm_to_the_agent_then_to_one_worker_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path, slurm_run):
    """A SIGTERM to the torchrun agent, which forwards it to its workers (rank 0 held at step 4),
    then, on the rerun, a SIGTERM to worker 1 only (held two steps after the resume): each time both
    ranks stop at one step, at the next check, with the checkpoint there; the third run ends at the
    target step with the weights of the uninterrupted run (the SLURM-launched one above: the same
    2-rank Gloo group)."""
    run = tmp_path / "run"
    args = ["--standalone", "--nproc_per_node=2", WORKER, *tiny(run, *TARGET)]
    agent = launch(*args, env={"GENFLOW_FAULT": "pause@4:0"})
    wait_for(run / "paused_rank0", agent)
    agent.send_signal(signal.SIGTERM)
    code, err = finish(agent)
    assert code == 1 and "death signal, shutting down workers" in err, err[-3000:]  # torchrun: SignalException
    first = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    assert 4 <= first <= 5 + stops.CHECK_STEPS
    assert stopped(run) == [{"step": first, "stopped": "SIGTERM"}] * 2, err[-3000:]
    assert [(e["step"], e["reason"]) for e in events(run)] == [(first, "SIGTERM")]

    agent = launch(*args, env={"GENFLOW_FAULT": f"pause@{first + 2}:1"})
    os.kill(int(wait_for(run / "paused_rank1", agent)), signal.SIGTERM)
    code, err = finish(agent)
    assert code == 0, err[-3000:]  # the workers' status: trainer.requeue_exit_code, 0 by default
    second = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    assert first + 2 <= second < STEPS and stopped(run) == [{"step": second, "stopped": "SIGTERM"}] * 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        ["last.pt", f"step_{first:07d}.pt", f"step_{second:07d}.pt"])

    code, err = finish(launch(*args))
    assert code == 0, err[-3000:]
    assert stopped(run) == [{"step": STEPS, "stopped": None}] * 2
    assert slurm_run[1] == [0, 0], slurm_run[2]
    assert_same(params(run / "params_rank0.pt"), params(slurm_run[0] / "params_rank0.pt"), atol=0)
    assert not (run / lock.NAME).exists()


def test_max_minutes_stops_with_a_checkpoint_and_the_rerun_is_exact(tmp_path, capsys):
    run = tmp_path / "run"
    budget = ["trainer.steps=100000", "trainer.ckpt_every=100000", "trainer.max_minutes=0.01",
              "trainer.requeue_exit_code=3"]
    assert main(tiny(run, *budget)) == 3
    step = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    err = capsys.readouterr().err.strip()
    assert err == (f"genflow-train: stopped at step {step} (trainer.max_minutes=0.01 ran out), checkpoint saved; "
                   f"run the same command to resume (exit 3); run folder {run}")
    assert 0 < step < 100000 and [e["step"] for e in events(run)] == [step]
    assert main(tiny(run, f"trainer.steps={step + 3}")) == 0
    whole = fit(tmp_path / "whole", f"trainer.steps={step + 3}")
    assert_same(checkpoint.load(run / "checkpoints" / "last.pt")["model"], whole.net.state_dict(), atol=0)


def test_a_second_trainer_on_a_run_folder_in_use_refuses_and_the_first_finishes(tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny(run, "trainer.steps=4", "trainer.ckpt_every=2")
    first = subprocess.Popen([sys.executable, "-m", "genflow.train", *args], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                                  "GENFLOW_FAULT": "pause@2"})
    marker = run / "paused_rank0"
    wait_for(marker, first)
    before = {p.name: p.read_bytes() for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.is_file()}
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"genflow-train: error: run_dir {run} is in use by pid {first.pid} on this host "
                   f"({socket.gethostname()}); wait for it to finish, stop it, or give another run_dir")
    assert {p.name: p.read_bytes() for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.is_file()} == before
    marker.unlink()  # the first goes on
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the first trainer (OMP_NUM_THREADS=1): bitwise needs one summation order
    try:
        whole = fit(tmp_path / "whole", "trainer.steps=4", "trainer.ckpt_every=2")
    finally:
        torch.set_num_threads(threads)
    assert_same(checkpoint.load(run / "checkpoints" / "last.pt")["model"], whole.net.state_dict(), atol=0)
    assert not (run / lock.NAME).exists()


def test_a_stale_lock_is_taken_over_and_a_foreign_host_lock_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = run / lock.NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "1"}))
    assert main(tiny(run, "trainer.steps=2", "trainer.ckpt_every=2")) == 0
    err = capsys.readouterr().err.strip()
    assert err == f"genflow-train: took over the lock {path} of pid {int(dead.stdout)}, which is no longer running"
    assert not path.exists()
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": os.getpid(), "started": None}))
    assert main(tiny(run, "trainer.steps=4")) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"genflow-train: error: run_dir {run} is in use by pid {os.getpid()} on host node-elsewhere "
                   f"(lock {path}); if no trainer runs there any more, remove {path} and start again")
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == 2  # nothing trained
    # a live pid that is another process than the one that locked (a reused pid): stale too
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": "0"}))
    assert lock.acquire(run)[1] is not None
    lock.release(path)
    assert not path.exists()


@pytest.mark.parametrize("nodelist,hosts", [
    ("node01", ["node01"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("gpu[8-10],cpu1", ["gpu8", "gpu9", "gpu10", "cpu1"]),
    ("a[1-2]-b[08-09]", ["a1-b08", "a1-b09", "a2-b08", "a2-b09"]),
    ("login,node[099-101]", ["login", "node099", "node100", "node101"]),
])
def test_slurm_node_lists_expand(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_slurm_env_takes_the_first_host_and_the_job_port_and_leaves_torchrun_alone():
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NODELIST": "gpu[07-08]"}  # an sbatch script's own shell: no group to wait for
    assert slurm_env(batch) == {}
    task = {**batch, "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "16"}
    assert slurm_env(task) == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                               "MASTER_PORT": "19242"}
    assert slurm_env({**task, "SLURM_STEP_NODELIST": "gpu08"})["MASTER_ADDR"] == "gpu08"  # the step's first host
    assert slurm_env({**task, "MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"
    assert slurm_env({**task, "RANK": "0", "WORLD_SIZE": "2"}) == {}  # torchrun's own variables win
    assert slurm_env({**task, "SLURM_STEP_NUM_TASKS": "1"}) == {}  # one task: no group
    with pytest.raises(ValueError, match="is not a number or a range"):
        expand_nodelist("node[a-b]")


def test_stop_options_are_checked(tmp_path, capsys):
    for bad, says in [(["trainer.stop_signals=[SIGKILL]"], "'SIGKILL' is not a signal that can be caught"),
                      (["trainer.requeue_exit_code=1"], "must be 0 or in 3..255"),
                      (["trainer.max_minutes=-1"], "trainer.max_minutes must be >= 0")]:
        assert main(tiny(tmp_path, *bad)) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err, err


def test_sigterm_to_the_whole_process_group_spares_the_loader_workers(tmp_path):
    """SLURM signals every process of a job step, DataLoader workers included: they ignore it (a worker
    killed by it ends the run with 'DataLoader worker (pid N) is killed by signal: Terminated', unsaved)."""
    run = tmp_path / "run"
    args = tiny(run, "trainer.steps=1000", "trainer.num_workers=1", "trainer.ckpt_every=1000")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "GENFLOW_FAULT": "pause@3"}
    proc = subprocess.Popen([sys.executable, "-m", "genflow.train", *args], cwd=ROOT, text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(run / "paused_rank0", proc)
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(workers) == 1  # the loader's worker
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err.strip().splitlines()[-1].startswith("genflow-train: stopped at step 3 (SIGTERM), checkpoint saved")
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == 3


@pytest.mark.parametrize("seconds_per_step,checks", [
    (0.1, [1, 2, 7, 12, 17]),            # 0.5 s / 0.1 s: every 5 steps after the first two
    (0.001, [1, 2, 52, 102, 152]),       # 500 steps would be 0.5 s: capped at CHECK_STEPS = 50
    (2.0, [1, 2, 3, 4, 5]),              # slower than 0.5 s per step: every step
])
def test_ranks_check_about_every_half_second_on_the_same_steps(monkeypatch, seconds_per_step, checks):
    """Under DDP the check steps come from the slowest rank's measured time per step (the same on every
    rank: it rides on the check's all-reduce); the first check is after the first step."""
    clock = {"now": 0.0}
    monkeypatch.setattr(stops.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(stops.distributed, "active", lambda: True)
    calls = []
    monkeypatch.setattr(stops.distributed, "agree_max", lambda values, device: calls.append(values) or values)
    stop = stops.Stops((), 0.0).__enter__()
    seen = []
    for step in range(1, 160):
        clock["now"] += seconds_per_step
        before = len(calls)
        assert stop.agreed(step, torch.device("cpu")) is None
        if len(calls) > before:
            seen.append(step)
    assert seen[:5] == checks
    stop.received = signal.SIGUSR1
    assert stop.reason(stop.local()) == "SIGUSR1"


@pytest.mark.parametrize("n", [0, 1, 7, 10, 50000])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_share_covers_the_indices_once_in_rank_order(n, world):
    from genflow.training.distributed import share

    parts = [share(n, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_share_refuses_a_rank_outside_the_world():
    from genflow.training.distributed import share

    with pytest.raises(ValueError, match="rank < world"):
        share(10, 3, 3)
