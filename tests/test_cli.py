"""genflow-eval end to end on tiny checkpoints trained in the test."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from genflow.cli.evaluate import main as eval_main
from genflow.cli.sample import main as sample_main
from genflow.data import digits
from genflow.training import Trainer, compose

TOY = ["data=toy2d", "data.size=512", "model=mlp", "model.hidden=32", "model.depth=1", "process=flow",
       "trainer.batch_size=32", "trainer.steps=3", "trainer.ckpt_every=3", "trainer.sample_every=0",
       "trainer.num_samples=4", "sampler.steps=4", "trainer.progress=false", "trainer.device=cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    old = os.environ.get("GENFLOW_CACHE")
    os.environ["GENFLOW_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ["GENFLOW_CACHE"]
    else:
        os.environ["GENFLOW_CACHE"] = old


def output(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_nll_and_sw_on_vector_data(tmp_path, capsys):
    Trainer(compose([*TOY, f"run_dir={tmp_path}"])).fit()
    ckpt = str(tmp_path / "checkpoints" / "last.pt")
    assert eval_main(["nll", "--ckpt", ckpt, "--num", "20", "--exact"]) == 0
    nll = output(capsys)
    assert nll["metric"] == "nll (nats)" and nll["examples"] == 20 and math_finite(nll["value"])
    assert sample_main(["--ckpt", ckpt, "--num", "200", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    capsys.readouterr()
    assert eval_main(["sw", "--ckpt", ckpt, "--samples", str(tmp_path / "s" / "samples.npz")]) == 0
    sw = output(capsys)
    assert sw["samples"] == 200 and sw["data"] == 5000 and sw["value"] > 0


def math_finite(value: float) -> bool:
    return bool(np.isfinite(value))


def test_eval_fd_and_pr_of_the_data_against_itself(tmp_path, capsys, cache):
    """Feed the test split itself as 'samples': FD = 0 and precision = recall = 1."""
    overrides = [o for o in TOY if not o.startswith(("data", "model", "process"))]
    Trainer(compose([*overrides, f"run_dir={tmp_path}", "model.channels=8", "model.norm_groups=8"])).fit()
    ckpt = str(tmp_path / "checkpoints" / "last.pt")
    np.savez(tmp_path / "real.npz", samples=digits("test").tensors[0].numpy())
    assert eval_main(["fd", "--ckpt", ckpt, "--samples", str(tmp_path / "real.npz")]) == 0
    fd = output(capsys)
    assert fd["value"] == pytest.approx(0.0, abs=1e-6) and fd["samples"] == 360
    assert "digits classifier (test accuracy 0.9" in fd["features"]
    assert eval_main(["pr", "--ckpt", ckpt, "--samples", str(tmp_path / "real.npz")]) == 0
    pr = output(capsys)
    assert (pr["precision"], pr["recall"]) == (1.0, 1.0)
    noise = torch.rand(360, 1, 8, 8) * 2 - 1  # uniform noise images: far from digits
    np.savez(tmp_path / "noise.npz", samples=noise.numpy())
    assert eval_main(["fd", "--ckpt", ckpt, "--samples", str(tmp_path / "noise.npz")]) == 0
    assert output(capsys)["value"] > 10.0
    assert eval_main(["sw", "--ckpt", ckpt, "--samples", str(tmp_path / "real.npz")]) == 2
    assert "sw is for vector data" in capsys.readouterr().err


@pytest.mark.parametrize("argv,code,message", [
    (["fd"], 2, "required"),
    (["bleu", "--ckpt", "x.pt"], 2, "invalid choice"),
    (["nll", "--ckpt", "missing.pt"], 1, "checkpoint not found"),
])
def test_eval_bad_input(argv, code, message, capsys):
    assert eval_main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
