"""scripts/bench_peers.py's conventions: the peers' variables against closed forms (no peer needed),
and one end-to-end parity with k-diffusion where it is installed (skipped otherwise)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from genflow.processes import DDPM, VPSDE
from genflow.samplers import noise_grid, run
from genflow.testing import GaussianMixture

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
F64 = torch.float64
MU, VAR = torch.tensor([0.5, -1.0], dtype=F64), 0.25


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("bench_peers", SCRIPTS / "bench_peers.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))


def gaussian() -> GaussianMixture:
    return GaussianMixture.isotropic([MU.tolist()], [VAR**0.5])


def test_k_denoiser_is_the_posterior_mean_in_k_diffusions_variables(bench):
    """x = x_vp / alpha = x0 + s eps, so E[x0 | x] = mu + v / (v + s^2) (x - mu) for N(mu, v I) data."""
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 3
    s = torch.tensor([0.01, 0.3, 1.0, 2.5, 40.0, 157.0], dtype=F64)
    expected = MU + (VAR / (VAR + s**2))[:, None] * (x - MU)
    torch.testing.assert_close(bench.k_denoiser(gaussian())(x, s), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("process", [DDPM(timesteps=1000), VPSDE()], ids=["ddpm", "vpsde"])
def test_diffusers_betas_and_eps_model_are_the_process_at_its_timesteps(bench, process):
    """alpha-bar of the betas handed to diffusers is alpha(t_n)^2 (DDPM: its own betas), and the
    eps-model at timestep n is E[eps | x_t] for N(mu, v I) data: sigma (x - alpha mu) / (alpha^2 v + sigma^2)."""
    betas = bench.discrete_betas(process)
    times = bench.discrete_times(process)
    c = process.coefficients(times)
    torch.testing.assert_close(torch.cumprod(1 - betas, 0), c.alpha**2, rtol=1e-12, atol=1e-15)
    if process.discrete:
        torch.testing.assert_close(betas, process.betas, rtol=1e-9, atol=1e-15)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    for n in (0, 417, 999):
        a, sig = float(c.alpha[n]), float(c.sigma[n])
        expected = sig * (x - a * MU) / (a**2 * VAR + sig**2)
        torch.testing.assert_close(bench.eps_model(gaussian(), process)(x, torch.tensor(n)), expected,
                                   rtol=1e-10, atol=1e-12)


def test_k_diffusion_dpmpp_2m_equals_genflows_on_one_grid(bench):
    """End to end through the wrapper: k-diffusion's sample_dpmpp_2m on genflow's grid (levels s,
    then 0) from x_T / alpha(t_max) gives genflow's dpmpp_2m samples."""
    k = bench.load_k_sampling() if importlib.util.find_spec("k_diffusion") else None
    if k is None:
        pytest.skip("k-diffusion is not installed (pip install genflow[bench])")
    process, target = VPSDE(), gaussian()
    x_t = process.prior_std() * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    ours = run(target.model(process), process, sampler="dpmpp_2m", steps=10, noise=x_t).samples
    sigmas = torch.tensor([*noise_grid(process, 10).sigmas, 0.0], dtype=F64)
    alpha_top = float(process.coefficients(torch.tensor([process.t_max], dtype=F64)).alpha)
    theirs = k.sample_dpmpp_2m(bench.k_denoiser(target), x_t / alpha_top, sigmas, disable=True)
    torch.testing.assert_close(theirs, ours, rtol=1e-10, atol=1e-10)


def test_genflows_whole_path_grid_is_k_diffusions_karras_grid(bench):
    """A ``-full`` setting runs the grid of the peers' ``karras`` (from s(t_max) to s(t_min), then
    0): genflow's dpmpp_2m on it gives k-diffusion's sample_dpmpp_2m samples on k_sigmas(karras)."""
    k = bench.load_k_sampling() if importlib.util.find_spec("k_diffusion") else None
    if k is None:
        pytest.skip("k-diffusion is not installed (pip install genflow[bench])")
    process, target = DDPM(timesteps=1000), gaussian()  # s(t_min) = 0.01 > 0.002: the same bottom
    problem = bench.Problem.of("gaussian", target, process)
    x_t = process.prior_std() * torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    sets = bench.genflow_settings()
    assert sets["gf dpmpp_2m karras-full"] == ("dpmpp_2m", {"schedule": "karras", "full": True})
    ours, nfe = bench.run_genflow(sets["gf dpmpp_2m karras-full"], problem, x_t.clone(), 8)
    theirs, calls = bench.run_k(bench.k_settings(k)["kd dpmpp_2m karras"], problem, x_t.clone(), 8)
    assert nfe == calls == 8
    torch.testing.assert_close(theirs, ours, rtol=1e-9, atol=1e-9)
    default, _ = bench.run_genflow(sets["gf dpmpp_2m karras"], problem, x_t.clone(), 8)  # from 80: another grid
    assert (default - ours).abs().max() > 1e-3


def test_the_summary_picks_by_the_sw_rule_and_pairs_the_seeds(bench, capsys):
    """best: the smallest |mean gap| among rows with sw <= 1.5 x floor (a row outside is passed over
    however small its gap; learned rows only in the learned column); paired: the mean ± sd over
    the seeds of |gap| genflow - |gap| peer, here negative though the peer's mean gap is nearer 0."""
    def row(setting, gaps, sw=0.10):
        return {"target": "ring-2d", "process": "vpsde", "nfe": 20, "used": 20, "setting": setting,
                "gap": sum(gaps) / len(gaps), "gaps": gaps, "sw": sw, "floor": 0.1}

    rows = [row("gf dpmpp_3m karras", [-0.1, 0.05, -0.007]), row("gf lms time", [0.0, 0.0, 0.0], sw=0.16),
            row("gf lms learned", [0.002, 0.0, 0.001]), row("kd dpm_fast", [0.15, -0.1, -0.041]),
            row("df UniPCMultistep o2", [0.2, 0.2, 0.2])]
    bench.summary(rows, [20])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| ring-2d"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:5] == ["gf dpmpp_3m karras", "-0.019 / 0.100"] and cells[5] == "gf lms learned"
    assert cells[7:9] == ["kd dpm_fast", "+0.003 / 0.100"] and cells[9] == "no" and cells[11] == "yes"
    diffs = [0.1 - 0.15, 0.05 - 0.1, 0.007 - 0.041]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    assert cells[10] == f"{mean:+.3f} ± {sd:.3f}"
