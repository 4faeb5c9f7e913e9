"""DDPM (Ho et al. 2020) as a Gaussian path over integer steps, with a continuous extension."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from genflow.processes.base import GaussianPath, PathCoefficients, time_dtype
from genflow.utils import check_choice

BETA_SCHEDULES = ("linear", "cosine")


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Ho et al. 2020, sec. 4: betas linear from beta_start to beta_end."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: abar(n) = f(n)/f(0), f(n) = cos^2(((n/T + s)/(1 + s)) pi/2).

    beta_n = 1 - abar(n+1)/abar(n), clipped at ``max_beta`` as in the paper (the last step).
    """
    n = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((n / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


class DDPM(GaussianPath):
    """Discrete-time diffusion: x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps, n = 0..T-1.

    The model sees the step index as a float. Between integer steps, log abar is interpolated
    linearly, which makes DDPM a continuous Gaussian path on [0, T-1] whose forward SDE has the
    piecewise-constant drift f = log(1 - beta_{n+1}) / 2, so continuous samplers run on it too.

    Args:
        timesteps: T, the number of steps (default 1000; taken from ``betas`` when those are given).
        beta_schedule: ``"linear"`` (Ho et al.) or ``"cosine"`` (Nichol & Dhariwal).
        beta_start, beta_end: ends of the linear schedule, used as given for any T.
        betas: an explicit schedule (overrides ``beta_schedule``); every value in (0, 1).
        prediction: what the network predicts (eps, x0, v, score or velocity).
    """

    def __init__(
        self,
        timesteps: int | None = None,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction: str = "eps",
        betas: Sequence[float] | None = None,
    ) -> None:
        super().__init__(prediction)
        check_choice(beta_schedule, BETA_SCHEDULES, "beta_schedule")
        if betas is not None:
            betas_t = torch.as_tensor(list(betas), dtype=torch.float64)
            if betas_t.ndim != 1:
                raise ValueError(f"betas must be a flat list of numbers; got shape {tuple(betas_t.shape)}")
            if timesteps is not None and timesteps != len(betas_t):
                raise ValueError(f"timesteps={timesteps} disagrees with the {len(betas_t)} betas given")
            timesteps = len(betas_t)
        else:
            timesteps = 1000 if timesteps is None else timesteps
            if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
                raise ValueError(f"timesteps must be an integer >= 1; got {timesteps!r}")
            if beta_schedule == "linear":
                for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
                    if not 0.0 < value < 1.0:
                        raise ValueError(f"{name} must lie in (0, 1); got {value!r}")
                betas_t = linear_betas(timesteps, beta_start, beta_end)
            else:
                betas_t = cosine_betas(timesteps)
        if timesteps < 1:
            raise ValueError("betas must hold at least one value")
        if not bool(((betas_t > 0) & (betas_t < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.timesteps = timesteps
        self.beta_schedule = "given" if betas is not None else beta_schedule
        self.betas = betas_t
        self.log_alphas_cumprod = torch.cumsum(torch.log1p(-betas_t), dim=0)
        self.alphas_cumprod = self.log_alphas_cumprod.exp()
        self.t_max = float(timesteps - 1)
        self._tables: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _table(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """log abar and its per-segment slope on ``like``'s device and dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            la = self.log_alphas_cumprod
            slope = la[1:] - la[:-1] if self.timesteps > 1 else torch.zeros(1, dtype=la.dtype)
            self._tables[key] = (la.to(like.device, like.dtype), slope.to(like.device, like.dtype))
        return self._tables[key]

    def kinks(self) -> Tensor | None:
        """The interior integer steps, where the extension's slope changes."""
        return torch.arange(1, self.timesteps - 1, dtype=torch.float64) if self.timesteps > 2 else None

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """log abar at (possibly fractional) step t, linear in t between integer steps."""
        return self._log_alpha_bar_and_slope(t)[0]

    def _log_alpha_bar_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        la, slope = self._table(t)
        if self.timesteps == 1:
            return la[0].expand_as(t), torch.zeros_like(t)
        k = t.detach().double().floor().long().clamp(0, self.timesteps - 2)
        w = t - k.to(t.dtype)
        return la[k] + w * slope[k], slope[k]

    def time_at_log_snr(self, log_snr: Tensor, iterations: int = 64) -> Tensor:
        """The inverse of the extension's log-SNR in closed form (float64): abar = sigmoid(lambda),
        so log abar = -softplus(-lambda), found on its linear segment. ``iterations`` is unused."""
        target = -torch.nn.functional.softplus(-torch.as_tensor(log_snr, dtype=torch.float64).reshape(-1))
        if self.timesteps == 1:
            return torch.zeros_like(target)
        ends = self.log_alphas_cumprod  # on the CPU: reading its ends syncs no device
        target = target.clamp(float(ends[-1]), float(ends[0]))
        la = self._table(target)[0]  # float64 on the target's device
        # la decreases: segment k holds la[k] >= target >= la[k + 1]
        k = (torch.searchsorted(-la, -target, right=True) - 1).clamp(0, self.timesteps - 2)
        return k.double() + (target - la[k]) / (la[k + 1] - la[k])

    def coefficients(self, t: Tensor) -> PathCoefficients:
        la, dla = self._log_alpha_bar_and_slope(t)
        alpha = torch.exp(0.5 * la)
        sigma = torch.sqrt(-torch.expm1(la))
        return PathCoefficients(
            alpha=alpha,
            sigma=sigma,
            d_alpha=0.5 * dla * alpha,
            d_sigma=-0.5 * dla * alpha**2 / sigma,
        )

    def training_times(self, batch: int, *, generator: torch.Generator | None, like: Tensor,
                       u: Tensor | None = None):
        """n ~ U{0, ..., T-1} (Ho et al. Alg. 1), unit weight; n = floor(u T) for given uniforms u."""
        dtype = time_dtype(like)
        if u is None:
            n = torch.randint(0, self.timesteps, (batch,), generator=generator, device=like.device)
        else:
            n = (u.to(like.device, torch.float64) * self.timesteps).floor().clamp(max=self.timesteps - 1)
        return n.to(dtype), torch.ones(batch, device=like.device, dtype=dtype)

    def __repr__(self) -> str:
        return f"DDPM(timesteps={self.timesteps}, beta_schedule={self.beta_schedule!r}, prediction={self.prediction!r})"
