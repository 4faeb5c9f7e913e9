"""DDIM (Song, Meng & Ermon 2021) and DDPM ancestral sampling (Ho et al. 2020), on any Gaussian path."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.processes.base import GaussianPath
from genflow.samplers.common import CountingModel, NoiseSource, full_time, refuse, time_grid
from genflow.utils import append_dims, check_choice


@dataclass(frozen=True)
class DDIM:
    """DDIM, eq. 12: x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, c = eta * (posterior std).

    ``eta`` = 0 is deterministic, 1 is DDPM's posterior variance. The last step goes to
    alpha = 1 (the predicted x0), as in the paper's code; ``denoise=False`` stops at the last grid time.
    """

    steps: int = 50
    eta: float = 0.0
    spacing: str = "linspace"
    denoise: bool = True

    def check(self, process: GaussianPath) -> None:
        time_grid(process, self.steps, self.spacing)
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0; got {self.eta}")
        if self.eta > 0 and not process.has_reverse_sde:
            raise refuse("ddim", process, "eta > 0 needs a diffusion; flows take eta=0")

    def __call__(self, net: CountingModel, process: GaussianPath, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = time_grid(process, self.steps, self.spacing).tolist()
        for i in progress(range(len(grid))):
            last = i == len(grid) - 1
            if last and not self.denoise:
                break
            t = full_time(grid[i], x)
            hub = net.denoise(x, t)
            if last:
                return hub.x0
            s = full_time(grid[i + 1], x)
            x = ddim_step(process, hub.x0, hub.eps, t, s, self.eta, noise)
        return x


def ddim_step(process, x0: Tensor, eps: Tensor, t: Tensor, s: Tensor, eta: float, noise: NoiseSource) -> Tensor:
    """One step of DDIM eq. 12 from t to s < t; c^2 = eta^2 sigma_s^2 (1 - SNR_t / SNR_s)."""
    cs = process.coefficients(s)
    a_s, s_s = append_dims(cs.alpha, x0.ndim), append_dims(cs.sigma, x0.ndim)
    x = a_s * x0
    if eta == 0:
        return x + s_s * eps
    ratio = torch.exp(process.log_snr(t) - process.log_snr(s))
    c = eta * s_s * append_dims((1 - ratio).clamp_min(0).sqrt(), x0.ndim)
    return x + (s_s**2 - c**2).clamp_min(0).sqrt() * eps + c * noise.randn(x0.shape[1:])


@dataclass(frozen=True)
class DDPMAncestral:
    """Ho et al. Alg. 2 on any subsequence of DDPM's steps (Nichol & Dhariwal 2021, sec. 4).

    x_s ~ N(mu(x_t, x0), var): the posterior q(x_s | x_t, x0) with the predicted x0; ``variance``
    ``beta_tilde`` is the posterior's own, ``beta`` the forward step's (Ho et al. sec. 3.2).
    """

    steps: int = 1000
    variance: str = "beta_tilde"
    spacing: str = "linspace"

    def check(self, process: GaussianPath) -> None:
        check_choice(self.variance, ("beta", "beta_tilde"), "variance")
        if not process.discrete:
            raise refuse("ddpm", process, "ancestral steps need DDPM's discrete chain; use ddim with eta=1")
        time_grid(process, self.steps, self.spacing)

    def __call__(self, net: CountingModel, process: GaussianPath, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = time_grid(process, self.steps, self.spacing).tolist()
        for i in progress(range(len(grid))):
            t = full_time(grid[i], x)
            hub = net.denoise(x, t)
            if i == len(grid) - 1:
                return hub.x0  # the step to abar = 1: the posterior mean is x0 itself
            ct, cs = process.coefficients(t), process.coefficients(full_time(grid[i + 1], x))
            a_ts = ct.alpha / cs.alpha
            beta = ct.sigma**2 - a_ts**2 * cs.sigma**2  # variance of q(x_t | x_s)
            mean_x = a_ts * cs.sigma**2 / ct.sigma**2
            mean_x0 = cs.alpha * beta / ct.sigma**2
            var = beta * cs.sigma**2 / ct.sigma**2 if self.variance == "beta_tilde" else beta
            d = x.ndim
            x = append_dims(mean_x, d) * x + append_dims(mean_x0, d) * hub.x0
            x = x + append_dims(var.sqrt(), d) * noise.randn(x.shape[1:])
        return x
