"""The Gaussian-path algebra of every process, checked against paper formulas and second routes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from conftest import PROCESS_FACTORIES, CosinePath, interior_times
from genflow.processes import DDPM, PREDICTIONS, VESDE, VPSDE, FlowMatching, SubVPSDE
from genflow.testing import GaussianMixture


def paper_alpha_sigma(process, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha(t), sigma(t) written out independently from each paper."""
    if isinstance(process, DDPM):  # Ho et al. eq. 4, abar as a product over steps
        betas = process.betas.numpy()
        abar = np.cumprod(1.0 - betas)
        assert torch.equal(t, t.round()), "only integer DDPM steps have a paper formula"
        a2 = torch.from_numpy(abar[t.long().numpy()])
        return a2.sqrt(), (1 - a2).sqrt()
    if isinstance(process, (VPSDE, SubVPSDE)):  # score_sde marginal_prob
        b0, b1 = process.beta_min, process.beta_max
        log_mean = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
        std = torch.sqrt(1 - torch.exp(2 * log_mean))
        return torch.exp(log_mean), std if isinstance(process, VPSDE) else 1 - torch.exp(2 * log_mean)
    if isinstance(process, VESDE):
        return torch.ones_like(t), process.sigma_min * (process.sigma_max / process.sigma_min) ** t
    if isinstance(process, CosinePath):  # its definition, through numpy
        return torch.from_numpy(np.cos(np.pi * t.numpy() / 2)), torch.from_numpy(np.sin(np.pi * t.numpy() / 2))
    assert isinstance(process, FlowMatching)  # Lipman et al. eq. 20 with t -> 1 - t
    return 1 - t, 1 - (1 - process.sigma_min) * (1 - t)


def test_alpha_sigma_match_the_papers(process):
    t = interior_times(process, 64)
    if isinstance(process, DDPM):
        t = t.round()
    a, s = paper_alpha_sigma(process, t)
    c = process.coefficients(t)
    torch.testing.assert_close(c.alpha, a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(c.sigma, s, rtol=1e-12, atol=1e-14)


def test_derivatives_agree_with_autograd(process):
    t = interior_times(process, 32).requires_grad_(True)
    c = process.coefficients(t)
    for value, derivative in ((c.alpha, c.d_alpha), (c.sigma, c.d_sigma)):
        if not value.requires_grad:  # a constant (VE's alpha = 1)
            assert bool((derivative == 0).all())
            continue
        (grad,) = torch.autograd.grad(value.sum(), t, retain_graph=True)
        torch.testing.assert_close(derivative.detach(), grad, rtol=1e-10, atol=1e-12)


def test_log_snr_is_decreasing_and_matches_definition(process):
    t = torch.sort(interior_times(process, 200)).values
    lam = process.log_snr(t)
    c = process.coefficients(t)
    torch.testing.assert_close(lam, torch.log(c.alpha**2 / c.sigma**2), rtol=1e-12, atol=1e-12)
    assert bool((lam.diff() < 0).all())


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_conversions_round_trip_through_the_hub(process, kind):
    gen = torch.Generator().manual_seed(1)
    t = interior_times(process, 256)
    x0 = torch.randn(256, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(256, 3, generator=gen, dtype=torch.float64)
    x = process.perturb(x0, t, eps)
    pred = process.from_hub(x0, eps, t, kind)
    hub = process.to_hub(pred, x, t, kind)
    torch.testing.assert_close(hub.x0, x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hub.eps, eps, rtol=1e-10, atol=1e-10)
    for other in PREDICTIONS:  # any pair, there and back, through the hub
        there = process.convert(pred, x, t, kind, other)
        torch.testing.assert_close(there, process.from_hub(x0, eps, t, other), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(process.convert(there, x, t, other, kind), pred, rtol=1e-9, atol=1e-9)


def test_v_is_salimans_and_ho():
    """v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4), with the paper's VP alpha, sigma."""
    vp = VPSDE()
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    a, s = paper_alpha_sigma(vp, t)
    x0, eps = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(vp.from_hub(x0, eps, t, "v"), a[:, None] * eps - s[:, None] * x0)
    torch.testing.assert_close(vp.from_hub(x0, eps, t, "score"), -eps / s[:, None])


def test_velocity_equals_probability_flow_drift(process):
    """E[alpha' x0 + sigma' eps | x] = f x - g^2/2 * score (Song et al. 2021, eq. 13)."""
    oracle = GaussianMixture.isotropic([[-1.0, 0.5], [1.5, -0.5]], [0.4, 0.7])
    t = interior_times(process, 128)
    x = oracle.sample_marginal(process, t, generator=torch.Generator().manual_seed(2))
    velocity = oracle.model(process, "velocity")(x, t)
    score = oracle.model(process, "score")(x, t)
    pf = process.forward_drift(x, t) - 0.5 * process.diffusion_sq(t)[:, None] * score
    torch.testing.assert_close(velocity, pf, rtol=1e-8, atol=1e-8)


def test_sampled_marginal_moments_match(process):
    """Empirical mean and covariance of x_t equal alpha mu and alpha^2 S + sigma^2 I (paper alpha, sigma)."""
    oracle = GaussianMixture(means=[[1.0, -2.0]], covs=[[[0.5, 0.2], [0.2, 0.3]]])
    n = 200_000
    gen = torch.Generator().manual_seed(3)
    for t_value in (0.2, 0.7):
        t_scalar = process.t_min + t_value * (process.t_max - process.t_min)
        if isinstance(process, DDPM):
            t_scalar = float(round(t_scalar))
        t = torch.full((n,), t_scalar, dtype=torch.float64)
        xt = oracle.sample_marginal(process, t, generator=gen)
        a, s = (v[0] for v in paper_alpha_sigma(process, t[:1]))
        mean = a * oracle.means[0]
        cov = a**2 * oracle.covs[0] + s**2 * torch.eye(2, dtype=torch.float64)
        se = (cov.diagonal() / n).sqrt()
        assert bool(((xt.mean(0) - mean).abs() < 5 * se).all())
        emp = torch.cov(xt.T)
        se_cov = (cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2).sqrt() / math.sqrt(n)
        assert bool(((emp - cov).abs() < 5 * se_cov).all()), (emp, cov)


@pytest.mark.parametrize("name", sorted(PROCESS_FACTORIES))
def test_drift_and_diffusion_reproduce_the_marginal_variance(name):
    """Moment ODEs of dx = f x dt + g dW: m' = f m, V' = 2 f V + g^2 (Sarkka & Solin eq. 5.51)."""
    process = PROCESS_FACTORIES[name]()
    process = PROCESS_FACTORIES[name](timesteps=40) if process.discrete else process
    m0, v0 = 1.3, 0.4  # data mean and variance (per dimension)
    lo, hi = process.t_min, process.t_max

    def coeffs(t):
        return process.coefficients(torch.tensor([t], dtype=torch.float64))

    # up to 0.95 where alpha(t_max) is 0 (a flow) or 0 to rounding (the cosine path): f = alpha'/alpha is unbounded
    t0, t1 = lo + 0.02 * (hi - lo), lo + (0.95 if float(coeffs(hi).alpha) < 1e-8 else 1.0) * (hi - lo)

    def rhs(t, y):
        tt = torch.tensor([t], dtype=torch.float64)
        f, g2 = float(process.drift_coef(tt)), float(process.diffusion_sq(tt))
        return [f * y[0], 2 * f * y[1] + g2]

    c0 = coeffs(t0)
    y0 = [float(c0.alpha) * m0, float(c0.alpha) ** 2 * v0 + float(c0.sigma) ** 2]
    t_eval = np.linspace(t0, t1, 9)
    max_step = 0.25 if process.discrete else np.inf  # DDPM's drift jumps at every integer step
    sol = solve_ivp(rhs, (t0, t1), y0, t_eval=t_eval, rtol=1e-11, atol=1e-12, method="DOP853", max_step=max_step)
    assert sol.success
    for t, m, v in zip(sol.t, *sol.y):
        c = coeffs(t)
        assert m == pytest.approx(float(c.alpha) * m0, rel=1e-7, abs=1e-9)
        assert v == pytest.approx(float(c.alpha) ** 2 * v0 + float(c.sigma) ** 2, rel=1e-7)


def test_prior_matches_the_path_end(process):
    """The prior is N(0, sigma(t_max)^2): its samples have that spread, its log-density is Gaussian."""
    t_end = torch.tensor([process.t_max], dtype=torch.float64)
    s = float(paper_alpha_sigma(process, t_end)[1])  # the papers' sigma at the end, not the code's
    assert process.prior_std() == pytest.approx(s, rel=1e-12)
    x = process.prior_sample((50_000, 1, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert x.std().item() == pytest.approx(s, rel=0.01)
    scale = torch.tensor(s, dtype=torch.float64)
    expected = torch.distributions.Normal(torch.zeros_like(scale), scale).log_prob(x).sum((1, 2))
    torch.testing.assert_close(process.prior_log_prob(x), expected, rtol=1e-12, atol=1e-10)


def test_known_drift_and_diffusion():
    """Closed forms from Song et al. 2021 (eqs. 9, 11, 12) and the DDPM extension's drift."""
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    vp, sub, ve = VPSDE(), SubVPSDE(), VESDE()
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(vp.drift_coef(t), -0.5 * beta)
    torch.testing.assert_close(vp.diffusion_sq(t), beta)
    big_b = 0.1 * t + 0.5 * 19.9 * t**2
    torch.testing.assert_close(sub.diffusion_sq(t), beta * (1 - torch.exp(-2 * big_b)))
    torch.testing.assert_close(ve.diffusion_sq(t), ve.sigma(t) ** 2 * 2 * math.log(50.0 / 0.01))
    ddpm = DDPM()
    n = torch.tensor([10.5, 400.25, 998.9], dtype=torch.float64)
    expected = 0.5 * torch.log1p(-ddpm.betas[n.floor().long() + 1])
    torch.testing.assert_close(ddpm.drift_coef(n), expected)


def test_ddpm_linear_and_cosine_schedules_equal_the_papers():
    T = 1000
    ddpm = DDPM(timesteps=T)
    betas = np.linspace(1e-4, 0.02, T)
    np.testing.assert_allclose(ddpm.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    cos = DDPM(timesteps=T, beta_schedule="cosine")
    f = lambda u: np.cos((u / T + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731  Nichol & Dhariwal eq. 17
    n = np.arange(T - 1)  # the last step is clipped at beta = 0.999 by the paper's rule
    np.testing.assert_allclose(cos.alphas_cumprod.numpy()[: T - 1], f(n + 1) / f(0), rtol=1e-10)
    assert cos.betas[-1].item() == pytest.approx(0.999)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_continuous_extension(schedule):
    ddpm = DDPM(timesteps=100, beta_schedule=schedule)
    n = torch.arange(100, dtype=torch.float64)
    torch.testing.assert_close(ddpm.alpha(n) ** 2, ddpm.alphas_cumprod, rtol=1e-12, atol=0)
    torch.testing.assert_close(ddpm.sigma(n) ** 2, 1 - ddpm.alphas_cumprod, rtol=1e-10, atol=1e-14)
    mid = n[:-1] + 0.3  # log abar is linear between steps
    la = ddpm.log_alphas_cumprod
    torch.testing.assert_close(ddpm.log_alpha_bar(mid), 0.7 * la[:-1] + 0.3 * la[1:], rtol=1e-12, atol=0)


def test_ddpm_given_betas_and_any_T():
    betas = [0.1, 0.2, 0.3]
    ddpm = DDPM(betas=betas)
    assert ddpm.timesteps == 3 and ddpm.t_max == 2.0
    np.testing.assert_allclose(ddpm.alphas_cumprod.numpy(), np.cumprod(1 - np.array(betas)), rtol=1e-14)
    assert DDPM(timesteps=1).alpha(torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(math.sqrt(1 - 1e-4))


def test_ddpm_extension_and_vpsde_agree():
    """DDPM with T steps is a discretization of the VP SDE with beta(t) = T beta_n (Song et al. sec. 3.4)."""
    ddpm, vp = DDPM(timesteps=1000), VPSDE(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    torch.testing.assert_close(ddpm.alpha(t * 999), vp.alpha(t), rtol=5e-3, atol=1e-3)


def test_ot_pairing_is_optimal():
    from scipy.optimize import linear_sum_assignment

    from genflow.processes import ot_pairing

    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        x0 = torch.randn(6, 2, generator=gen, dtype=torch.float64) + 2.0
        noise = torch.randn(6, 2, generator=gen, dtype=torch.float64)
        perm = ot_pairing(x0, noise)
        assert sorted(perm.tolist()) == list(range(6))
        cost = torch.cdist(x0, noise) ** 2
        best = min(sum(cost[i, p[i]].item() for i in range(6)) for p in itertools.permutations(range(6)))
        assert cost[torch.arange(6), perm].sum().item() == pytest.approx(best, rel=1e-12)
        rows, cols = linear_sum_assignment(cost.numpy())
        assert cost[rows, cols].sum().item() == pytest.approx(best, rel=1e-12)


def test_ot_coupling_only_permutes_the_noise():
    fm = FlowMatching(coupling="ot")
    gen = torch.Generator().manual_seed(6)
    x0 = torch.randn(64, 1, 2, 2, generator=gen) * 0.2 + 3.0
    noise = torch.randn(64, 1, 2, 2, generator=gen)
    paired = fm.couple(x0, noise)
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.flatten(1).double(), noise.flatten(1).double()) ** 2
    _, cols = linear_sum_assignment(cost.numpy())
    assert torch.equal(paired, noise[torch.from_numpy(cols)])  # exactly the optimal assignment
    assert ((x0 - paired) ** 2).sum() < ((x0 - noise) ** 2).sum()
    assert torch.equal(FlowMatching().couple(x0, noise), noise)
