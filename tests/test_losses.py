"""Training losses: the exact oracle is their minimizer, and their expectation has a closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from conftest import PROCESS_FACTORIES
from genflow.processes import DDPM, PREDICTIONS, VESDE, VPSDE, FlowMatching, GaussianPath, SubVPSDE, ot_pairing
from genflow.testing import GaussianMixture, perturbed

MU, VAR = (0.7, -0.4), 0.3  # single-Gaussian data N(MU, VAR I)


def single_gaussian() -> GaussianMixture:
    return GaussianMixture.isotropic([list(MU)], [VAR**0.5])


def conditional_variance(process, t: float) -> float:
    """Var(target | x_t) per dimension for N(mu, v I) data; target = c1 x0 + c2 eps in loss space."""
    c = process.coefficients(torch.tensor([t], dtype=torch.float64))
    a, s, da, ds = (float(v) for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
    c1, c2 = {"eps": (0.0, 1.0), "velocity": (da, ds)}[process.loss_space]
    return c1**2 * VAR + c2**2 - (c1 * a * VAR + c2 * s) ** 2 / (a**2 * VAR + s**2)


def expected_loss(process) -> float:
    """E_t[w(t) Var(target | x_t)] by summation (DDPM) or quadrature (continuous time)."""
    if isinstance(process, DDPM):
        return float(np.mean([conditional_variance(process, n) for n in range(process.timesteps)]))
    likelihood = getattr(process, "weighting", "sigma2") == "likelihood"

    def integrand(t: float) -> float:
        tt = torch.tensor([t], dtype=torch.float64)  # lambda = g^2 on the score is g^2/sigma^2 on eps
        w = float(process.diffusion_sq(tt) / process.sigma(tt) ** 2) if likelihood else 1.0
        return w * conditional_variance(process, t)

    lo, hi = process.t_min, process.t_max
    breaks = [lo * 10**k for k in range(1, 6) if lo * 10**k < hi]  # resolve the 1/t growth near eps
    total, _ = quad(integrand, lo, hi, points=breaks or None, limit=500, epsabs=1e-12, epsrel=1e-10)
    return total / (hi - lo)


def monte_carlo(process, batches: int, batch: int, seed: int = 0) -> np.ndarray:
    oracle = single_gaussian()
    model = oracle.model(process)
    gen = torch.Generator().manual_seed(seed)
    return np.array([process.loss(model, oracle.sample(batch, generator=gen), generator=gen).item() for _ in range(batches)])


LOSS_CASES = {  # the regression losses (a CNF's is its likelihood; DDPM's cases at T = 200 below)
    **{name: factory for name, factory in PROCESS_FACTORIES.items()
       if not factory().discrete and type(factory()).loss is GaussianPath.loss},
    "ddpm_linear_T200": lambda: DDPM(timesteps=200),
    "ddpm_cosine_T200": lambda: DDPM(timesteps=200, beta_schedule="cosine"),
    "vpsde_likelihood": lambda: VPSDE(weighting="likelihood"),
    "vpsde_likelihood_is": lambda: VPSDE(weighting="likelihood", importance_sampling=True),
    "subvpsde_likelihood_is": lambda: SubVPSDE(weighting="likelihood", importance_sampling=True),
    "vesde_likelihood_is": lambda: VESDE(weighting="likelihood", importance_sampling=True),
}



@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_loss_expectation_matches_closed_form(name):
    process = LOSS_CASES[name]()
    values = monte_carlo(process, batches=20, batch=10_000)
    se = values.std(ddof=1) / np.sqrt(len(values))
    expected = expected_loss(process)
    assert abs(values.mean() - expected) < 4 * se + 1e-3 * abs(expected), (values.mean(), expected, se)


def test_importance_sampling_keeps_the_objective_and_cuts_variance():
    plain = monte_carlo(VPSDE(weighting="likelihood"), batches=20, batch=5_000, seed=1)
    weighted = monte_carlo(VPSDE(weighting="likelihood", importance_sampling=True), batches=20, batch=5_000, seed=1)
    se = np.hypot(plain.std(ddof=1), weighted.std(ddof=1)) / np.sqrt(20)
    assert abs(plain.mean() - weighted.mean()) < 4 * se
    assert weighted.std() < 0.5 * plain.std()


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
@pytest.mark.parametrize("delta", [-0.05, 0.05])
def test_exact_oracle_beats_any_perturbed_oracle(name, delta):
    process = LOSS_CASES[name]()
    oracle = GaussianMixture.isotropic([[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.5])
    x0 = oracle.sample(16_384, generator=torch.Generator().manual_seed(7))
    exact = oracle.model(process)
    loss = lambda model: process.loss(model, x0, generator=torch.Generator().manual_seed(8)).item()  # noqa: E731
    assert loss(exact) < loss(perturbed(exact, delta))


def test_loss_does_not_depend_on_the_parametrization():
    """The same DSM objective whatever the network predicts: conversions are exact."""
    oracle = single_gaussian()
    x0 = oracle.sample(4096, generator=torch.Generator().manual_seed(9))
    values = []
    for kind in PREDICTIONS:
        vp = VPSDE(prediction=kind)
        values.append(vp.loss(oracle.model(vp), x0, generator=torch.Generator().manual_seed(10)).item())
    np.testing.assert_allclose(values, values[0], rtol=1e-9)


def test_ddpm_loss_is_ho_l_simple():
    """Ho et al. Alg. 1: ||eps - eps_theta(sqrt(abar) x0 + sqrt(1 - abar) eps, n)||^2, n ~ U{0..T-1}."""
    ddpm = DDPM(timesteps=50)
    seen = {}

    def model(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    x0 = torch.randn(512, 3, dtype=torch.float64)
    loss = ddpm.loss(model, x0, generator=torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(11)
    n = torch.randint(0, 50, (512,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    assert torch.equal(seen["t"], n.double())
    assert loss.item() == pytest.approx((eps**2).mean().item(), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_data_keeps_float32_times(dtype):
    seen = {}

    def model(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    for process in (DDPM(), VPSDE()):
        assert torch.isfinite(process.loss(model, torch.randn(256, 2).to(dtype)))
        assert seen["t"].dtype == torch.float32 and seen["t"].max() <= process.t_max


def test_ot_coupling_reaches_the_loss():
    """With coupling="ot" the regression target pairs each x0 with its OT-assigned noise."""
    fm = FlowMatching(coupling="ot")
    x0 = torch.randn(128, 2, generator=torch.Generator().manual_seed(14), dtype=torch.float64) + 3.0
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731  loss = mean |target|^2
    gen = torch.Generator().manual_seed(15)
    t = torch.rand(128, generator=gen, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    paired = noise[ot_pairing(x0, noise)]
    expected = ((paired - x0) ** 2).mean()  # velocity target -x0 + eps on the linear path
    assert fm.loss(zero, x0, generator=torch.Generator().manual_seed(15)).item() == pytest.approx(expected.item(), rel=1e-12)
    assert t.shape == (128,)


def test_class_labels_reach_the_model():
    oracle = GaussianMixture.isotropic([[-3.0, 0.0], [3.0, 0.0]], [0.3, 0.3])
    x0, y = oracle.sample(4096, generator=torch.Generator().manual_seed(12), return_labels=True)
    vp = VPSDE()
    model = oracle.model(vp)
    gen = lambda: torch.Generator().manual_seed(13)  # noqa: E731
    assert vp.loss(model, x0, y=y, generator=gen()) < vp.loss(model, x0, y=1 - y, generator=gen())
