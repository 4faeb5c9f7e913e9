"""The ODE sampler: the probability-flow ODE (Song et al. 2021, eq. 13) or a flow's ODE, solved by
torchdiffeq in the variable ``genflow.ode.Chart`` picks (log sigma/alpha for diffusions, time for flows)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.ode import ADAPTIVE_METHODS, FIXED_GRID_METHODS, check_solver, solve
from genflow.processes.base import GaussianPath
from genflow.samplers.common import CountingModel, NoiseSource, check_steps, full_time


@dataclass(frozen=True)
class ODE:
    """Deterministic sampling along the probability-flow / flow ODE, t_max -> t_min, then the
    predicted x0 at t_min (``denoise``; one more evaluation). ``steps`` sets fixed-step grids,
    uniform in the ODE's variable (log sigma/alpha for diffusions, time for flows)."""

    steps: int = 50
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    denoise: bool = True

    def check(self, process: GaussianPath) -> None:
        check_steps(self.steps)
        check_solver(self.method, rtol=self.rtol, atol=self.atol, steps=self.steps)

    def __call__(self, net: CountingModel, process, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        x = solve(net.denoise, process, x, to_noise=False, method=self.method, steps=self.steps, rtol=self.rtol,
                  atol=self.atol)
        if not self.denoise:
            return x
        return net.denoise(x, full_time(process.t_min, x)).x0


__all__ = ["ADAPTIVE_METHODS", "FIXED_GRID_METHODS", "ODE"]
