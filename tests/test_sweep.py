"""genflow-train -m: Hydra sweeps in run folders named after their overrides, the submitit local
launcher, --cfg job, and hydra.* overrides that genflow does not honour refused in one line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genflow.train import main
from genflow.training import sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=toy2d", "data.size=64", "model=mlp", "model.hidden=8", "model.depth=1", "trainer.batch_size=32",
        "trainer.steps=2", "trainer.warmup=1", "trainer.log_every=1", "trainer.sample_every=0",
        "trainer.num_samples=4", "sampler.steps=1", "trainer.progress=false", "trainer.device=cpu"]


def folders(base: Path) -> dict[str, dict]:
    """Each run folder under ``base`` (by name) with its resolved config."""
    return {p.parent.name: yaml.safe_load(p.read_text()) for p in sorted(base.glob("*/config.yaml"))}


def test_a_2x2_sweep_gives_4_run_folders_named_after_their_overrides(tmp_path, capsys):
    assert main(["-m", *TINY, "trainer.lr=1e-3,2e-3", "process=ddpm,vpsde", f"run_dir={tmp_path}"]) == 0
    runs = folders(tmp_path)
    assert sorted(runs) == ["process=ddpm,trainer.lr=0.001", "process=ddpm,trainer.lr=0.002",
                            "process=vpsde,trainer.lr=0.001", "process=vpsde,trainer.lr=0.002"]
    for name, cfg in runs.items():
        process, lr = (part.partition("=")[2] for part in name.split(","))
        assert (cfg["process"]["name"], cfg["trainer"]["lr"]) == (process, float(lr))
        assert cfg["run_dir"] == str(tmp_path / name)
        assert (tmp_path / name / "checkpoints" / "last.pt").is_file()
    assert "job 4/4" in capsys.readouterr().err


def test_the_sweep_plan_is_hydras_basic_sweeper_order():
    plan = sweep.parse(["a.x=1,2", "b=p,q", "c.y=3", "run_dir=base"])
    assert [job.overrides for job in plan.jobs] == [("a.x=1", "b=p", "c.y=3"), ("a.x=1", "b=q", "c.y=3"),
                                                   ("a.x=2", "b=p", "c.y=3"), ("a.x=2", "b=q", "c.y=3")]
    assert [job.name for job in plan.jobs] == ["a.x=1,b=p", "a.x=1,b=q", "a.x=2,b=p", "a.x=2,b=q"]
    assert plan.base == Path("base") and plan.fixed_keys == ("c.y",)
    assert [j.name for j in sweep.parse(["t.n=range(1,4)"]).jobs] == ["t.n=1", "t.n=2", "t.n=3"]


@pytest.mark.parametrize("overrides, message", [
    (["hydra.run.dir=out"], "hydra.run.dir: genflow-train does not use this Hydra setting (the run folder is "
                            "run_dir=PATH); it honours hydra.searchpath, and with -m hydra/launcher=NAME and "
                            "hydra.launcher.KEY=VALUE"),
    (["hydra.job.chdir=true"], "hydra.job.chdir: genflow-train does not use"),
    (["hydra/launcher=submitit_local"], "hydra/launcher: genflow-train does not use this Hydra setting; it needs -m"),
    (["-m", "hydra/sweeper=optuna", "trainer.lr=1e-3,2e-3"], "hydra/sweeper: genflow-train does not use"),
    (["-m", "hydra.launcher.timeout_min=5", "trainer.lr=1e-3,2e-3"], "hydra.launcher.KEY needs a launcher plugin"),
    (["-m", "hydra/launcher=nope", "trainer.lr=1e-3,2e-3"], "unknown hydra/launcher 'nope'; available: basic"),
    (["-m", "run_dir=a,b"], "run_dir cannot be swept"),
    (["-m", "trainer.lr=1e-3,,"], "trainer.lr=1e-3,,"),  # Hydra's grammar: no empty value
    (["-m", "trainer.lr=1e-3,-1"], "job trainer.lr=-1: trainer.lr must be > 0; got -1"),
    (["--cfg", "hydra"], "--cfg takes job"),
])
def test_bad_sweeps_and_ignored_hydra_keys_are_refused_in_one_line(tmp_path, capsys, overrides, message):
    assert main([*overrides, f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_cfg_job_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    assert main(["--cfg", "job", *TINY, "trainer.lr=3e-3", f"run_dir={tmp_path / 'run'}"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["lr"] == 3e-3 and cfg["model"]["name"] == "mlp" and cfg["trainer"]["logger"] == "jsonl"
    assert not (tmp_path / "run").exists()
    assert main(["-m", "--cfg=job", *TINY, "trainer.lr=1e-3,2e-3", f"run_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert out.count("# job ") == 2 and "lr: 0.002" in out and not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="the hydra-submitit-launcher plugin is not installed (pip install 'genflow[submitit]')")
def test_the_submitit_local_launcher_runs_the_same_sweep(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "genflow.train", "-m", *TINY, "process=ddpm,vpsde", f"run_dir={tmp_path}",
           "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = folders(tmp_path)
    assert sorted(runs) == ["process=ddpm", "process=vpsde"]
    assert [cfg["process"]["name"] for cfg in runs.values()] == ["ddpm", "vpsde"]
    assert all((tmp_path / name / "checkpoints" / "last.pt").is_file() for name in runs)
    assert (tmp_path / ".submitit").is_dir()  # submitit's own logs, beside the runs
