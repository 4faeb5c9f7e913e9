"""The training engine: DDP against one process, multi-node rendezvous, exact resume, elastic
restarts, the NaN guard, safe checkpoints and config errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genflow.train import main
from genflow.training import checkpoint
from genflow.training.config import compose
from genflow.training.trainer import Trainer, TrainingError

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "train_worker.py")
TINY = ["data=toy2d", "data.size=512", "model=mlp", "model.hidden=32", "model.depth=1", "process=vpsde",
        "trainer.batch_size=32", "trainer.lr=0.001", "trainer.warmup=2", "trainer.log_every=1",
        "trainer.sample_every=0", "trainer.num_samples=16", "sampler.steps=4", "trainer.progress=false",
        "trainer.device=cpu"]


def tiny(run_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"run_dir={run_dir}", *extra]


def params(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and not r.get("skipped")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: str, env: dict | None = None) -> subprocess.Popen:
    """A torchrun agent in its own process group (so a timeout can end its workers too)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(agent: subprocess.Popen, timeout: int = 180) -> tuple[int, str]:
    try:
        _, err = agent.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)
        _, err = agent.communicate()
        return -1, f"timed out after {timeout} s\n{err}"
    return agent.returncode, err


def torchrun(*args: str, env: dict | None = None) -> tuple[int, str]:
    return finish(launch(*args, env=env))


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def fit(run_dir: Path, *extra: str) -> Trainer:
    trainer = Trainer(compose(tiny(run_dir, *extra)))
    trainer.fit()
    return trainer


def test_resume_is_exact(tmp_path):
    straight = fit(tmp_path / "straight", "trainer.steps=12", "trainer.ckpt_every=6")
    fit(tmp_path / "split", "trainer.steps=6", "trainer.ckpt_every=6")
    resumed = fit(tmp_path / "split", "trainer.steps=12", "trainer.ckpt_every=6")
    assert resumed.step == 12
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    assert_same(resumed.net.state_dict(), straight.net.state_dict(), atol=0)
    assert_same(resumed.ema.model.state_dict(), straight.ema.model.state_dict(), atol=0)


def test_ddp_with_gloo_matches_one_process(tmp_path):
    # 63 examples, global batch 32: one step per epoch, and DistributedSampler pads to 64 for two
    # ranks; every step crosses an epoch boundary and must still take the same examples.
    steps = ["trainer.steps=6", "trainer.ckpt_every=3", "data.size=63"]
    single = fit(tmp_path / "single", *steps)
    code, err = torchrun("--standalone", "--nproc_per_node=2", WORKER, *tiny(tmp_path / "ddp", *steps))
    assert code == 0, err[-3000:]
    rank0, rank1 = params(tmp_path / "ddp" / "params_rank0.pt"), params(tmp_path / "ddp" / "params_rank1.pt")
    assert_same(rank0, rank1, atol=0)
    # Trainer.close() let go of DDP, so cleanup destroyed the process group (not the exit, where
    # Gloo's teardown has aborted finished runs)
    for rank in (0, 1):
        assert json.loads((tmp_path / "ddp" / f"cleanup_rank{rank}.json").read_text()) == {"group_freed": True}
    assert_same(rank0, {k: v.detach() for k, v in single.net.state_dict().items()}, atol=1e-5)
    ddp_losses, one_losses = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert [s for s, _ in ddp_losses] == [s for s, _ in one_losses]
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(ddp_losses, one_losses))


def test_two_nodes_by_c10d_rendezvous_train_one_model(tmp_path):
    port = free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
              "--rdzv-id=genflow-test", WORKER, *tiny(tmp_path, "trainer.steps=4", "trainer.ckpt_every=4")]
    agents = [launch(*common) for _ in range(2)]
    results = [finish(agent) for agent in agents]
    assert all(code == 0 for code, _ in results), [err[-2000:] for _, err in results]
    assert_same(params(tmp_path / "params_rank0.pt"), params(tmp_path / "params_rank1.pt"), atol=0)
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["data"]["world"] == 2


def test_elastic_restart_resumes_and_finishes(tmp_path):
    """Worker 1 dies at step 6 of the first attempt; torchrun restarts the group, which resumes
    from the step-4 checkpoint and ends at step 10. One spare restart: on a loaded 2-core machine
    a restarted Gloo group has (rarely) failed to form once; torchrun then simply tries again."""
    code, err = torchrun("--standalone", "--nproc_per_node=2", "--max-restarts=2", WORKER,
                         *tiny(tmp_path, "trainer.steps=10", "trainer.ckpt_every=4"), env={"GENFLOW_FAULT": "exit@6:1"})
    assert code == 0, err[-6000:]
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    marks = [(e["event"], e["step"]) for e in events if "event" in e]
    assert marks[:2] == [("start", 0), ("resume", 4)] and all(m[0] == "resume" and m[1] in (4, 8) for m in marks[1:])
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 10 and state["data"]["world"] == 2


def test_nan_guard_skips_a_poisoned_batch(tmp_path, monkeypatch):
    trainer = Trainer(compose(tiny(tmp_path, "trainer.steps=5", "trainer.ckpt_every=5")))
    real_step = Trainer.train_step
    seen = {}

    def poisoned(self, x, y):
        if self.step == 2:
            seen["before"] = {k: v.clone() for k, v in self.net.state_dict().items()}
            out = real_step(self, torch.full_like(x, float("nan")), y)
            seen["after"] = {k: v.clone() for k, v in self.net.state_dict().items()}
            return out
        return real_step(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    trainer.fit()
    assert trainer.step == 5 and trainer.skipped == 1
    assert_same(seen["before"], seen["after"], atol=0)  # the poisoned step changed nothing
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped")] == [2]


def test_nan_guard_stops_after_too_many_bad_steps(tmp_path, monkeypatch):
    trainer = Trainer(compose(tiny(tmp_path, "trainer.steps=10", "trainer.max_bad_steps=3")))
    real_step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, x, y: real_step(self, x * float("nan"), y))
    with pytest.raises(TrainingError, match="3 non-finite steps in a row"):
        trainer.fit()


def test_a_failed_write_never_replaces_a_good_last_checkpoint(tmp_path, monkeypatch):
    fit(tmp_path, "trainer.steps=2", "trainer.ckpt_every=2")
    last = tmp_path / "checkpoints" / "last.pt"
    good = last.read_bytes()

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(checkpoint.CheckpointError, match="step_0000003.pt: disk full; the previous checkpoints are intact"):
        checkpoint.save({"step": 3, "config": {}, "model": {}}, last.parent)
    assert last.read_bytes() == good
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt", "step_0000002.pt"]  # no temporary left


def test_retention_keeps_the_newest_steps_by_number(tmp_path):
    for step in (9_999_998, 9_999_999, 10_000_000, 10_000_001):
        checkpoint.save({"step": step, "config": {}, "model": {}}, tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_10000000.pt", "step_10000001.pt"]
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 10_000_001


def test_truncated_foreign_and_malicious_checkpoints_are_refused(tmp_path):
    fit(tmp_path, "trainer.steps=2", "trainer.ckpt_every=2")
    last = tmp_path / "checkpoints" / "last.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or not a torch file") as err:
        checkpoint.load(cut)
    assert "\n" not in str(err.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(checkpoint.CheckpointError, match="not a genflow checkpoint"):
        checkpoint.load(foreign)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Payload(str(marker))}, evil)
    with pytest.raises(checkpoint.CheckpointError, match="refusing to load"):
        checkpoint.load(evil)
    assert not marker.exists()
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.pt")


class Payload:
    """Unpickling this would create a file (a stand-in for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_corrupt_last_checkpoint_stops_the_run_and_stays(tmp_path, capsys):
    """With no other checkpoint to fall back on (a damaged step file is passed over too)."""
    fit(tmp_path, "trainer.steps=2", "trainer.ckpt_every=2")
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:500])
    (tmp_path / "checkpoints" / "step_0000002.pt").write_bytes(b"PK")
    before = last.read_bytes()
    assert main(tiny(tmp_path, "trainer.steps=4")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no usable checkpoint in" in err and "cannot read checkpoint" in err, err
    assert last.read_bytes() == before


def test_resume_takes_the_newest_loadable_checkpoint_and_says_which(tmp_path, capsys):
    """last.pt damaged, or older than a complete step file (a kill between the two writes): the
    step file; the run then equals an uninterrupted one."""
    fit(tmp_path / "whole", "trainer.steps=4", "trainer.ckpt_every=2")
    for damage in ("truncated", "older"):
        run = tmp_path / damage
        fit(run, "trainer.steps=2", "trainer.ckpt_every=1", "trainer.keep=0")
        ckpt = run / "checkpoints"
        if damage == "truncated":
            (ckpt / "last.pt").write_bytes((ckpt / "last.pt").read_bytes()[:500])
        else:
            (ckpt / "last.pt").write_bytes((ckpt / "step_0000001.pt").read_bytes())
        capsys.readouterr()
        assert main(tiny(run, "trainer.steps=4", "trainer.ckpt_every=2")) == 0
        err = capsys.readouterr().err.strip()
        why = "last.pt is unusable (cannot read checkpoint" if damage == "truncated" else "last.pt is older (step 1)"
        assert err.count("\n") == 0 and err.startswith(f"genflow-train: resuming from {ckpt / 'step_0000002.pt'} "
                                                      f"(step 2): {why}"), err
        ours, whole = checkpoint.load(ckpt / "last.pt"), checkpoint.load(tmp_path / "whole" / "checkpoints" / "last.pt")
        assert ours["step"] == 4 and all(torch.equal(ours["model"][k], v) for k, v in whole["model"].items())


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trainer.stpes=5"], "stpes"),
        (["process=foo"], "unknown process option 'foo'; available: cnf, ddpm, flow, flow_ot, subvpsde, vesde, vpsde"),
        (["trainer.steps=abc"], "trainer.steps: Value 'abc' of type 'str' could not be converted to Integer"),
        (["trainer.precision=fp8"], "trainer.precision must be one of fp32, bf16, fp16"),
        (["model.chanels=8"], "chanels"),
        (["model=unet_mnist"], "expects images (1, 28, 28)"),
        (["trainer.batch_size=30", "trainer.micro_batches=4"], "must divide evenly"),
        (["sampler.steps=0"], "steps must be an integer >= 1"),
        (["--resume"], "unknown flag '--resume'"),
    ],
)
def test_config_errors_are_one_line_with_exit_2(tmp_path, capsys, overrides, message):
    assert main([f"run_dir={tmp_path}", "trainer.steps=1", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert message in err, err
    assert not (tmp_path / "checkpoints").exists()


def test_resume_refuses_a_run_folder_of_another_model(tmp_path, capsys):
    fit(tmp_path, "trainer.steps=2", "trainer.ckpt_every=2")
    assert main(tiny(tmp_path, "trainer.steps=4", "model.hidden=64")) == 2
    assert "was trained with another model config" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite(tmp_path, precision):
    trainer = fit(tmp_path, "trainer.steps=3", "trainer.ckpt_every=3", f"trainer.precision={precision}")
    assert trainer.skipped == 0 and all(torch.isfinite(torch.tensor(loss)) for _, loss in losses(tmp_path))


def test_image_runs_write_sample_grids(tmp_path):
    from PIL import Image

    overrides = [o for o in tiny(tmp_path) if not o.startswith(("data", "model", "process"))]
    Trainer(compose([*overrides, "model.channels=8", "model.norm_groups=8", "trainer.steps=2",
                     "trainer.ckpt_every=2", "trainer.num_samples=4", "sampler.steps=2"])).fit()  # digits, UNet, DDPM
    grid = Image.open(tmp_path / "samples" / "step_0000002.png")
    assert grid.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)  # 2 x 2 digits of 8 px, torchvision's 2 px padding


def test_sample_cli_writes_files_and_batches_do_not_change_samples(tmp_path, capsys):
    import numpy as np

    from genflow.cli.sample import main as sample_main

    fit(tmp_path / "run", "trainer.steps=2", "trainer.ckpt_every=2")
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    common = ["--ckpt", ckpt, "--sampler", "ddim", "--steps", "5", "--num", "6", "--no-progress", "--eta", "1.0"]
    assert sample_main([*common, "--out", str(tmp_path / "a"), "--batch-size", "6"]) == 0
    assert sample_main([*common, "--out", str(tmp_path / "b"), "--batch-size", "4"]) == 0
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in "ab")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # float32 matmuls round by batch size
    info = json.loads((tmp_path / "a" / "info.json").read_text())
    assert info["nfe_per_sample"] == 5 and info["sampler"] == {"name": "ddim", "steps": 5, "eta": 1.0}
    assert (tmp_path / "a" / "points.png").stat().st_size > 0
    capsys.readouterr()
    for bad, message in [(["--steps", "0"], "steps must be an integer >= 1"),
                         (["--sampler", "no_such_sampler"], "unknown sampler 'no_such_sampler'"),
                         (["--snr", "0.1"], "takes no option(s) snr")]:
        assert sample_main(["--ckpt", ckpt, "--out", str(tmp_path / "c"), "--no-progress", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert sample_main(["--ckpt", str(tmp_path / "missing.pt")]) == 1
    # another sampler than the run's, without --steps: that sampler's own default (1000), not 50
    assert sample_main(["--ckpt", ckpt, "--sampler", "euler_maruyama", "--num", "2", "--no-progress",
                        "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "info.json").read_text())["nfe_per_sample"] == 1001


def test_a_cnf_trains_through_the_same_engine(tmp_path):
    trainer = fit(tmp_path, "process=cnf", "process.steps=2", "trainer.steps=3", "trainer.ckpt_every=3")
    assert trainer.step == 3 and trainer.skipped == 0
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in losses(tmp_path))
    assert (tmp_path / "samples" / "step_0000003.png").exists()
