"""Reverse-time SDE samplers (Song et al. 2021): Euler-Maruyama and predictor-corrector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.processes.base import GaussianPath
from genflow.samplers.common import CountingModel, NoiseSource, check_steps, full_time, refuse
from genflow.utils import append_dims, check_choice


def sde_grid(process: GaussianPath, steps: int) -> Tensor:
    """steps + 1 times, uniform from t_max down to t_min: ``steps`` intervals."""
    check_steps(steps)
    return torch.linspace(process.t_max, process.t_min, steps + 1, dtype=torch.float64)


def _check_diffusion(name: str, process: GaussianPath) -> None:
    if not process.has_reverse_sde:
        raise refuse(name, process, "a flow has no reverse-time SDE; use ode or ddim")


def euler_maruyama_step(net: CountingModel, process, x: Tensor, t: float, s: float, noise: NoiseSource) -> Tensor:
    """x_s = x + (f x - g^2 score)(s - t) + g sqrt(t - s) z, the reverse SDE (Song et al. eq. 6)."""
    tt = full_time(t, x)
    hub = net.denoise(x, tt)
    sigma = append_dims(process.sigma(tt), x.ndim)
    g2 = append_dims(process.diffusion_sq(tt), x.ndim)
    drift = process.forward_drift(x, tt) + g2 * hub.eps / sigma  # f x - g^2 score, score = -eps/sigma
    return x + drift * (s - t) + (g2 * (t - s)).sqrt() * noise.randn(x.shape[1:])


def reverse_diffusion_step(net: CountingModel, process, x: Tensor, t: float, s: float, noise: NoiseSource) -> Tensor:
    """Song et al. eq. 47 generalized: invert the discrete forward step x_t = (a_t/a_s) x_s + G n."""
    tt, ss = full_time(t, x), full_time(s, x)
    hub = net.denoise(x, tt)
    ct, cs = process.coefficients(tt), process.coefficients(ss)
    ratio = append_dims(ct.alpha / cs.alpha, x.ndim)
    g2 = append_dims(ct.sigma**2 - (ct.alpha / cs.alpha) ** 2 * cs.sigma**2, x.ndim)
    score = -hub.eps / append_dims(ct.sigma, x.ndim)
    return (2 - ratio) * x + g2 * score + g2.sqrt() * noise.randn(x.shape[1:])


def langevin_step(net: CountingModel, process, x: Tensor, t: float, s: float, snr: float, noise: NoiseSource) -> Tensor:
    """Langevin corrector (Song et al. Alg. 5), step 2 a (snr |z| / |score|)^2 with the norms at
    their noise-dominated values |z| / |score| = sigma_t, i.e. 2 a (snr sigma_t)^2 (Song & Ermon 2019).

    score_sde uses realized norms averaged over the batch, which makes a sample depend on its batch
    (and per-example realized norms blow up where the score vanishes, e.g. at a mode).
    """
    tt, ss = full_time(t, x), full_time(s, x)
    sigma = process.sigma(tt)
    score = -net.denoise(x, tt).eps / append_dims(sigma, x.ndim)
    a = (process.alpha(tt) / process.alpha(ss)) ** 2  # 1 - beta_i for VP, 1 for VE
    step = append_dims(2 * a * (snr * sigma) ** 2, x.ndim)
    return x + step * score + (2 * step).sqrt() * noise.randn(x.shape[1:])


@dataclass(frozen=True)
class EulerMaruyama:
    """Euler-Maruyama on the reverse-time SDE; ``steps`` evaluations plus one final denoising."""

    steps: int = 1000
    denoise: bool = True

    def check(self, process: GaussianPath) -> None:
        _check_diffusion("euler_maruyama", process)
        sde_grid(process, self.steps)

    def __call__(self, net: CountingModel, process, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = sde_grid(process, self.steps).tolist()
        for i in progress(range(self.steps)):
            x = euler_maruyama_step(net, process, x, grid[i], grid[i + 1], noise)
        return net.denoise(x, full_time(grid[-1], x)).x0 if self.denoise else x


@dataclass(frozen=True)
class PredictorCorrector:
    """Predictor-corrector (Song et al. Alg. 2-3): per step, ``corrector_steps`` Langevin moves at t,
    then a reverse-diffusion or Euler-Maruyama predictor step to the next time."""

    steps: int = 1000
    snr: float = 0.16
    corrector_steps: int = 1
    predictor: str = "reverse_diffusion"
    denoise: bool = True

    def check(self, process: GaussianPath) -> None:
        _check_diffusion("pc", process)
        check_choice(self.predictor, ("reverse_diffusion", "euler_maruyama"), "predictor")
        if self.snr <= 0 or self.corrector_steps < 0:
            raise ValueError(f"need snr > 0 and corrector_steps >= 0; got {self.snr}, {self.corrector_steps}")
        sde_grid(process, self.steps)

    def __call__(self, net: CountingModel, process, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = sde_grid(process, self.steps).tolist()
        predict = reverse_diffusion_step if self.predictor == "reverse_diffusion" else euler_maruyama_step
        for i in progress(range(self.steps)):
            t, s = grid[i], grid[i + 1]
            for _ in range(self.corrector_steps):
                x = langevin_step(net, process, x, t, s, self.snr, noise)
            x = predict(net, process, x, t, s, noise)
        return net.denoise(x, full_time(grid[-1], x)).x0 if self.denoise else x
