"""A net from another installed package through every CLI, and genflow installed from its wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from plugin_package import write_plugin

from genflow.cli.evaluate import main as eval_main
from genflow.cli.sample import main as sample_main
from genflow.training import checkpoint, compose
from genflow.training.config import ConfigError
from genflow.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["data=toy2d", "data.size=256", "process=flow", "trainer.batch_size=32", "trainer.steps=3",
         "trainer.ckpt_every=3", "trainer.sample_every=0", "trainer.num_samples=4", "sampler.steps=2",
         "trainer.progress=false", "trainer.device=cpu"]


def run(args: list[str], cwd: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    env.pop("GENFLOW_CONFIG_DIR", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_plugin_net_trains_samples_and_evaluates_through_the_clis(tmp_path, monkeypatch, capsys):
    plugin = write_plugin(tmp_path / "site", "gfplug_cli", {"tiny": "gfplug_cli.nets:Wrapped"})
    run_dir = tmp_path / "run"
    done = run(["-m", "genflow.train", "hydra.searchpath=[pkg://gfplug_cli.configs]", "model=tiny", "model.width=8",
                *SHORT, f"run_dir={run_dir}"], tmp_path, [ROOT, plugin])  # entry points read in a fresh process
    assert done.returncode == 0, done.stderr
    ckpt = run_dir / "checkpoints" / "last.pt"
    state = checkpoint.load(ckpt)
    assert state["config"]["model"] == {"name": "tiny", "features": 2, "width": 8, "time_scale": 1000.0}
    assert "gfplug_cli" not in repr(state["config"])  # the name only, never an import path

    assert sample_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "out")]) == 1  # the package is not here
    err = capsys.readouterr().err.strip()
    assert err == (f"genflow-sample: error: {ckpt}: its config cannot be rebuilt: unknown net 'tiny'; valid names: "
                   "mlp, unet (built in); from packages (entry point group 'genflow.nets'): none")

    monkeypatch.syspath_prepend(str(plugin))
    assert sample_main(["--ckpt", str(ckpt), "--sampler", "ode", "--method", "rk4", "--steps", "3", "--num", "6",
                        "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    samples = np.load(tmp_path / "out" / "samples.npz")["samples"]
    assert samples.shape == (6, 2) and np.isfinite(samples).all()
    capsys.readouterr()
    assert eval_main(["nll", "--ckpt", str(ckpt), "--num", "8", "--exact", "--method", "rk4", "--steps", "3"]) == 0
    nll = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert nll["examples"] == 8 and np.isfinite(nll["value"])
    assert eval_main(["sw", "--ckpt", str(ckpt), "--samples", str(tmp_path / "out" / "samples.npz")]) == 0


@pytest.mark.parametrize("extra,message", [
    (["model.features=3"], "model 'tiny' fails on the data's examples (2,): RuntimeError: "),
    (["model.name=pooled"], "model 'pooled' maps a batch of the data (2, 2) to (2,); a net must return a tensor "
                            "shaped like its input"),
])
def test_a_plugin_net_that_does_not_fit_the_data_is_refused(tmp_path, monkeypatch, extra, message):
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path, "gfplug_fit", {"tiny": "gfplug_fit.nets:Wrapped",
                                                                          "pooled": "gfplug_fit.nets:Pooled"})))
    with pytest.raises(ConfigError) as info:
        Trainer(compose(["hydra.searchpath=[pkg://gfplug_fit.configs]", "model=tiny", *SHORT, *extra,
                         f"run_dir={tmp_path / 'run'}"]))
    assert str(info.value).startswith(message) and "\n" not in str(info.value), info.value


def test_an_unknown_model_option_lists_the_search_path_too(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path, "gfplug_opt", {"tiny": "gfplug_opt.nets:Wrapped"})))
    with pytest.raises(ConfigError, match=r"unknown model option 'tinny'; available: mlp, tiny, unet_cifar10"):
        compose(["hydra.searchpath=[pkg://gfplug_opt.configs]", "model=tinny"])
    with pytest.raises(ConfigError, match=r"hydra.searchpath: no package 'gfplug_absent' to read configs from"):
        compose(["hydra.searchpath=[pkg://gfplug_absent]", "model=tiny"])


def test_the_wheel_ships_the_configs_and_trains_and_samples_from_anywhere(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((ROOT / name).read_bytes())
    for folder in ("genflow", "configs"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                (source / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                (source / path.relative_to(ROOT)).write_bytes(path.read_bytes())
    built = run(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"),
                 str(source)], tmp_path, [])
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "wheel").glob("genflow-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("genflow/configs/")}
    assert shipped == {f"genflow/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    target = tmp_path / "target"
    installed = run(["-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
                    tmp_path, [])
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(["-c", "import genflow; from genflow.training.config import config_dir; "
                       "print(genflow.__file__); print(config_dir())"], elsewhere, [target])
    assert where.stdout.splitlines() == [str(target / "genflow" / "__init__.py"), str(target / "genflow" / "configs")]
    trained = run(["-m", "genflow.train", "model=mlp", "model.hidden=16", "model.depth=1", *SHORT, "trainer.steps=5",
                   "trainer.ckpt_every=5", "run_dir=run"], elsewhere, [target])
    assert trained.returncode == 0, trained.stderr
    sampled = run(["-m", "genflow.cli.sample", "--ckpt", "run/checkpoints/last.pt", "--sampler", "ode", "--method",
                   "euler", "--steps", "2", "--num", "4", "--out", "out", "--no-progress"], elsewhere, [target])
    assert sampled.returncode == 0, sampled.stderr
    assert np.load(elsewhere / "out" / "samples.npz")["samples"].shape == (4, 2)
