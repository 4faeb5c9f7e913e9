"""DDIM (Song, Meng & Ermon 2021) and DDPM ancestral sampling (Ho et al. 2020), on any Gaussian path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from genflow.processes.base import GaussianPath, PathCoefficients
from genflow.samplers.base import Sampler, option
from genflow.samplers.common import (SPACINGS, CountingModel, NoiseSource, StepTimes, check_transitions, full_time,
                                     refuse, shared_time, time_grid, to_data)
from genflow.utils import append_dims

SPACING_DOC = "time grid (continuous processes: linspace or quadratic)"


@dataclass(frozen=True)
class DDIM(Sampler):
    """DDIM, eq. 12: x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, c = eta * (posterior std).

    ``eta`` = 0 is deterministic, 1 is DDPM's posterior variance. The last step goes to
    alpha = 1 (the predicted x0), as in the paper's code; ``denoise=False`` stops at the last grid time.
    """

    name: ClassVar[str] = "ddim"
    steps: int = option(50, "sampler steps", min=1)
    eta: float = option(0.0, "DDIM noise: 0 deterministic, 1 DDPM's posterior variance", min=0)
    spacing: str = option("linspace", SPACING_DOC, choices=SPACINGS)
    denoise: bool = option(True, "end on the predicted x0 (one NFE) instead of the grid's last noise level")

    def check(self, process: GaussianPath) -> None:
        grid = time_grid(process, self.steps, self.spacing)
        if self.eta > 0 and not process.has_reverse_sde:
            raise refuse(self.name, process, "eta > 0 needs a diffusion; flows take eta=0")
        if self.eta > 0:
            check_transitions(self.name, process, grid)

    def __call__(self, net: CountingModel, process: GaussianPath, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = time_grid(process, self.steps, self.spacing).tolist()
        x = ddim_walk(net, process, x, grid, self.eta, noise, progress)
        return to_data(net, x, grid[-1]) if self.denoise else x


def ddim_walk(net: CountingModel, process: GaussianPath, x: Tensor, grid: list[float], eta: float = 0.0,
              noise: NoiseSource | None = None, progress=lambda it: it) -> Tensor:
    """DDIM steps from ``grid[0]`` through each later time: towards the data (sampling) or, with an
    increasing grid and eta = 0, towards the noise (encoding; Song et al. 2021, sec. 4.3)."""
    steps = StepTimes(process, grid, x)
    for i in progress(range(len(grid) - 1)):
        (t, ct), (s, cs) = steps.at(i), steps.at(i + 1)
        hub = net.denoise(x, t, ct)
        x = ddim_step(process, hub.x0, hub.eps, t, s, eta, noise, cs)
    return x


def ddim_step(process, x0: Tensor, eps: Tensor, t: Tensor, s: Tensor, eta: float, noise: NoiseSource,
              cs: PathCoefficients | None = None) -> Tensor:
    """One step of DDIM eq. 12 from t to s < t; c^2 = eta^2 (the posterior variance of q(x_s | x_t, x0)).
    ``cs``: the coefficients at s, where the caller has them."""
    t, s = shared_time(t), shared_time(s)
    cs = process.coefficients(s) if cs is None else cs
    a_s, s_s = append_dims(cs.alpha, x0.ndim), append_dims(cs.sigma, x0.ndim)
    x = a_s * x0
    if eta == 0:
        return x + s_s * eps
    c = eta * append_dims(process.posterior_variance(t, s).clamp_min(0).sqrt(), x0.ndim)
    return x + (s_s**2 - c**2).clamp_min(0).sqrt() * eps + c * noise.randn(x0.shape[1:])


@dataclass(frozen=True)
class DDPMAncestral(Sampler):
    """Ho et al. Alg. 2 on any subsequence of DDPM's steps (Nichol & Dhariwal 2021, sec. 4).

    x_s ~ N(mu(x_t, x0), var): the posterior q(x_s | x_t, x0) with the predicted x0; ``variance``
    ``beta_tilde`` is the posterior's own, ``beta`` the forward step's (Ho et al. sec. 3.2).
    """

    name: ClassVar[str] = "ddpm"
    steps: int = option(1000, "sampler steps", min=1)
    variance: str = option("beta_tilde", "ancestral step variance: the posterior's (beta_tilde) or the forward step's (beta)",
                           choices=("beta", "beta_tilde"))
    spacing: str = option("linspace", SPACING_DOC, choices=SPACINGS)

    def check(self, process: GaussianPath) -> None:
        if not process.discrete:
            raise refuse(self.name, process, "ancestral steps need DDPM's discrete chain; use ddim with eta=1")
        check_transitions(self.name, process, time_grid(process, self.steps, self.spacing))

    def __call__(self, net: CountingModel, process: GaussianPath, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = time_grid(process, self.steps, self.spacing).tolist()
        for i in progress(range(len(grid) - 1)):
            t, s = full_time(grid[i], x), full_time(grid[i + 1], x)
            hub = net.denoise(x, t)
            t, s = shared_time(t), shared_time(s)
            ct, cs = process.coefficients(t), process.coefficients(s)
            beta = process.transition_variance(t, s)
            mean_x = ct.alpha / cs.alpha * cs.sigma**2 / ct.sigma**2
            mean_x0 = cs.alpha * beta / ct.sigma**2
            var = process.posterior_variance(t, s) if self.variance == "beta_tilde" else beta
            d = x.ndim
            x = append_dims(mean_x, d) * x + append_dims(mean_x0, d) * hub.x0
            x = x + append_dims(var.sqrt(), d) * noise.randn(x.shape[1:])
        return to_data(net, x, grid[-1])
