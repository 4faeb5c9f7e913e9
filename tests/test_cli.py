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
    """Feed the test split itself as 'samples': FD = 0 and precision = recall = 1 (fd and pr default to
    the training split, as papers' FIDs: the test split is asked for)."""
    overrides = [o for o in TOY if not o.startswith(("data", "model", "process"))]
    Trainer(compose([*overrides, f"run_dir={tmp_path}", "model.channels=8", "model.norm_groups=8"])).fit()
    ckpt = str(tmp_path / "checkpoints" / "last.pt")
    np.savez(tmp_path / "real.npz", samples=digits("test").tensors[0].numpy())
    test = ["--split", "test"]
    assert eval_main(["fd", "--ckpt", ckpt, "--samples", str(tmp_path / "real.npz"), *test]) == 0
    fd = output(capsys)
    assert fd["value"] == pytest.approx(0.0, abs=1e-6) and fd["samples"] == 360 and fd["data"] == 360
    assert "digits classifier (test accuracy 0.9" in fd["features"] and fd["reference"] == "computed"
    assert fd["feature_space"].startswith("digits classifier v1 sha256:")
    assert eval_main(["fd", "--ckpt", ckpt, "--samples", str(tmp_path / "real.npz"), *test]) == 0
    again = output(capsys)  # the split's statistics from the cache: the same number
    assert again["reference"] == "cached" and again["value"] == fd["value"]
    assert again["reference_cache"] == fd["reference_cache"] and os.path.isfile(fd["reference_cache"])
    assert eval_main(["fd", "--ckpt", ckpt, "--samples", str(tmp_path / "real.npz"), "--split", "train",
                      "--num", "360"]) == 0
    train = output(capsys)  # another split: another cache file, computed
    assert train["reference"] == "computed" and train["reference_cache"] != fd["reference_cache"]
    assert train["value"] > fd["value"]
    assert eval_main(["pr", "--ckpt", ckpt, "--samples", str(tmp_path / "real.npz"), *test]) == 0
    pr = output(capsys)
    assert (pr["precision"], pr["recall"]) == (1.0, 1.0)
    noise = torch.rand(360, 1, 8, 8) * 2 - 1  # uniform noise images: far from digits
    np.savez(tmp_path / "noise.npz", samples=noise.numpy())
    assert eval_main(["fd", "--ckpt", ckpt, "--samples", str(tmp_path / "noise.npz"), *test]) == 0
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


# --- genflow-sample's refusals and safe checkpoints through both CLIs -------------------------------------------

DDPM_TOY = [o for o in TOY if not o.startswith(("process=", "trainer.steps", "trainer.ckpt_every"))]


@pytest.fixture(scope="module")
def ddpm_ckpt(tmp_path_factory):
    """A 1000-step DDPM on 2-D toy data with a tiny MLP, trained for 2 steps."""
    run = tmp_path_factory.mktemp("ddpm")
    Trainer(compose([*DDPM_TOY, "process=ddpm", "trainer.steps=2", "trainer.ckpt_every=2", f"run_dir={run}"])).fit()
    return run / "checkpoints" / "last.pt"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


DDPM_STEPS = "steps must be an integer >= 1 and <= 1000 (the steps of DDPM("


@pytest.mark.parametrize("argv,message", [
    (["--sampler", "ddpm", "--steps", "0"], "sampler 'ddpm': steps must be an integer >= 1; got 0"),
    (["--sampler", "ddpm", "--steps", "5000"], DDPM_STEPS),
    (["--sampler", "ddim", "--steps", "0"], "sampler 'ddim': steps must be an integer >= 1; got 0"),
    (["--sampler", "ddim", "--steps", "5000"], DDPM_STEPS),
    (["--sampler", "no_such_sampler"], "unknown sampler 'no_such_sampler'; valid names: ddpm, ddim, euler_maruyama, pc, ode, dpmpp_2m, dpmpp_3m, heun, lms, ipndm, unipc"),
    (["--sampler", "ddpm", "--eta", "0.5"], "sampler 'ddpm' takes no option(s) eta; allowed: variance, spacing"),
    (["--sampler", "ddim", "--snr", "0.1"], "sampler 'ddim' takes no option(s) snr; allowed: eta, spacing"),
    (["--sampler", "ddim", "--spacing", "even"], "spacing must be one of leading, trailing, linspace, quadratic"),
    (["--sampler", "ddpm", "--variance", "big"], "variance must be one of beta, beta_tilde"),
    (["--sampler", "ddim", "--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
    (["--sampler", "heun", "--schedule", "cosine"], "schedule must be one of logsnr, karras, time"),
    (["--sampler", "dpmpp_2m", "--s-churn", "1"], "sampler 'dpmpp_2m' takes no option(s) s_churn"),
    (["--sampler", "ddpm", "--no-denoise"], "sampler 'ddpm' takes no option(s) denoise"),
    (["--sampler", "dpmpp_2m", "--sigma-min", "1e-6"], "need s(t_min) <= sigma_min < sigma_max <= s(t_max)"),
    (["--sampler", "heun", "--s-churn", "-1"], "sampler 'heun': s_churn must be a finite number >= 0; got -1.0"),
    (["--sampler", "dpmpp_2m", "--schedule", "karras", "--rho", "inf"],
     "sampler 'dpmpp_2m': rho must be a finite number > 0; got inf"),
    # issue 18: every float option is checked finite and in range up front, from its declaration
    (["--sampler", "ddim", "--eta", "nan"], "sampler 'ddim': eta must be a finite number >= 0; got nan"),
    (["--sampler", "ddim", "--eta", "inf"], "sampler 'ddim': eta must be a finite number >= 0; got inf"),
    (["--sampler", "pc", "--snr", "inf"], "sampler 'pc': snr must be a finite number > 0; got inf"),
    (["--sampler", "ode", "--rtol", "nan"], "sampler 'ode': rtol must be a finite number > 0; got nan"),
    (["--sampler", "heun", "--s-tmax", "nan"], "sampler 'heun': s_tmax must be a number >= 0 (inf allowed); got nan"),
    (["--sampler", "pc", "--corrector-steps", "-1"], "sampler 'pc': corrector_steps must be an integer >= 0; got -1"),
])
def test_sample_cli_refuses_bad_sampler_settings_with_exit_2(ddpm_ckpt, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert sample_main(["--ckpt", str(ddpm_ckpt), "--out", str(out), "--num", "2", "--no-progress", *argv]) == 2
    err = one_line(capsys)
    assert err.startswith("genflow-sample: error: ") and message in err, err
    assert not out.exists()


def test_sample_cli_takes_the_bounds_of_ddpm_steps(ddpm_ckpt, tmp_path, capsys):
    """The refusals above stop exactly at the edges: 1 and 1000 steps both sample."""
    for sampler, steps, nfe in [("ddim", "1", 1), ("ddpm", "1000", 1000)]:
        out = tmp_path / sampler
        argv = ["--ckpt", str(ddpm_ckpt), "--out", str(out), "--num", "2", "--no-progress"]
        assert sample_main([*argv, "--sampler", sampler, "--steps", steps]) == 0
        assert json.loads((out / "info.json").read_text())["nfe_per_sample"] == nfe


@pytest.mark.parametrize("flags,nfe", [
    (["--sampler", "dpmpp_2m", "--steps", "6", "--schedule", "karras"], 6),
    (["--sampler", "heun", "--steps", "4"], 6),  # 2 per step, 1 on the step to s = 0, 1 on the jump from t_max
    (["--sampler", "heun", "--steps", "4", "--s-churn", "2", "--sigma-max", "10"], 6),
    (["--sampler", "dpmpp_3m", "--steps", "5", "--no-denoise"], 5),
])
def test_sample_cli_runs_the_higher_order_solvers(ddpm_ckpt, tmp_path, flags, nfe):
    argv = ["--ckpt", str(ddpm_ckpt), "--num", "6", "--no-progress", *flags]
    assert sample_main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert sample_main([*argv, "--out", str(tmp_path / "b"), "--batch-size", "4"]) == 0
    info = json.loads((tmp_path / "a" / "info.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert info["nfe_per_sample"] == nfe and info["sampler"]["name"] == flags[1]
    options = info["sampler_options"]  # every option as used, defaults included; inf as a string (strict JSON)
    assert options["rho"] == 7.0 and options["steps"] == int(flags[3])
    assert flags[1] != "heun" or options["s_tmax"] == "inf"
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in "ab")
    assert np.allclose(a, b, atol=1e-5) and (tmp_path / "a" / "points.png").is_file()


def test_sample_cli_help_explains_every_flag(capsys):
    from genflow.cli.sample import parser

    with pytest.raises(SystemExit) as done:
        parser().parse_args(["--help"])
    assert done.value.code == 0
    helps = {a.option_strings[-1]: a.help for a in parser()._actions}
    assert all(helps.values()), [flag for flag, text in helps.items() if not text]
    assert "--no-progress" in capsys.readouterr().out
    assert helps["--eta"].endswith("(sampler ddim only)") and helps["--snr"].endswith("(sampler pc only)")
    assert helps["--spacing"].endswith("(sampler ddpm or ddim only)")


class OpensAFile:
    """Unpickling this creates a file: open(path, "w") (a stand-in for arbitrary code)."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsAShell:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        import shlex

        return (os.system, (f"touch {shlex.quote(self.path)}",))


def cli_runs(ckpt, tmp_path):
    """The same checkpoint through genflow-sample and genflow-eval nll."""
    return [("genflow-sample", lambda: sample_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "s"), "--num", "2",
                                                      "--no-progress"])),
            ("genflow-eval", lambda: eval_main(["nll", "--ckpt", str(ckpt), "--num", "4", "--method", "euler",
                                                "--steps", "2"]))]


@pytest.mark.parametrize("write", ["torch.save", "pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_by_both_clis(ddpm_ckpt, tmp_path, capsys, write):
    import pickle

    from genflow.training import checkpoint

    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    state = {**checkpoint.load(ddpm_ckpt), "x": OpensAFile(marker), "y": RunsAShell(marker)}
    if write == "torch.save":
        torch.save(state, evil)
    else:
        with open(evil, "wb") as f:
            pickle.dump(state, f, protocol=2)
    for prog, call in cli_runs(evil, tmp_path):
        assert call() == 1
        err = one_line(capsys)
        assert err.startswith(f"{prog}: error: refusing to load {evil}") and "could run code" in err, err
    assert not marker.exists()
    assert not (tmp_path / "s").exists()
    with open(evil, "rb") as f:  # the payload is live: an unsafe load does create the file
        torch.load(f, weights_only=False) if write == "torch.save" else pickle.load(f)
    assert marker.exists()


def with_config(state: dict, key: str, name: str) -> dict:
    return {**state, "config": {**state["config"], key: {**state["config"][key], "name": name}}}


@pytest.mark.parametrize("key,name,message", [
    ("model", "transformer", "its config cannot be rebuilt: unknown net 'transformer'; valid names: mlp, unet"),
    ("process", "edm", "its config cannot be rebuilt: unknown process 'edm'; valid names: cnf, ddpm, flow"),
])
def test_a_checkpoint_naming_an_unknown_net_or_process_fails_with_exit_1(ddpm_ckpt, tmp_path, capsys, key, name,
                                                                         message):
    from genflow.training import checkpoint

    bad = tmp_path / "bad.pt"
    torch.save(with_config(checkpoint.load(ddpm_ckpt), key, name), bad)
    for prog, call in cli_runs(bad, tmp_path):
        assert call() == 1
        err = one_line(capsys)
        assert err.startswith(f"{prog}: error: {bad}: ") and message in err, err


def test_missing_truncated_and_foreign_checkpoints_fail_with_exit_1(ddpm_ckpt, tmp_path, capsys):
    cut, foreign = tmp_path / "cut.pt", tmp_path / "foreign.pt"
    cut.write_bytes(ddpm_ckpt.read_bytes()[:1000])
    torch.save({"weights": torch.zeros(2)}, foreign)
    for path, message in [(tmp_path / "missing.pt", "checkpoint not found: "),
                          (cut, f"cannot read checkpoint {cut} (truncated or not a torch file)"),
                          (foreign, f"{foreign} is not a genflow checkpoint")]:
        for prog, call in cli_runs(path, tmp_path):
            assert call() == 1
            err = one_line(capsys)
            assert err.startswith(f"{prog}: error: {message}"), err


@pytest.mark.parametrize("command", ["nll", "fd", "pr", "sw"])
def test_eval_cli_help_explains_every_flag(command, capsys):
    from genflow.cli.evaluate import parser

    with pytest.raises(SystemExit) as done:
        parser().parse_args([command, "--help"])
    assert done.value.code == 0 and "--ckpt" in capsys.readouterr().out
    sub = next(a for a in parser()._actions if a.dest == "command").choices[command]
    missing = [a.option_strings for a in sub._actions if not a.help]
    assert not missing, missing
    flags = {s for a in sub._actions for s in a.option_strings}
    assert ("--inception-weights" in flags) == (command in ("fd", "pr"))


def test_a_registered_sampler_gets_its_flag_help_and_checks(ddpm_ckpt, tmp_path, capsys, monkeypatch):
    """One dict entry: its option becomes a flag documented by its declaration, and it samples."""
    from genflow.cli.sample import parser
    from genflow.samplers import SAMPLERS
    from throwaway_sampler import TemperedEuler

    monkeypatch.setitem(SAMPLERS, "tempered_euler", TemperedEuler)
    helps = {a.option_strings[-1]: a.help for a in parser()._actions}
    assert helps["--temperature"] == ("scale of the starting noise (1: the prior; below 1: sharper samples); a finite "
                                      "number > 0 and <= 2 (sampler tempered_euler only)")
    argv = ["--ckpt", str(ddpm_ckpt), "--num", "4", "--no-progress", "--sampler", "tempered_euler", "--steps", "3"]
    assert sample_main([*argv, "--out", str(tmp_path / "a"), "--temperature", "0.5"]) == 0
    info = json.loads((tmp_path / "a" / "info.json").read_text())
    assert info["sampler_options"] == {"steps": 3, "temperature": 0.5} and info["nfe_per_sample"] == 4
    capsys.readouterr()
    assert sample_main([*argv, "--out", str(tmp_path / "b"), "--temperature", "nan"]) == 2
    assert "sampler 'tempered_euler': temperature must be a finite number > 0 and <= 2; got nan" in one_line(capsys)
    assert sample_main([*argv, "--out", str(tmp_path / "c"), "--cuda-graph"]) == 2  # fixed-step: the CPU is refused
    assert "CUDA graphs need a CUDA device" in one_line(capsys)


def test_sample_cli_refuses_non_finite_samples_with_exit_1(ddpm_ckpt, tmp_path, capsys):
    """A net whose weights went NaN: one line naming the sampler, the process and where; no files."""
    state = torch.load(ddpm_ckpt, weights_only=True)
    state["ema"]["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                             for k, v in state["ema"]["model"].items()}
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    out = tmp_path / "out"
    assert sample_main(["--ckpt", str(broken), "--out", str(out), "--num", "2", "--no-progress", "--sampler", "ddim",
                        "--steps", "5"]) == 1
    err = one_line(capsys)
    assert err.startswith("genflow-sample: error: sampler 'ddim' on DDPM(timesteps=1000") and \
        "gave non-finite samples (first in network evaluation 1 of 5, at t = 999)" in err, err
    assert not out.exists()
