"""Classifier-free guidance (Ho & Salimans 2022) against the Gaussian-mixture oracle, and label dropout."""

from __future__ import annotations

import pytest
import torch

import genflow
from genflow import accel
from genflow.nets import MLP
from genflow.processes import DDPM, VPSDE
from genflow.samplers import SAMPLERS, CountingModel, run
from genflow.testing import GaussianMixture

F64 = dict(dtype=torch.float64)
MEANS = [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]


def mixture() -> GaussianMixture:
    return GaussianMixture.isotropic(MEANS, [1.0, 1.0, 1.0])


def conditional_oracle(oracle: GaussianMixture, process, calls: list | None = None):
    """model(x, t, y): the component-y prediction for y < K, the mixture's for y = K (the null class)."""
    exact, k = oracle.model(process), oracle.num_components

    def model(x, t, y):
        if calls is not None:
            calls.append(y.clone())
        out = exact(x, t)
        known = y < k
        if bool(known.any()):
            out[known] = exact(x[known], t[known], y=y[known])
        return out

    return model


def labels(n: int, value: int) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.long)


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), **F64)


def test_guidance_zero_is_the_conditional_model_exactly():
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=2, num_classes=3).double().eval()
    process = DDPM(timesteps=100)
    x, y = noise(64), torch.arange(64) % 3
    common = dict(sampler="ddim", steps=10, noise=x, cond={"y": y})
    plain, zero = run(net, process, **common), run(net, process, **common, guidance=0.0)
    assert torch.equal(plain.samples, zero.samples)
    assert (zero.nfe, zero.forward_batch_factor) == (10, 1)
    # A vanishing weight through the doubled batch tends to the conditional model, not the
    # unconditional one (the halves are not swapped).
    tiny = run(net, process, **common, guidance=1e-7)
    uncond = run(net, process, **{**common, "cond": {"y": labels(64, 3)}})
    assert tiny.forward_batch_factor == 2 and tiny.nfe == 10
    assert (tiny.samples - plain.samples).abs().max() < 1e-5
    assert (uncond.samples - plain.samples).abs().max() > 1e-2


def test_one_guided_evaluation_is_the_combination_of_two_separate_ones():
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=2, num_classes=3).double().eval()
    process, w = VPSDE(), 2.5
    x, t, y = noise(32), torch.rand(32, **F64) * 0.9 + 0.05, torch.arange(32) % 3
    with torch.no_grad():
        hub = CountingModel(net, process, {"y": y}, w, {"y": labels(32, 3)}).denoise(x, t)
        want = (1 + w) * net(x, t, y) - w * net(x, t, labels(32, 3))  # Ho & Salimans eq. 6 in eps
        torch.testing.assert_close(hub.eps, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hub.x0, process.to_hub(want, x, t).x0, rtol=1e-12, atol=1e-12)


def test_guidance_is_the_same_in_every_parametrization():
    """Outputs combined in the model's own space give one guided (x0, eps) for eps, x0, v, score, velocity."""
    oracle, w = mixture(), 3.0
    x, t, y = noise(40), torch.linspace(0.05, 0.95, 40, **F64), torch.arange(40) % 3
    hubs = {}
    for kind in VPSDE.predictions:
        process = VPSDE(prediction=kind)
        hubs[kind] = CountingModel(conditional_oracle(oracle, process), process, {"y": y}, w, {"y": labels(40, 3)}
                                   ).denoise(x, t)
    for kind, hub in hubs.items():
        torch.testing.assert_close(hub.eps, hubs["eps"].eps, rtol=1e-9, atol=1e-9, msg=kind)
        torch.testing.assert_close(hub.x0, hubs["eps"].x0, rtol=1e-9, atol=1e-9, msg=kind)


def closest_mean(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, torch.tensor(MEANS, **F64)).argmin(1)


@pytest.mark.parametrize("sampler,options", [("ddim", {"steps": 50}), ("ode", {"method": "dopri5", "rtol": 1e-5,
                                                                             "atol": 1e-5})])
def test_large_guidance_concentrates_samples_on_the_chosen_component(sampler, options):
    oracle, process, n = mixture(), VPSDE(), 2000
    model = conditional_oracle(oracle, process)
    cond, uncond = {"y": labels(n, 0)}, {"y": labels(n, 3)}

    def draw(w: float) -> torch.Tensor:
        return run(model, process, sampler=sampler, noise=noise(n), cond=cond, uncond=uncond, guidance=w,
                   **options).samples

    plain, guided = draw(0.0), draw(4.0)
    exact = oracle.sample(20000, component=0, generator=torch.Generator().manual_seed(1))
    in_cell = {name: (closest_mean(s) == 0).double().mean().item()
               for name, s in [("exact", exact), ("w=0", plain), ("w=4", guided)]}
    print(sampler, in_cell)
    # w = 0 samples component 0, N(mu_0, I), which leaves its Voronoi cell ~8% of the time.
    assert abs(in_cell["w=0"] - in_cell["exact"]) < 0.02, in_cell
    assert in_cell["w=4"] > 0.995 and in_cell["w=4"] > in_cell["w=0"] + 0.04, in_cell
    spread = {name: torch.linalg.matrix_norm(torch.cov(s.T)).item() for name, s in [("w=0", plain), ("w=4", guided)]}
    assert spread["w=0"] == pytest.approx(2 ** 0.5, rel=0.12)  # ||I||_F: the component's covariance
    assert spread["w=4"] < 0.6 * spread["w=0"], spread


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_is_guided_through_one_doubled_forward_per_evaluation(name):
    oracle, process, n = mixture(), DDPM(timesteps=100), 6
    calls: list = []
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    options = {"steps": 4} if name != "ode" else {"steps": 4, "method": "rk4"}
    result = run(conditional_oracle(oracle, process, calls), process, sampler=name, noise=noise(n), cond={"y": y},
                 uncond={"y": labels(n, 3)}, guidance=2.0, **options)
    assert result.forward_batch_factor == 2 and result.nfe == len(calls) > 0
    for call in calls:
        assert torch.equal(call, torch.cat([y, labels(n, 3)]))
    assert torch.isfinite(result.samples).all()


def test_adaptive_ode_counts_each_doubled_forward_once():
    oracle, process, n = mixture(), VPSDE(), 8
    calls: list = []
    result = run(conditional_oracle(oracle, process, calls), process, sampler="ode", noise=noise(n),
                 cond={"y": labels(n, 1)}, uncond={"y": labels(n, 3)}, guidance=1.0)
    assert result.nfe == len(calls) > 10 and all(len(c) == 2 * n for c in calls)


def test_the_null_class_defaults_to_the_nets_and_genflow_sample_takes_guidance():
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=1, num_classes=3).double().eval()
    process, y = DDPM(timesteps=50), torch.arange(8) % 3
    common = dict(sampler="ddim", steps=5, noise=noise(8), cond={"y": y}, guidance=1.5)
    default = genflow.sample(net, process, **common)
    explicit = genflow.sample(net, process, **common, uncond={"y": labels(8, 3)})
    assert torch.equal(default, explicit)
    # found through the fast-path wrappers too (FastModel's and Compiled's inner nets)
    wrapped = accel.FastModel(accel.Compiled(net, backend="eager"), "bf16")
    torch.testing.assert_close(genflow.sample(wrapped, process, **common),
                               genflow.sample(wrapped, process, **common, uncond={"y": labels(8, 3)}), rtol=0, atol=0)


@pytest.mark.parametrize("classes,kwargs,message", [
    (3, {"guidance": -1.0}, "guidance must be a finite number >= 0"),
    (3, {"guidance": float("nan")}, "guidance must be a finite number >= 0"),
    (3, {"guidance": 1.0, "cond": {}}, "guidance needs class labels"),
    (3, {"guidance": 1.0, "uncond": {"z": labels(4, 3)}}, "uncond must have the keys and shapes of cond"),
    (None, {"guidance": 1.0}, "guidance needs class labels .* and a net with a class embedding"),
])
def test_bad_guidance_is_refused_in_one_line(classes, kwargs, message):
    net = MLP(dim=2, hidden=8, depth=1, num_classes=classes)
    args = {"cond": {"y": labels(4, 0)}, **kwargs}
    with pytest.raises(ValueError, match=message) as err:
        run(net, DDPM(timesteps=10), sampler="ddim", steps=2, shape=(4, 2), **args)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ training: label dropout
DIGITS = ["model.channels=8", "model.norm_groups=8", "model.num_classes=10", "trainer.device=cpu",
          "trainer.progress=false", "trainer.sample_every=0", "sampler.steps=2"]


def trainer(tmp_path, *extra: str):
    from genflow.training import Trainer, compose

    return Trainer(compose([*DIGITS, f"run_dir={tmp_path}", *extra]))


def test_label_dropout_rate_and_independence_of_the_world_size(tmp_path):
    one = trainer(tmp_path, "trainer.batch_size=1024", "trainer.cond_drop_prob=0.5")
    drops, nulls = [], 0
    y = torch.arange(1024) % 10
    for step in range(4):
        one.step = step
        drop = one.draws()[3]
        drops.append(drop)
        given = one.prepare(torch.zeros(1024, 1, 8, 8), y, drop, drop)[1]["y"]
        assert torch.equal(given[drop], torch.full_like(y[drop], 10)) and torch.equal(given[~drop], y[~drop])
        nulls += int(drop.sum())
        # two ranks take global positions r, r + 2, ...: together the same drops as one process
        shares = [share_of_rank(one, rank, world=2) for rank in (0, 1)]
        assert torch.equal(torch.stack(shares, 1).reshape(-1), drop)
    n = 4 * 1024  # Binomial(4096, 1/2): sd 32, so 6 sd is 192
    assert abs(nulls - n / 2) < 192, nulls
    assert not torch.equal(drops[0], drops[1])  # a fresh draw each step


def share_of_rank(one, rank: int, world: int) -> torch.Tensor:
    """The drops ``one``'s step would give ``rank`` of ``world`` ranks."""
    import dataclasses

    saved = one.dist
    one.dist = dataclasses.replace(saved, rank=rank, world=world)
    try:
        return one.draws()[3]
    finally:
        one.dist = saved


def test_no_label_dropout_by_default(tmp_path):
    plain = trainer(tmp_path, "trainer.batch_size=1024")
    for step in range(3):
        plain.step = step
        assert not plain.draws()[3].any()


@pytest.mark.parametrize("overrides,message", [
    (["trainer.cond_drop_prob=1.0"], "trainer.cond_drop_prob must be in [0, 1); got 1.0"),
    (["trainer.cond_drop_prob=-0.1"], "trainer.cond_drop_prob must be in [0, 1); got -0.1"),
    (["model.num_classes=null", "trainer.cond_drop_prob=0.1"], "trainer.cond_drop_prob=0.1 needs a conditional model"),
    (["model.num_classes=3"], "model has num_classes=3 but the data have 10"),
])
def test_label_dropout_config_errors_are_one_line_with_exit_2(tmp_path, capsys, overrides, message):
    from genflow.train import main

    assert main([*DIGITS, f"run_dir={tmp_path}", "trainer.steps=1", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


# ------------------------------------------------------------------ genflow-sample --class --guidance
def test_sample_cli_takes_classes_and_guidance(tmp_path, capsys, monkeypatch):
    import json

    import numpy as np
    from PIL import Image

    from genflow.cli.sample import main as sample_main
    from genflow.nets import UNet

    trainer(tmp_path / "run", "trainer.batch_size=16", "trainer.steps=2", "trainer.ckpt_every=2",
            "trainer.num_samples=4", "trainer.cond_drop_prob=0.2").fit()
    # the training grid shows class i % 10 in slot i, a class per column: 4 slots, one row
    assert Image.open(tmp_path / "run" / "samples" / "step_0000002.png").size == (4 * 10 + 2, 8 + 2 * 2)
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    common = ["--ckpt", ckpt, "--sampler", "ddim", "--steps", "3", "--num", "5", "--no-progress"]

    def sample(name: str, *flags: str) -> tuple[dict, np.ndarray, np.ndarray]:
        assert sample_main([*common, "--out", str(tmp_path / name), *flags]) == 0
        files = np.load(tmp_path / name / "samples.npz")
        return json.loads((tmp_path / name / "info.json").read_text()), files["samples"], files["labels"]

    seen: list = []
    forward = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, x, t, y=None: seen.append(y.tolist()) or forward(self, x, t, y))
    info, guided, y = sample("guided", "--class", "3", "--guidance", "2")
    assert (tmp_path / "guided" / "grid.png").stat().st_size > 0
    assert (info["classes"], info["guidance"], info["forward_batch_factor"], info["nfe_per_sample"]) == ([3], 2.0, 2, 3)
    assert y.tolist() == [3] * 5 and seen == [[3] * 5 + [10] * 5] * 3  # 3 doubled forwards: class 3, then null
    seen.clear()
    info, plain, y = sample("plain")  # default: class i % 10, conditional (w = 0), no doubled batch
    assert (info["classes"], info["guidance"], info["forward_batch_factor"], info["nfe_per_sample"]) == (
        list(range(10)), 0.0, 1, 3)
    assert y.tolist() == [0, 1, 2, 3, 4] and seen == [[0, 1, 2, 3, 4]] * 3
    _, three, _ = sample("three", "--class", "3")  # sample i keeps its noise (seed + i) whatever its class
    np.testing.assert_allclose(three[3], plain[3], rtol=0, atol=1e-6)
    _, _, y = sample("cycle", "--class", "1,7", "--batch-size", "2")
    assert y.tolist() == [1, 7, 1, 7, 1] and seen[-3:] == [[1]] * 3  # the last batch holds sample 4 alone
    # compiled (a stand-in compiler): the last batch is padded to full size with the cycle's next labels
    monkeypatch.setattr(UNet, "forward", forward)
    monkeypatch.setitem(accel.COMPILE_OPTIONS, "backend", lambda gm, inputs: gm.forward)
    calls: list = []
    compiled_forward = accel.Compiled.forward
    monkeypatch.setattr(accel.Compiled, "forward",
                        lambda self, x, t, **c: calls.append(c["y"].tolist()) or compiled_forward(self, x, t, **c))
    flags = ("--class", "1,7,4", "--batch-size", "2", "--guidance", "1.5")
    _, padded, y = sample("padded", *flags, "--compile")
    assert y.tolist() == [1, 7, 4, 1, 7]
    assert calls == [[1, 7, 10, 10]] * 3 + [[4, 1, 10, 10]] * 3 + [[7, 4, 10, 10]] * 3  # samples 4 and 5, cut
    _, eager, _ = sample("eager", *flags)
    np.testing.assert_allclose(padded, eager, rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    for bad, message in [(["--class", "10"], "--class takes class indices in [0, 10)"),
                         (["--class", "-1"], "--class takes class indices in [0, 10)"),
                         (["--class", "two"], "--class takes class indices in [0, 10)"),
                         (["--guidance", "-0.5"], "--guidance must be a finite number >= 0"),
                         (["--guidance", "nan"], "--guidance must be a finite number >= 0")]:
        assert sample_main([*common, "--out", str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err


def test_sample_cli_refuses_classes_and_guidance_on_an_unconditional_checkpoint(tmp_path, capsys):
    from genflow.cli.sample import main as sample_main

    trainer(tmp_path / "run", "model.num_classes=null", "trainer.batch_size=16", "trainer.steps=1",
            "trainer.ckpt_every=1", "trainer.num_samples=1").fit()
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    for flags in (["--class", "3"], ["--guidance", "1"]):
        assert sample_main(["--ckpt", ckpt, "--num", "2", "--no-progress", "--out", str(tmp_path / "s"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "need a class-conditional checkpoint" in err, err
