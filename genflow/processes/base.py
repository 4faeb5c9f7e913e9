"""The Gaussian-path algebra every process shares.

A process defines, for data ``x0`` and time ``t`` (t = t_min is data, t = t_max is noise),

    x_t = alpha(t) * x0 + sigma(t) * eps,      eps ~ N(0, I).

From alpha, sigma and their time derivatives everything else follows here, once: the forward
SDE (drift f = alpha'/alpha, diffusion g^2 = 2 sigma sigma' - 2 f sigma^2), the log-SNR, the
prior, the conversions between what a network can predict, and the training loss.

Conversions go through one hub, the pair (x0, eps): a prediction is turned into (x0, eps) by
``to_hub`` and any other parametrization is read off (x0, eps) by ``from_hub``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.utils import append_dims, check_choice, mean_except_batch, sum_except_batch

#: Everything a network may predict. ``v`` is Salimans & Ho's v = alpha eps - sigma x0;
#: ``velocity`` is dx_t/dt = alpha' x0 + sigma' eps (the probability-flow / flow-ODE velocity).
PREDICTIONS = ("eps", "x0", "v", "score", "velocity")

Model = Callable[..., Tensor]


@dataclass(frozen=True)
class PathCoefficients:
    """alpha(t), sigma(t) and their derivatives with respect to the process's native time."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


@dataclass(frozen=True)
class Denoised:
    """The hub of all conversions: the clean data and the noise that together make ``x_t``."""

    x0: Tensor
    eps: Tensor


def uniform_draws(batch: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``batch`` draws from U[0, 1) on ``like``'s device, in its time dtype."""
    return torch.rand(batch, generator=generator, device=like.device, dtype=time_dtype(like))


def time_dtype(like: Tensor) -> torch.dtype:
    """Times are never coarser than float32 (bf16 cannot even hold step 999)."""
    return torch.promote_types(like.dtype, torch.float32)


class GaussianPath(ABC):
    """Base of every process: x_t = alpha(t) x0 + sigma(t) eps on t in [t_min, t_max]."""

    #: Predictions this process accepts; subclasses narrow it where the algebra is singular.
    predictions: tuple[str, ...] = PREDICTIONS
    #: The parametrization the training loss is measured in.
    loss_space: str = "eps"
    #: The number of discrete steps T when the native time is an integer step n = 0..T-1 (DDPM);
    #: None for a continuous time.
    timesteps: int | None = None
    #: False for flows: their g^2 blows up at t_max, so only deterministic samplers apply.
    has_reverse_sde: bool = True
    #: True when the loss differentiates the model twice (a CNF's divergence): torch.compile cannot.
    double_backward: bool = False
    t_min: float = 0.0
    t_max: float = 1.0

    def __init__(self, prediction: str) -> None:
        check_choice(prediction, self.predictions, f"prediction for {type(self).__name__}")
        self.prediction = prediction

    @property
    def discrete(self) -> bool:
        """True when the native time is an integer step (``timesteps`` is set)."""
        return self.timesteps is not None

    # ----------------------------------------------------------------- the path itself
    @abstractmethod
    def coefficients(self, t: Tensor) -> PathCoefficients:
        """alpha, sigma and their time derivatives at ``t`` (1-D), in ``t``'s dtype."""

    def alpha(self, t: Tensor) -> Tensor:
        return self.coefficients(t).alpha

    def sigma(self, t: Tensor) -> Tensor:
        return self.coefficients(t).sigma

    def kinks(self) -> Tensor | None:
        """Interior times where alpha' or sigma' jump (adaptive ODE solvers restart there); None if smooth."""
        return None

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2), decreasing from data to noise."""
        c = self.coefficients(t)
        return 2.0 * (torch.log(c.alpha) - torch.log(c.sigma))

    def time_at_log_snr(self, log_snr: Tensor, iterations: int = 64) -> Tensor:
        """The time t in [t_min, t_max] with ``log_snr(t)`` equal to the target (float64).

        One route for every process: bisection on the decreasing log-SNR, so a solver that steps
        in log-SNR or in sigma/alpha needs no per-process inverse. Targets outside the path's
        range give its end. For DDPM the answer is a fractional step (the continuous extension).
        """
        target = torch.as_tensor(log_snr, dtype=torch.float64).reshape(-1)
        lo = torch.full_like(target, float(self.t_min))
        hi = torch.full_like(target, float(self.t_max))
        for _ in range(iterations):  # 64 halvings of [t_min, t_max] reach float64's resolution
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target  # still too little noise: the answer is later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def transition_variance(self, t: Tensor, s: Tensor) -> Tensor:
        """The variance of q(x_t | x_s), s < t: sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2 (Kingma et
        al. 2021, sec. 2; DDPM's beta_n for adjacent steps)."""
        ct, cs = self.coefficients(t), self.coefficients(s)
        return ct.sigma**2 - (ct.alpha / cs.alpha) ** 2 * cs.sigma**2

    def posterior_variance(self, t: Tensor, s: Tensor) -> Tensor:
        """The variance of q(x_s | x_t, x0), s < t: the transition's times sigma_s^2 / sigma_t^2
        (Ho et al.'s beta_tilde; DDIM's sigma^2 at eta = 1)."""
        return self.transition_variance(t, s) * self.sigma(s) ** 2 / self.sigma(t) ** 2

    # ----------------------------------------------------------------- forward SDE
    def drift_coef(self, t: Tensor) -> Tensor:
        """f(t) = alpha'/alpha, the linear drift of the forward SDE dx = f x dt + g dW."""
        c = self.coefficients(t)
        return c.d_alpha / c.alpha

    def diffusion_sq(self, t: Tensor) -> Tensor:
        """g(t)^2 = 2 sigma sigma' - 2 f sigma^2 (Kingma et al. 2021, eq. 4 in native time)."""
        c = self.coefficients(t)
        return 2.0 * c.sigma * c.d_sigma - 2.0 * (c.d_alpha / c.alpha) * c.sigma**2

    def diffusion(self, t: Tensor) -> Tensor:
        return self.diffusion_sq(t).clamp_min(0.0).sqrt()

    def forward_drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(t) x, the drift of the forward SDE."""
        return append_dims(self.drift_coef(t), x.ndim) * x

    # ----------------------------------------------------------------- marginals and prior
    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise."""
        c = self.coefficients(t)
        return append_dims(c.alpha, x0.ndim) * x0 + append_dims(c.sigma, x0.ndim) * noise

    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, s^2 I): sigma at t_max.

        For VP-type paths this is 1 up to exp(-int beta) (score_sde uses exactly 1); for VE it is
        sigma_max; for flows it is exactly 1.
        """
        t = torch.tensor([self.t_max], dtype=torch.float64)
        return float(self.sigma(t))

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        return self.prior_std() * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, s^2 I) per example (summed over all but the batch dim)."""
        s = self.prior_std()
        d = x[0].numel()
        return -0.5 * sum_except_batch(x**2) / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    # ----------------------------------------------------------------- the conversion hub
    def to_hub(self, out: Tensor, x: Tensor, t: Tensor, kind: str | None = None,
               coefficients: PathCoefficients | None = None) -> Denoised:
        """Turn a prediction of ``kind`` (default: this process's) at (x, t) into (x0, eps);
        ``coefficients`` are ``self.coefficients(t)`` where the caller has them already."""
        kind = self.prediction if kind is None else kind
        check_choice(kind, PREDICTIONS, "prediction kind")
        c = self.coefficients(t) if coefficients is None else coefficients
        a, s = append_dims(c.alpha, x.ndim), append_dims(c.sigma, x.ndim)
        if kind == "eps":
            return Denoised(x0=(x - s * out) / a, eps=out)
        if kind == "x0":
            return Denoised(x0=out, eps=(x - a * out) / s)
        if kind == "score":
            eps = -s * out
            return Denoised(x0=(x - s * eps) / a, eps=eps)
        if kind == "v":  # x = a x0 + s eps, v = a eps - s x0
            norm = a**2 + s**2
            return Denoised(x0=(a * x - s * out) / norm, eps=(s * x + a * out) / norm)
        # velocity: x = a x0 + s eps, u = a' x0 + s' eps
        da, ds = append_dims(c.d_alpha, x.ndim), append_dims(c.d_sigma, x.ndim)
        det = a * ds - s * da
        return Denoised(x0=(ds * x - s * out) / det, eps=(a * out - da * x) / det)

    def from_hub(self, x0: Tensor, eps: Tensor, t: Tensor, kind: str) -> Tensor:
        """Read a parametrization ``kind`` off (x0, eps) at time ``t``."""
        check_choice(kind, PREDICTIONS, "prediction kind")
        if kind == "eps":
            return eps
        if kind == "x0":
            return x0
        c = self.coefficients(t)
        a, s = append_dims(c.alpha, x0.ndim), append_dims(c.sigma, x0.ndim)
        if kind == "score":
            return -eps / s
        if kind == "v":
            return a * eps - s * x0
        return append_dims(c.d_alpha, x0.ndim) * x0 + append_dims(c.d_sigma, x0.ndim) * eps

    def convert(self, out: Tensor, x: Tensor, t: Tensor, src: str, dst: str) -> Tensor:
        """Convert a prediction from ``src`` to ``dst`` through the (x0, eps) hub."""
        if src == dst:
            return out
        hub = self.to_hub(out, x, t, src)
        return self.from_hub(hub.x0, hub.eps, t, dst)

    def denoise(self, model: Model, x: Tensor, t: Tensor, **cond) -> Denoised:
        """Run ``model`` at (x, t) and return its (x0, eps): the one view samplers need."""
        return self.to_hub(model(x, t, **cond), x, t)

    # ----------------------------------------------------------------- training
    def training_times(
        self, batch: int, *, generator: torch.Generator | None, like: Tensor, u: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Times t ~ U[t_min, t_max] for a training batch and their loss weights (ones).

        ``u`` (uniform draws in [0, 1), one per example) replaces the generator's draw: a trainer
        that draws a whole global batch's randomness at once hands each rank its share.
        """
        u = uniform_draws(batch, generator, like) if u is None else u.to(like.device, time_dtype(like))
        return self.t_min + (self.t_max - self.t_min) * u, torch.ones_like(u)

    def couple(self, x0: Tensor, noise: Tensor) -> Tensor:
        """Pair noise with data; independent by default (flows may pair by optimal transport)."""
        return noise

    def loss(self, model: Model, x0: Tensor, *, generator: torch.Generator | None = None, u: Tensor | None = None,
             noise: Tensor | None = None, **cond) -> Tensor:
        """Weighted regression of the model's prediction, measured in ``loss_space``.

        eps-space with unit weight is Ho et al.'s L_simple and, for the SDEs, denoising score
        matching with lambda(t) = sigma(t)^2 (Song et al. 2021, eq. 7); velocity-space is the
        conditional flow-matching loss (Lipman et al. 2023, eq. 9). The model's output is read
        in its own parametrization and converted, so the objective does not depend on it.
        ``u`` (uniform draws that pick t) and ``noise`` may be given instead of drawn from ``generator``.
        """
        t, weight = self.training_times(x0.shape[0], generator=generator, like=x0, u=u)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noise = self.couple(x0, noise.to(x0))
        xt = self.perturb(x0, t, noise)
        pred = self.convert(model(xt, t, **cond), xt, t, self.prediction, self.loss_space)
        target = self.from_hub(x0, noise, t, self.loss_space)
        return (weight * mean_except_batch((pred - target) ** 2)).mean()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prediction={self.prediction!r})"
