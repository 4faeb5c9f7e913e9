"""The ODE sampler: the probability-flow ODE (Song et al. 2021, eq. 13) or a flow's ODE, solved by
torchdiffeq in the variable ``genflow.ode.Chart`` picks (the reference VP time for DDPM, its own
time for every other path)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from genflow.ode import ADAPTIVE_METHODS, FIXED_GRID_METHODS, solve
from genflow.samplers.base import Sampler, option
from genflow.samplers.common import CountingModel, NoiseSource, to_data


@dataclass(frozen=True)
class ODE(Sampler):
    """Deterministic sampling along the probability-flow / flow ODE, t_max -> t_min, then the
    predicted x0 at t_min (``denoise``; one more evaluation). ``steps`` sets fixed-step grids,
    uniform in the ODE's variable (``genflow.ode.Chart``)."""

    name: ClassVar[str] = "ode"
    steps: int = option(50, "sampler steps", min=1)
    method: str = option("dopri5", "torchdiffeq method (fixed-grid or adaptive)",
                         choices=FIXED_GRID_METHODS + ADAPTIVE_METHODS)
    rtol: float = option(1e-5, "relative tolerance of an adaptive method", above=0)
    atol: float = option(1e-5, "absolute tolerance of an adaptive method", above=0)
    denoise: bool = option(True, "end on the predicted x0 (one NFE) instead of the grid's last noise level")

    @property
    def fixed_step(self) -> bool:
        """Only a fixed-grid method: an adaptive one's steps depend on the batch (and its step
        control syncs with the host every step)."""
        return self.method in FIXED_GRID_METHODS

    def __call__(self, net: CountingModel, process, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        try:
            x = solve(net.denoise, process, x, to_noise=False, method=self.method, steps=self.steps,
                      rtol=self.rtol, atol=self.atol)
        except AssertionError as err:  # an adaptive method's step control gave up ('underflow in dt')
            if net.first_nonfinite() is None:
                raise RuntimeError(f"sampler 'ode': torchdiffeq's {self.method} gave up: {err}") from None
            return torch.full_like(x, math.nan)  # on a non-finite field: run() names where it started
        return to_data(net, x, process.t_min) if self.denoise else x


__all__ = ["ADAPTIVE_METHODS", "FIXED_GRID_METHODS", "ODE"]
