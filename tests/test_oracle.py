"""The Gaussian-mixture oracle: exact scores and denoisers, checked by second routes."""

from __future__ import annotations

import pytest
import torch

from conftest import interior_times
from genflow.testing import GaussianMixture


@pytest.fixture
def oracle() -> GaussianMixture:
    return GaussianMixture(
        means=[[-2.0, 0.5], [1.5, 1.0], [0.0, -2.0]],
        covs=[[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]], [[0.1, 0.0], [0.0, 0.6]]],
        weights=[0.5, 0.3, 0.2],
    )


def test_score_is_the_gradient_of_the_log_density(process, oracle):
    t = interior_times(process, 64)
    x = oracle.sample_marginal(process, t, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    logp = oracle.marginal_log_prob(process, x, t)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    c = process.coefficients(t)
    torch.testing.assert_close(oracle.score_at(x.detach(), c.alpha, c.sigma), grad, rtol=1e-9, atol=1e-9)


def test_denoiser_obeys_tweedie(process, oracle):
    """E[x0|x] = (x + sigma^2 score)/alpha and E[eps|x] = -sigma score (Efron 2011)."""
    t = interior_times(process, 64)
    x = oracle.sample_marginal(process, t, generator=torch.Generator().manual_seed(1))
    c = process.coefficients(t)
    score = oracle.score_at(x, c.alpha, c.sigma)
    hub = oracle.denoise_at(x, c.alpha, c.sigma)
    torch.testing.assert_close(hub.eps, -c.sigma[:, None] * score, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(hub.x0, (x + c.sigma[:, None] ** 2 * score) / c.alpha[:, None], rtol=1e-8, atol=1e-8)


def test_denoiser_is_the_conditional_mean(oracle):
    """Monte Carlo: regress x0 on x_t in a narrow bin and compare with E[x0 | x_t]."""
    from genflow.processes import VPSDE

    vp = VPSDE()
    n = 400_000
    gen = torch.Generator().manual_seed(2)
    x0 = oracle.sample(n, generator=gen)
    t = torch.full((n,), 0.4, dtype=torch.float64)
    xt = vp.perturb(x0, t, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    centre = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    near = (xt - centre).norm(dim=1) < 0.05
    c = vp.coefficients(t[:1])
    exact = oracle.denoise_at(centre, c.alpha, c.sigma).x0[0]
    empirical = x0[near].mean(0)
    se = x0[near].std(0) / near.sum().sqrt()
    assert bool(((empirical - exact).abs() < 5 * se + 0.02).all()), (empirical, exact)


def test_clean_log_density_matches_torch(oracle):
    x = oracle.sample(100, generator=torch.Generator().manual_seed(3))
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=oracle.log_weights),
        torch.distributions.MultivariateNormal(oracle.means, oracle.covs),
    )
    torch.testing.assert_close(oracle.log_prob(x), mix.log_prob(x), rtol=1e-12, atol=1e-12)


def test_sample_moments(oracle):
    x = oracle.sample(200_000, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(x.mean(0), oracle.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), oracle.covariance(), atol=0.03, rtol=0)


def test_component_conditioning(process, oracle):
    """Given the component, the denoiser is that component's own posterior mean."""
    t = interior_times(process, 16)
    x = oracle.sample_marginal(process, t, generator=torch.Generator().manual_seed(5))
    c = process.coefficients(t)
    y = torch.full((16,), 1)
    single = GaussianMixture(oracle.means[1:2], oracle.covs[1:2])
    torch.testing.assert_close(
        oracle.denoise_at(x, c.alpha, c.sigma, y).x0, single.denoise_at(x, c.alpha, c.sigma).x0, rtol=1e-10, atol=1e-10
    )


def test_image_shaped_events():
    oracle = GaussianMixture.isotropic([[0.0] * 4, [1.0] * 4], [0.5, 0.2], event_shape=(1, 2, 2))
    x = oracle.sample(8)
    assert x.shape == (8, 1, 2, 2)
    assert oracle.log_prob(x).shape == (8,)


def test_bad_oracle_input():
    with pytest.raises(ValueError, match="covs must have shape"):
        GaussianMixture([[0.0, 0.0]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="event_shape"):
        GaussianMixture.isotropic([[0.0, 0.0]], [1.0], event_shape=(3,))
