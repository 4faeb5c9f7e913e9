"""Reverse-time SDE samplers (Song et al. 2021): Euler-Maruyama and predictor-corrector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from genflow.processes.base import GaussianPath
from genflow.samplers.base import Sampler, option
from genflow.samplers.common import (CountingModel, NoiseSource, check_reverse_sde, check_steps, check_transitions,
                                     full_time, one_time, refuse, to_data)
from genflow.utils import append_dims


def sde_grid(process: GaussianPath, steps: int) -> Tensor:
    """steps + 1 times, uniform from t_max down to t_min: ``steps`` intervals."""
    check_steps(steps)
    return torch.linspace(process.t_max, process.t_min, steps + 1, dtype=torch.float64)


def _check_diffusion(name: str, process: GaussianPath) -> None:
    if not process.has_reverse_sde:
        raise refuse(name, process, "a flow has no reverse-time SDE; use ode or ddim")


def euler_maruyama_step(net: CountingModel, process, x: Tensor, t: float, s: float, noise: NoiseSource) -> Tensor:
    """x_s = x + (f x - g^2 score)(s - t) + g sqrt(t - s) z, the reverse SDE (Song et al. eq. 6)."""
    hub = net.denoise(x, full_time(t, x))
    tt = one_time(t, x)
    sigma = append_dims(process.sigma(tt), x.ndim)
    g2 = append_dims(process.diffusion_sq(tt), x.ndim)
    drift = process.forward_drift(x, tt) + g2 * hub.eps / sigma  # f x - g^2 score, score = -eps/sigma
    return x + drift * (s - t) + (g2 * (t - s)).sqrt() * noise.randn(x.shape[1:])


def reverse_diffusion_step(net: CountingModel, process, x: Tensor, t: float, s: float, noise: NoiseSource) -> Tensor:
    """Song et al. eq. 47 generalized: invert the discrete forward step x_t = (a_t/a_s) x_s + G n."""
    hub = net.denoise(x, full_time(t, x))
    tt, ss = one_time(t, x), one_time(s, x)
    ct, cs = process.coefficients(tt), process.coefficients(ss)
    ratio = append_dims(ct.alpha / cs.alpha, x.ndim)
    g2 = append_dims(process.transition_variance(tt, ss), x.ndim)
    score = -hub.eps / append_dims(ct.sigma, x.ndim)
    return (2 - ratio) * x + g2 * score + g2.sqrt() * noise.randn(x.shape[1:])


def langevin_step(net: CountingModel, process, x: Tensor, t: float, s: float, snr: float, noise: NoiseSource) -> Tensor:
    """Langevin corrector (Song et al. Alg. 5), step 2 a (snr |z| / |score|)^2 with the norms at
    their noise-dominated values |z| / |score| = sigma_t, i.e. 2 a (snr sigma_t)^2 (Song & Ermon 2019).

    score_sde uses realized norms averaged over the batch, which makes a sample depend on its batch
    (and per-example realized norms blow up where the score vanishes, e.g. at a mode).
    """
    tt, ss = one_time(t, x), one_time(s, x)
    sigma = process.sigma(tt)
    score = -net.denoise(x, full_time(t, x)).eps / append_dims(sigma, x.ndim)
    a = (process.alpha(tt) / process.alpha(ss)) ** 2  # 1 - beta_i for VP, 1 for VE
    step = append_dims(2 * a * (snr * sigma) ** 2, x.ndim)
    return x + step * score + (2 * step).sqrt() * noise.randn(x.shape[1:])


@dataclass(frozen=True)
class EulerMaruyama(Sampler):
    """Euler-Maruyama on the reverse-time SDE; ``steps`` evaluations plus one final denoising."""

    name: ClassVar[str] = "euler_maruyama"
    steps: int = option(1000, "sampler steps", min=1)
    denoise: bool = option(True, "end on the predicted x0 (one NFE) instead of the grid's last noise level")

    def check(self, process: GaussianPath) -> None:
        _check_diffusion(self.name, process)
        check_reverse_sde(self.name, process, sde_grid(process, self.steps)[:-1])

    def __call__(self, net: CountingModel, process, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = sde_grid(process, self.steps).tolist()
        for i in progress(range(self.steps)):
            x = euler_maruyama_step(net, process, x, grid[i], grid[i + 1], noise)
        return to_data(net, x, grid[-1]) if self.denoise else x


PREDICTORS = {"reverse_diffusion": reverse_diffusion_step, "euler_maruyama": euler_maruyama_step}


@dataclass(frozen=True)
class PredictorCorrector(Sampler):
    """Predictor-corrector (Song et al. Alg. 2-3): per step, ``corrector_steps`` Langevin moves at t,
    then a reverse-diffusion or Euler-Maruyama predictor step to the next time."""

    name: ClassVar[str] = "pc"
    steps: int = option(1000, "sampler steps", min=1)
    snr: float = option(0.16, "Langevin corrector signal-to-noise ratio", above=0)
    corrector_steps: int = option(1, "Langevin moves per step", min=0)
    predictor: str = option("reverse_diffusion", "predictor step", choices=tuple(PREDICTORS))
    denoise: bool = option(True, "end on the predicted x0 (one NFE) instead of the grid's last noise level")

    def check(self, process: GaussianPath) -> None:
        _check_diffusion(self.name, process)
        grid = sde_grid(process, self.steps)
        if self.predictor == "euler_maruyama":
            check_reverse_sde(self.name, process, grid[:-1])
        else:
            check_transitions(self.name, process, grid)

    def __call__(self, net: CountingModel, process, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = sde_grid(process, self.steps).tolist()
        predict = PREDICTORS[self.predictor]
        for i in progress(range(self.steps)):
            t, s = grid[i], grid[i + 1]
            for _ in range(self.corrector_steps):
                x = langevin_step(net, process, x, t, s, self.snr, noise)
            x = predict(net, process, x, t, s, noise)
        return to_data(net, x, grid[-1]) if self.denoise else x
