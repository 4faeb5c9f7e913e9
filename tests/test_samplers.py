"""Samplers against exact answers: the single-Gaussian PF-ODE solution, paper formulas, moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genflow
from genflow.metrics import sliced_wasserstein
from conftest import CosinePath
from genflow import processes
from genflow.processes import DDPM, VPSDE, FlowMatching
from genflow.samplers import SAMPLERS, run, time_grid
from genflow.testing import GaussianMixture

MU, VAR = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.25
F64 = dict(dtype=torch.float64)


def gaussian() -> GaussianMixture:
    return GaussianMixture.isotropic([MU.tolist()], [VAR**0.5])


def exact_flow(process, x: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """The PF-ODE for N(mu, v I) data keeps (x - alpha mu) / sqrt(alpha^2 v + sigma^2) constant."""
    ct, cs = (process.coefficients(torch.tensor([u], **F64)) for u in (t, s))
    scale = torch.sqrt((cs.alpha**2 * VAR + cs.sigma**2) / (ct.alpha**2 * VAR + ct.sigma**2))
    return cs.alpha * MU + scale * (x - ct.alpha * MU)


def start(n: int = 256, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), **F64)


#: the registry's processes (DDPM with its default T = 1000) and a path given by its coefficients alone
PROCESSES = {**processes.PROCESSES, "cosine_path": CosinePath}
CONTINUOUS = sorted(name for name, factory in PROCESSES.items() if not factory().discrete)


def fitted_order(steps, errors) -> float:
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize("name", CONTINUOUS)
@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_first_order_convergence_to_the_exact_ode_solution(name, sampler):
    process = PROCESSES[name]()
    model = gaussian().model(process)
    x = start(scale=process.prior_std())
    target = exact_flow(process, x, process.t_max, process.t_min)
    steps, errors = [20, 40, 80, 160], []
    for n in steps:
        if sampler == "ddim":
            out = run(model, process, sampler="ddim", steps=n + 1, noise=x, denoise=False).samples
        else:
            out = run(model, process, sampler="ode", method="euler", steps=n, noise=x, denoise=False).samples
        errors.append((out - target).abs().max().item())
    order = fitted_order(steps, errors)
    print(f"{name} {sampler}: errors {errors}, fitted order {order:.2f}")
    assert 0.8 < order < 1.3, (errors, order)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_dopri5_matches_the_exact_ode_solution(name):
    process = PROCESSES[name]()
    model = gaussian().model(process)
    x = start(scale=process.prior_std())
    result = run(model, process, sampler="ode", noise=x, rtol=1e-7, atol=1e-7, denoise=False)
    target = exact_flow(process, x, process.t_max, process.t_min)
    assert (result.samples - target).abs().max().item() < 1e-5
    assert result.nfe > 0


def test_ddim_step_equals_the_paper_formula():
    """One DDIM step 999 -> 0 on DDPM, eq. 12 written out with numpy's abar, eta = 0 and eta = 0.7."""
    ddpm = DDPM()
    model = gaussian().model(ddpm)
    x = start(64)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    a_t, a_s = abar[999], abar[0]
    eps = model(x, torch.full((64,), 999.0, **F64))
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    for eta in (0.0, 0.7):
        sig = eta * np.sqrt((1 - a_s) / (1 - a_t)) * np.sqrt(1 - a_t / a_s)
        gen = torch.Generator().manual_seed(3)
        out = run(model, ddpm, sampler="ddim", steps=2, eta=eta, noise=x, denoise=False, generator=gen).samples
        z = genflow.samplers.NoiseSource.from_generator(64, torch.Generator().manual_seed(3), x.device, x.dtype).randn((2,))
        expected = np.sqrt(a_s) * x0 + np.sqrt(1 - a_s - sig**2) * eps + sig * z
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_ddim_eta_one_is_ddpm_ancestral():
    """DDIM with eta = 1 samples DDPM's posterior (DDIM paper, sec. 4.1): identical given the noise."""
    ddpm = DDPM(timesteps=100)
    model = GaussianMixture.isotropic([[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.2]).model(ddpm)
    kw = dict(steps=100, shape=(128, 2), dtype=torch.float64)
    a = run(model, ddpm, sampler="ddim", eta=1.0, generator=torch.Generator().manual_seed(4), **kw)
    b = run(model, ddpm, sampler="ddpm", generator=torch.Generator().manual_seed(4), **kw)
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-9, atol=1e-9)
    assert a.nfe == b.nfe == 100


def test_ddpm_ancestral_step_is_ho_algorithm_2():
    """x_{n-1} = (x_n - beta_n / sqrt(1 - abar_n) eps) / sqrt(alpha_n) + sigma_n z, sigma_n^2 = beta_n."""
    ddpm = DDPM(timesteps=2, betas=[0.1, 0.3])
    model = gaussian().model(ddpm)
    x = start(32)
    out = run(model, ddpm, sampler="ddpm", steps=2, variance="beta", noise=x, generator=torch.Generator().manual_seed(5))
    eps1 = model(x, torch.ones(32, **F64))
    z = genflow.samplers.NoiseSource.from_generator(32, torch.Generator().manual_seed(5), x.device, x.dtype).randn((2,))
    abar1 = 0.9 * 0.7
    x_prev = (x - 0.3 / np.sqrt(1 - abar1) * eps1) / np.sqrt(0.7) + np.sqrt(0.3) * z
    eps0 = model(x_prev, torch.zeros(32, **F64))
    expected = (x_prev - np.sqrt(0.1) * eps0) / np.sqrt(0.9)  # the last step returns x0 (z = 0)
    torch.testing.assert_close(out.samples, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "name,sampler,options",
    [
        ("ddpm", "ddpm", dict(steps=1000)),
        ("ddpm", "ddpm", dict(steps=1000, variance="beta")),
        ("ddpm", "ddim", dict(steps=200, eta=1.0)),
        ("vpsde", "euler_maruyama", dict(steps=500)),
        ("vesde", "euler_maruyama", dict(steps=500)),
        ("vpsde", "pc", dict(steps=300)),
        ("subvpsde", "pc", dict(steps=300, predictor="euler_maruyama")),
        ("vesde", "pc", dict(steps=300)),
        ("ddpm", "euler_maruyama", dict(steps=500)),
    ],
)
def test_stochastic_samplers_recover_the_moments(name, sampler, options):
    process = PROCESSES[name]()
    n = 3000
    out = genflow.sample(gaussian().model(process), process, sampler=sampler, shape=(n, 2), dtype=torch.float64,
                         generator=torch.Generator().manual_seed(6), **options)
    se_mean = (VAR / n) ** 0.5
    se_var = VAR * (2 / n) ** 0.5
    assert bool(((out.mean(0) - MU).abs() < 5 * se_mean + 0.01).all()), out.mean(0)
    assert bool(((out.var(0) - VAR).abs() < 5 * se_var + 0.01).all()), out.var(0)


def ring() -> GaussianMixture:
    """Eight modes (std 0.15) on a circle of radius 2: far from Gaussian, exact score known."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * np.pi / 8)
    return GaussianMixture.isotropic(torch.stack([2 * angles.cos(), 2 * angles.sin()], 1), [0.15] * 8)


RING_N = 2000


def ring_sw(samples: torch.Tensor, reference: torch.Tensor) -> float:
    return sliced_wasserstein(samples, reference, num_projections=512, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def ring_floor():
    """The reference set, and the largest SW a sampler may show: mean + 2.5 sd of SW between
    independent true sets of the same size (the sampling-noise floor)."""
    sets = [ring().sample(RING_N, generator=torch.Generator().manual_seed(100 + i)) for i in range(9)]
    floors = torch.tensor([ring_sw(other, sets[0]) for other in sets[1:]])
    return sets[0], float(floors.mean() + 2.5 * floors.std())


@pytest.mark.parametrize(
    "name,sampler,options,good",
    [
        ("ddpm", "ddpm", dict(steps=1000), True),
        ("vpsde", "euler_maruyama", dict(steps=500), True),
        ("subvpsde", "euler_maruyama", dict(steps=500), True),
        ("vesde", "pc", dict(steps=200), True),
        ("vpsde", "pc", dict(steps=200, predictor="euler_maruyama"), True),
        ("vpsde", "euler_maruyama", dict(steps=10), False),  # the control: too few steps is caught
    ],
)
def test_stochastic_samplers_reach_the_sliced_wasserstein_floor_on_a_mixture(ring_floor, name, sampler, options,
                                                                                good):
    reference, limit = ring_floor
    process = PROCESSES[name]()
    out = genflow.sample(ring().model(process), process, sampler=sampler, shape=(RING_N, 2), dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3), **options)
    distance = ring_sw(out, reference)
    print(f"{name} {sampler} {options}: SW {distance:.4f}, floor limit {limit:.4f}")
    assert (distance < limit) == good, (distance, limit)


@pytest.mark.parametrize("sampler,tol", [("ode", 1e-4), ("ddim", 0.1)])  # DDIM inversion at 100 steps: 0.04-0.08 measured
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_encode_then_decode_reconstructs(name, sampler, tol):
    process = PROCESSES[name]()
    oracle = GaussianMixture.isotropic([[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.2])
    model = oracle.model(process)
    x0 = oracle.sample(128, generator=torch.Generator().manual_seed(7))
    kw = dict(rtol=1e-7, atol=1e-7) if sampler == "ode" else {}
    z = genflow.encode(model, process, x0, sampler=sampler, steps=100, **kw)
    back = genflow.sample(model, process, sampler=sampler, steps=100, noise=z, denoise=False, **kw)
    err = (back - x0).abs().max().item()
    print(f"encode/decode {name} {sampler}: max error {err:.2e}")
    assert err < tol


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_reproducible_and_independent_of_batch_size(sampler):
    process = DDPM(timesteps=50) if sampler == "ddpm" else VPSDE()
    model = GaussianMixture.isotropic([[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.2]).model(process)
    opts = dict(sampler=sampler, steps=20, dtype=torch.float64)
    if sampler == "ddim":
        opts["eta"] = 0.5
    if sampler == "ode":  # an adaptive solver's step size depends on the whole batch; fixed steps do not
        opts["method"] = "rk4"
    big = genflow.sample(model, process, shape=(8, 2), generator=torch.Generator().manual_seed(8), **opts)
    again = genflow.sample(model, process, shape=(8, 2), generator=torch.Generator().manual_seed(8), **opts)
    small = genflow.sample(model, process, shape=(4, 2), generator=torch.Generator().manual_seed(8), **opts)
    rest = genflow.sample(model, process, shape=(4, 2), generator=torch.Generator().manual_seed(8), seed_offset=4, **opts)
    assert torch.equal(big, again)
    torch.testing.assert_close(small, big[:4], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rest, big[4:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("event", [(2,), (3, 5, 5)])
def test_noise_source_streams_are_each_samples_own_generator(event):
    """Sample i's k-th draw is the k-th of torch.randn from Generator(seed + offset + i), whatever
    the refills' chunk sizes (336 draws of 2 values are chunks of 16, 64 and 256 steps)."""
    source = genflow.samplers.NoiseSource(3, 40, torch.device("cpu"), torch.float64, offset=5)
    draws = torch.stack([source.randn(event) for _ in range(336)], 1)
    for i in range(3):
        own = torch.randn((336, *event), generator=torch.Generator().manual_seed(45 + i), **F64)
        assert torch.equal(draws[i], own)


class _Probe(DDPM):
    """DDPM that records how many times each call of ``coefficients`` was given."""

    def __init__(self) -> None:
        super().__init__(timesteps=100)
        self.sizes: list[int] = []

    def coefficients(self, t):
        self.sizes.append(t.numel())
        return super().coefficients(t)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler_maruyama", "pc", "dpmpp_2m", "heun"])
def test_a_step_computes_its_coefficients_once_and_the_network_gets_one_time_expanded(sampler):
    """Every example of a step shares one time: coefficients on one element (not the batch's 37),
    and the network's time vector is that one value for all, contiguous (one layout: test_accel)."""
    process, seen = _Probe(), []
    model = gaussian().model(process)

    def net(x, t):
        seen.append(t.is_contiguous() and t.shape == (37,) and bool((t == t[0]).all()))
        return model(x, t)

    run(net, process, sampler=sampler, steps=10, shape=(37, 2), **F64)
    assert all(seen) and len(seen) >= 10
    process.sizes.clear()
    run(lambda x, t: x, process, sampler=sampler, steps=10, shape=(37, 2), **F64)
    assert 37 not in process.sizes


def test_nfe_is_counted():
    vp, ddpm = VPSDE(), DDPM(timesteps=100)
    model = gaussian().model(vp)
    kw = dict(shape=(4, 2), dtype=torch.float64)
    assert run(model, vp, sampler="ddim", steps=10, **kw).nfe == 10
    assert run(model, vp, sampler="euler_maruyama", steps=10, **kw).nfe == 11
    assert run(model, vp, sampler="pc", steps=10, corrector_steps=2, **kw).nfe == 31
    assert run(model, vp, sampler="ode", method="rk4", steps=10, **kw).nfe == 41
    assert run(gaussian().model(ddpm), ddpm, sampler="ddpm", steps=100, **kw).nfe == 100


def test_time_grids():
    ddpm = DDPM(timesteps=1000)
    assert time_grid(ddpm, 10, "leading").tolist() == list(range(900, -1, -100))
    assert time_grid(ddpm, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert time_grid(ddpm, 4, "linspace").tolist() == [999, 666, 333, 0]
    quad = time_grid(ddpm, 5, "quadratic").tolist()  # DDIM code: int(linspace(0, sqrt(800), n)^2)
    assert quad == [int(v) for v in (np.linspace(0, np.sqrt(800), 5) ** 2)][::-1]
    vp = time_grid(VPSDE(eps=1e-3), 3)
    torch.testing.assert_close(vp, torch.tensor([1.0, 0.5005, 1e-3], **F64))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m, p: genflow.sample(m, p, sampler="dpm", shape=(2, 2)), "unknown sampler 'dpm'; valid names: ddpm, ddim"),
        (lambda m, p: genflow.sample(m, p, steps=0, shape=(2, 2)), "steps must be an integer >= 1; got 0"),
        (lambda m, p: genflow.sample(m, DDPM(timesteps=10), steps=11, shape=(2, 2)), ">= 1 and <= 10 \\(the steps of DDPM.*; got 11"),
        (lambda m, p: genflow.sample(m, p, sampler="ode", snr=0.1, shape=(2, 2)), "takes no option\\(s\\) snr; allowed: method"),
        (lambda m, p: genflow.sample(m, FlowMatching(), sampler="ddpm", shape=(2, 2)), "cannot run on FlowMatching"),
        (lambda m, p: genflow.sample(m, FlowMatching(), sampler="pc", shape=(2, 2)), "a flow has no reverse-time SDE"),
        (lambda m, p: genflow.sample(m, p, sampler="ddpm", shape=(2, 2)), "ancestral steps need DDPM"),
        (lambda m, p: genflow.sample(m, p, sampler="ode", method="magic", shape=(2, 2)), "method must be one of"),
        (lambda m, p: genflow.sample(m, p, spacing="trailing", shape=(2, 2)), "continuous processes take linspace"),
        (lambda m, p: genflow.sample(m, p), "exactly one of noise= .* or shape="),
        (lambda m, p: genflow.sample(m, p, denoise="no", shape=(2, 2)), "sampler 'ddim': denoise must be true or false"),
        (lambda m, p: genflow.sample(m, p, steps=5.0, shape=(2, 2)), "sampler 'ddim': steps must be an integer >= 1"),
        (lambda m, p: genflow.sample(m, p, sampler="pc", corrector_steps=True, shape=(2, 2)),
         "sampler 'pc': corrector_steps must be an integer >= 0; got True"),
        (lambda m, p: genflow.sample(m, p, sampler="dpmpp_2m", sigma_min=-1.0, shape=(2, 2)),
         "sampler 'dpmpp_2m': sigma_min must be a finite number > 0, or None \\(the sampler's default\\); got -1.0"),
        (lambda m, p: genflow.samplers.DDIM(eta=float("nan")), "sampler 'ddim': eta must be a finite number >= 0; got nan"),
        (lambda m, p: genflow.encode(m, p, torch.zeros(2, 2), sampler="pc"), "encode takes sampler 'ddim' or 'ode'"),
    ],
)
def test_bad_sampler_input(call, match):
    vp = VPSDE()
    with pytest.raises(ValueError, match=match):
        call(gaussian().model(vp), vp)


# ------------------------------------------------ the cosine path: right or refused, never NaN
COSINE_CASES = [(name, {}) for name in sorted(SAMPLERS)] + [("ddim", {"eta": 1.0}), ("pc", {"predictor": "euler_maruyama"})]


@pytest.mark.parametrize("sampler,options", COSINE_CASES, ids=[f"{n}{'-' if o else ''}{'-'.join(map(str, o.values()))}"
                                                              for n, o in COSINE_CASES])
def test_every_sampler_on_the_cosine_path_is_right_or_refuses_in_one_line(sampler, options):
    """alpha = cos(pi t/2) has alpha(1) = 6e-17: the reverse SDE's drift alpha'/alpha is -2.6e16 at t = 1.
    Each sampler returns finite samples with the data's mean and covariance, or refuses up front."""
    process, n = CosinePath(), 2000
    data = GaussianMixture([[0.5, -1.0]], [[[0.5, 0.2], [0.2, 0.3]]])
    steps = max(SAMPLERS[sampler]().steps, 50)
    try:
        out = genflow.sample(data.model(process), process, sampler=sampler, steps=steps, shape=(n, 2),
                             dtype=torch.float64, generator=torch.Generator().manual_seed(11), **options)
    except ValueError as err:
        assert "\n" not in str(err) and f"sampler {sampler!r} cannot run on CosinePath" in str(err), err
        print(f"{sampler} {options}: refused: {err}")
        return
    assert torch.isfinite(out).all()
    cov, mean = data.covs[0], data.means[0]
    se_mean = (cov.diagonal() / n).sqrt()
    se_cov = (cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2).sqrt() / n**0.5
    print(f"{sampler} {options}: mean error {(out.mean(0) - mean).tolist()}, cov error {(torch.cov(out.T) - cov).tolist()}")
    assert bool(((out.mean(0) - mean).abs() < 5 * se_mean + 0.01).all())
    assert bool(((torch.cov(out.T) - cov).abs() < 5 * se_cov + 0.02).all())


def test_the_cosine_path_refuses_exactly_the_reverse_sde_steps():
    """The reverse SDE's Euler steps need f = alpha'/alpha at t = 1; the discrete transitions do not."""
    process, model = CosinePath(), gaussian().model(CosinePath())
    for sampler, options in [("euler_maruyama", {}), ("pc", {"predictor": "euler_maruyama"})]:
        with pytest.raises(ValueError, match=r"its reverse SDE is not finite at t = 1 \(alpha = 6.12e-17, "
                                             r"f = alpha'/alpha = -2.57e\+16"):
            genflow.sample(model, process, sampler=sampler, steps=10, shape=(2, 2), **options)
    assert genflow.samplers.run(model, process, sampler="pc", steps=10, shape=(2, 2)).nfe == 21


def nan_below(model, t_bad: float):
    """``model`` whose output is NaN at times below ``t_bad``."""
    def broken(x, t, **cond):
        out = model(x, t, **cond)
        return torch.where((t < t_bad)[:, None], torch.nan, out)
    return broken


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_no_sampler_returns_non_finite_samples(sampler):
    """A network that breaks below t = 0.5 on VP: every sampler refuses with NonFiniteSamples, naming
    the first evaluation that went wrong; nothing non-finite comes back."""
    process = DDPM(timesteps=100) if SAMPLERS[sampler] is genflow.samplers.DDPMAncestral else VPSDE()
    t_bad = 0.5 * process.t_max
    model = nan_below(gaussian().model(process), t_bad)
    with pytest.raises(genflow.samplers.NonFiniteSamples) as err:
        genflow.sample(model, process, sampler=sampler, steps=10, shape=(4, 2), dtype=torch.float64)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"sampler {sampler!r} on {process!r} gave non-finite samples")
    evaluation, t = message.split("first in network evaluation ")[1].split(", at t = ")
    assert float(t.rstrip(")")) < t_bad and isinstance(err.value, RuntimeError)
    assert int(evaluation.split(" of ")[0]) >= 2  # the evaluations before were finite


def test_the_first_non_finite_evaluation_is_found():
    process = VPSDE()
    model = nan_below(gaussian().model(process), 0.45)  # DDIM's 11 steps: 1, 0.9, ..., 0.5, 0.4 (+ 1e-5 t_min)
    with pytest.raises(genflow.samplers.NonFiniteSamples,
                       match=r"first in network evaluation 7 of 11, at t = 0.400006\)"):
        genflow.sample(model, process, sampler="ddim", steps=11, shape=(4, 2), dtype=torch.float64)


# ------------------------------------------------ a sampler is one class plus one dict entry
def test_a_sampler_registered_from_outside_is_in_every_registry_parametrized_test():
    """tests/throwaway_sampler.py registers a sampler as a pytest plugin; the tests parametrized over
    SAMPLERS collect it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    files = [str(tests / name) for name in ("test_samplers.py", "test_guidance.py", "test_cuda.py")]
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "throwaway_sampler", "-p", "no:cacheprovider",
                           "--collect-only", "-q", *files], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ids = [line for line in done.stdout.splitlines() if "tempered_euler" in line]
    for test in ("test_reproducible_and_independent_of_batch_size", "test_no_sampler_returns_non_finite_samples",
                 "test_every_sampler_on_the_cosine_path_is_right_or_refuses_in_one_line",
                 "test_every_sampler_is_guided_through_one_doubled_forward_per_evaluation",
                 "test_cuda_graph_samples_equal_eager_samples"):
        assert any(test in line for line in ids), (test, ids)


def test_a_registered_sampler_is_built_checked_and_run(monkeypatch):
    from throwaway_sampler import TemperedEuler

    monkeypatch.setitem(SAMPLERS, "tempered_euler", TemperedEuler)
    process = VPSDE()
    model = gaussian().model(process)
    with pytest.raises(ValueError, match="sampler 'tempered_euler' takes no option\\(s\\) eta; allowed: temperature"):
        genflow.samplers.make("tempered_euler", 4, eta=0.5)
    for bad in (0.0, 3.0, float("nan")):
        with pytest.raises(ValueError, match=f"sampler 'tempered_euler': temperature must be a finite number > 0 and "
                                             f"<= 2; got {bad}"):
            genflow.samplers.make("tempered_euler", 4, temperature=bad)
    with pytest.raises(ValueError, match="need a CUDA device"):  # fixed-step: only the device is refused
        genflow.samplers.check_graphable(genflow.samplers.make("tempered_euler", 4), "cpu")
    cold = run(model, process, sampler="tempered_euler", steps=200, shape=(4000, 2), temperature=0.5,
               generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    warm = genflow.sample(model, process, sampler="tempered_euler", steps=200, shape=(4000, 2),
                          generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert cold.nfe == 201 and abs(warm.var(0) - VAR).max() < 0.03  # Euler on the PF-ODE: the data's spread
    assert bool((cold.samples.var(0) < 0.5 * VAR).all())  # a cold start: sharper samples


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_declares_its_options_and_has_a_config(sampler):
    """Registered under its own name, every field an option with documentation, defaults that pass its
    own checks, and a config under configs/sampler/ that builds it."""
    import dataclasses
    from pathlib import Path

    from omegaconf import OmegaConf

    cls = SAMPLERS[sampler]
    assert issubclass(cls, genflow.samplers.Sampler) and cls.name == sampler
    assert all(spec.metadata.get("doc") for spec in dataclasses.fields(cls)), sampler
    assert cls().settings() == {"steps": cls.steps, **{k: spec.default for k, spec in cls.options().items()}}
    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "configs" / "sampler" / f"{sampler}.yaml"))
    assert cfg.pop("name") == sampler
    built = genflow.samplers.make(sampler, **cfg)
    assert isinstance(built, cls) and all(getattr(built, k) == v for k, v in cfg.items())
