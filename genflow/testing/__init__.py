"""Exact answers to test samplers, losses and likelihoods against.

``GaussianMixture`` is a data distribution whose noised marginals under any Gaussian path are
again Gaussian mixtures: component k, N(mu_k, S_k), becomes N(alpha mu_k, alpha^2 S_k + sigma^2 I).
So the score, E[x0 | x_t], E[eps | x_t] and every parametrization derived from them are known
in closed form at every t. Computed componentwise by Gaussian conditioning, without dividing by
alpha or sigma, so they stay finite at the path's ends (a flow's t = 0 and t = 1).

    oracle = GaussianMixture.isotropic(means=[[-2.0, 0.0], [2.0, 1.0]], stds=[0.5, 0.3])
    model = oracle.model(process)              # model(x, t) -> exact prediction of the process
    loss = process.loss(model, oracle.sample(512))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.processes.base import Denoised, GaussianPath


@dataclass(frozen=True)
class _Posterior:
    """Per-example mixture responsibilities and per-component conditional quantities."""

    log_resp: Tensor  # [B, K]
    log_prob: Tensor  # [B]
    x0: Tensor  # [B, K, D]   E[x0 | x_t, k]
    eps: Tensor  # [B, K, D]  E[eps | x_t, k]
    score: Tensor  # [B, K, D] grad log N_k(x_t)


class GaussianMixture:
    """A mixture of K full-covariance Gaussians in D dims; data of any shape with prod = D.

    Args:
        means: [K, D] component means.
        covs: [K, D, D] symmetric positive-definite covariances.
        weights: [K] mixture weights (normalized here); uniform if omitted.
        event_shape: shape of one example (default ``(D,)``); e.g. ``(1, 2, 2)`` for tiny images.
    """

    def __init__(
        self,
        means: Tensor | Sequence,
        covs: Tensor | Sequence,
        weights: Tensor | Sequence | None = None,
        event_shape: Sequence[int] | None = None,
    ) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = self.means.shape
        if self.covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape {(k, d, d)}; got {tuple(self.covs.shape)}")
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or bool((w <= 0).any()):
            raise ValueError(f"weights must be {k} positive numbers")
        self.log_weights = torch.log(w / w.sum())
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold {d} values")
        self.dim = d
        self._chol0 = torch.linalg.cholesky(self.covs)  # raises if a covariance is not PD

    @classmethod
    def isotropic(cls, means, stds, weights=None, event_shape=None) -> GaussianMixture:
        """Components N(mu_k, std_k^2 I)."""
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        eye = torch.eye(means.shape[1], dtype=torch.float64)
        return cls(means, stds[:, None, None] ** 2 * eye, weights, event_shape)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # ------------------------------------------------------------------ data
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, component: int | None = None, return_labels: bool = False
    ):
        """n i.i.d. draws (float64, shaped [n, *event_shape]); optionally their component labels."""
        if component is None:
            labels = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        else:
            labels = torch.full((n,), component, dtype=torch.long)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + torch.einsum("nij,nj->ni", self._chol0[labels], z)
        x = x.reshape(n, *self.event_shape)
        return (x, labels) if return_labels else x

    def mean(self) -> Tensor:
        return (self.log_weights.exp()[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        w = self.log_weights.exp()
        m = self.mean()
        centered = self.means - m
        return (w[:, None, None] * (self.covs + centered[:, :, None] * centered[:, None, :])).sum(0)

    # ------------------------------------------------------------------ noised marginals
    def _posterior(self, x: Tensor, alpha: Tensor, sigma: Tensor, component: Tensor | None = None) -> _Posterior:
        """Condition on x_t = alpha x0 + sigma eps componentwise, all in float64."""
        b = x.shape[0]
        xf = x.reshape(b, self.dim).double()
        a = alpha.double().reshape(b, 1, 1, 1)
        s = sigma.double().reshape(b, 1, 1, 1)
        eye = torch.eye(self.dim, dtype=torch.float64)
        cov_t = a**2 * self.covs + s**2 * eye  # [B, K, D, D]
        chol = torch.linalg.cholesky(cov_t)
        diff = xf[:, None, :] - a[..., 0] * self.means  # [B, K, D]
        sol = torch.cholesky_solve(diff[..., None], chol)[..., 0]  # C^{-1} (x - a mu)
        half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_norm = -0.5 * (diff * sol).sum(-1) - half_logdet - 0.5 * self.dim * math.log(2 * math.pi)
        log_joint = self.log_weights + log_norm
        if component is not None:  # condition on the class as well
            keep = torch.nn.functional.one_hot(component.long(), self.num_components).bool()
            log_joint = log_joint.masked_fill(~keep, -math.inf)
        log_prob = torch.logsumexp(log_joint, dim=1)
        x0 = self.means + a[..., 0] * torch.einsum("kij,bkj->bki", self.covs, sol)  # mu + a S C^{-1} diff
        return _Posterior(
            log_resp=log_joint - log_prob[:, None],
            log_prob=log_prob,
            x0=x0,
            eps=s[..., 0] * sol,
            score=-sol,
        )

    def _mix(self, post: _Posterior, values: Tensor, like: Tensor) -> Tensor:
        out = (post.log_resp.exp()[..., None] * values).sum(1)
        return out.reshape(like.shape).to(like.dtype)

    def log_prob_at(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """log p_t(x) for the marginal with coefficients (alpha, sigma); per example."""
        return self._posterior(x, alpha, sigma).log_prob.to(x.dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """log-density of the clean data."""
        one = torch.ones(x.shape[0], dtype=torch.float64)
        return self.log_prob_at(x, one, torch.zeros_like(one))

    def score_at(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        post = self._posterior(x, alpha, sigma)
        return self._mix(post, post.score, x)

    def denoise_at(self, x: Tensor, alpha: Tensor, sigma: Tensor, component: Tensor | None = None) -> Denoised:
        """Exact (E[x0 | x_t], E[eps | x_t]) — optionally also given the component."""
        post = self._posterior(x, alpha, sigma, component)
        return Denoised(x0=self._mix(post, post.x0, x), eps=self._mix(post, post.eps, x))

    # ------------------------------------------------------------------ as a process's model
    def marginal_log_prob(self, process: GaussianPath, x: Tensor, t: Tensor) -> Tensor:
        c = process.coefficients(t)
        return self.log_prob_at(x, c.alpha, c.sigma)

    def model(self, process: GaussianPath, prediction: str | None = None):
        """The exact network for ``process``: ``model(x, t, y=None)`` returns its prediction.

        ``y`` (component indices) conditions on the component, so mixtures act as
        class-conditional data (classes = components).
        """
        kind = process.prediction if prediction is None else prediction

        def exact(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
            c = process.coefficients(t)
            hub = self.denoise_at(x, c.alpha, c.sigma, y)
            return process.from_hub(hub.x0, hub.eps, t, kind)

        return exact

    def sample_marginal(self, process: GaussianPath, t: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """x_t for data from this mixture at times ``t`` (one example per entry of ``t``)."""
        x0 = self.sample(t.shape[0], generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        return process.perturb(x0, t.double(), noise)


def perturbed(model, delta: float):
    """A model whose every output is off by ``delta``: the oracle made slightly wrong."""

    def wrong(x: Tensor, t: Tensor, **cond) -> Tensor:
        return model(x, t, **cond) + delta

    return wrong


__all__ = ["GaussianMixture", "perturbed"]
