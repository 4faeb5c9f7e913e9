"""Score SDEs of Song et al. 2021: VP, sub-VP and VE, on t in [eps, 1]."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genflow.processes.base import GaussianPath, PathCoefficients, time_dtype
from genflow.utils import check_choice

WEIGHTINGS = ("sigma2", "likelihood")


class ScoreSDE(GaussianPath):
    """A continuous-time diffusion trained by denoising score matching.

    Args:
        eps: smallest time; t is drawn from [eps, 1].
        weighting: ``"sigma2"`` — lambda(t) = sigma(t)^2 (Song et al. 2021, eq. 7), i.e. the
            plain eps-regression — or ``"likelihood"`` — lambda(t) = g(t)^2, which makes the loss
            an upper bound on the negative log-likelihood (Song et al. 2021b, Thm. 1).
        importance_sampling: draw t with density proportional to g^2/sigma^2 and reweight, a
            lower-variance estimate of the likelihood-weighted loss (Song et al. 2021b, sec. 5).
    """

    def __init__(
        self,
        prediction: str,
        eps: float,
        weighting: str = "sigma2",
        importance_sampling: bool = False,
    ) -> None:
        super().__init__(prediction)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1); got {eps!r}")
        check_choice(weighting, WEIGHTINGS, "weighting")
        if not isinstance(importance_sampling, bool):
            raise ValueError(f"importance_sampling must be true or false; got {importance_sampling!r}")
        if importance_sampling and weighting != "likelihood":
            raise ValueError("importance_sampling needs weighting='likelihood'")
        self.t_min, self.t_max = float(eps), 1.0
        self.weighting = weighting
        self.importance_sampling = importance_sampling
        self._is_table: tuple[Tensor, Tensor] | None = None

    def likelihood_weight(self, t: Tensor) -> Tensor:
        """g(t)^2 / sigma(t)^2: lambda = g^2 expressed on the eps-regression."""
        return self.diffusion_sq(t) / self.sigma(t) ** 2

    def _importance_table(self) -> tuple[Tensor, Tensor]:
        """A grid of t and the cumulative integral of g^2/sigma^2 on it (float64, cached).

        The grid is dense in log t (where VP's weight ~ 1/t lives) and in t; sampling inverts the
        piecewise-linear CDF, so the density used is exactly piecewise constant and known.
        """
        if self._is_table is None:
            n = 4096
            geo = torch.logspace(math.log10(self.t_min), 0.0, n, dtype=torch.float64)
            lin = torch.linspace(self.t_min, 1.0, n, dtype=torch.float64)
            grid = torch.unique(torch.cat([geo, lin]).clamp(self.t_min, 1.0))
            w = self.likelihood_weight(grid)
            cdf = torch.cat([grid.new_zeros(1), torch.cumsum(0.5 * (w[1:] + w[:-1]) * grid.diff(), 0)])
            self._is_table = (grid, cdf)
        return self._is_table

    def training_times(self, batch: int, *, generator: torch.Generator | None, like: Tensor,
                       u: Tensor | None = None):
        if self.weighting == "sigma2":
            return super().training_times(batch, generator=generator, like=like, u=u)
        if not self.importance_sampling:
            t, _ = super().training_times(batch, generator=generator, like=like, u=u)
            return t, self.likelihood_weight(t)
        grid, cdf = self._importance_table()
        if u is None:
            u = torch.rand(batch, generator=generator, device=like.device, dtype=torch.float64)
        u = u.to("cpu", torch.float64) * cdf[-1]
        i = torch.searchsorted(cdf, u, right=True).clamp(1, len(grid) - 1) - 1
        dt, dF = grid[i + 1] - grid[i], cdf[i + 1] - cdf[i]
        t = grid[i] + (u - cdf[i]) / dF * dt
        # weight = g^2/sigma^2 / (q(t) (1 - eps)): the same objective as uniform t, unbiased.
        q = dF / dt / cdf[-1]
        weight = self.likelihood_weight(t) / (q * (self.t_max - self.t_min))
        dtype = time_dtype(like)
        return t.to(like.device, dtype), weight.to(like.device, dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.t_min}, weighting={self.weighting!r}, prediction={self.prediction!r})"


class _LinearBetaSDE(ScoreSDE):
    """Shared by VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min, beta_max, eps, prediction, weighting, importance_sampling):
        if not 0.0 <= beta_min < beta_max < math.inf:
            raise ValueError(f"need 0 <= beta_min < beta_max; got beta_min={beta_min!r}, beta_max={beta_max!r}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        super().__init__(prediction, eps, weighting, importance_sampling)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2


class VPSDE(_LinearBetaSDE):
    """Variance preserving: alpha = exp(-B/2), sigma = sqrt(1 - exp(-B)), g^2 = beta (Song et al. eq. 11)."""

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        eps: float = 1e-5,
        prediction: str = "eps",
        weighting: str = "sigma2",
        importance_sampling: bool = False,
    ) -> None:
        super().__init__(beta_min, beta_max, eps, prediction, weighting, importance_sampling)

    def coefficients(self, t: Tensor) -> PathCoefficients:
        B, b = self.integrated_beta(t), self.beta(t)
        alpha = torch.exp(-0.5 * B)
        sigma = torch.sqrt(-torch.expm1(-B))
        return PathCoefficients(alpha=alpha, sigma=sigma, d_alpha=-0.5 * b * alpha, d_sigma=0.5 * b * alpha**2 / sigma)


class SubVPSDE(_LinearBetaSDE):
    """Sub-VP: alpha as VP, sigma = 1 - exp(-B), g^2 = beta (1 - exp(-2B)) (Song et al. eq. 12)."""

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        eps: float = 1e-5,
        prediction: str = "eps",
        weighting: str = "sigma2",
        importance_sampling: bool = False,
    ) -> None:
        super().__init__(beta_min, beta_max, eps, prediction, weighting, importance_sampling)

    def coefficients(self, t: Tensor) -> PathCoefficients:
        B, b = self.integrated_beta(t), self.beta(t)
        alpha = torch.exp(-0.5 * B)
        sigma = -torch.expm1(-B)
        return PathCoefficients(alpha=alpha, sigma=sigma, d_alpha=-0.5 * b * alpha, d_sigma=b * alpha**2)


class VESDE(ScoreSDE):
    """Variance exploding: alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t (Song et al. eq. 9)."""

    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        eps: float = 1e-5,
        prediction: str = "score",
        weighting: str = "sigma2",
        importance_sampling: bool = False,
    ) -> None:
        if not 0.0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max; got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(sigma_max / sigma_min)
        super().__init__(prediction, eps, weighting, importance_sampling)

    def coefficients(self, t: Tensor) -> PathCoefficients:
        sigma = self.sigma_min * torch.exp(t * self._log_ratio)
        one = torch.ones_like(t)
        return PathCoefficients(alpha=one, sigma=sigma, d_alpha=torch.zeros_like(t), d_sigma=sigma * self._log_ratio)
