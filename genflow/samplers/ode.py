"""The probability-flow ODE (Song et al. 2021, eq. 13) or a flow's ODE, solved by torchdiffeq."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torchdiffeq import odeint

from genflow.samplers.base import Sampler, option
from genflow.samplers.common import CountingModel, NoiseSource, to_data

FIXED_GRID_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "heun2", "heun3")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")


def check_method(method: str) -> None:
    if method not in FIXED_GRID_METHODS + ADAPTIVE_METHODS:
        raise ValueError(f"method must be one of {', '.join(FIXED_GRID_METHODS + ADAPTIVE_METHODS)}; got {method!r}")


def solver_grid(x: Tensor, t0: float, t1: float, *, method: str, steps: int,
                kinks: Tensor | None = None) -> tuple[Tensor, dict]:
    """The output times and torchdiffeq options for solving from t0 to t1 with ``method``:
    ``steps`` uniform steps for fixed-grid methods; for adaptive ones, no step past t1 and a
    restart at each kink of the path (e.g. DDPM's integer steps)."""
    check_method(method)
    n = steps + 1 if method in FIXED_GRID_METHODS else 2
    ts = torch.linspace(t0, t1, n, dtype=torch.float64).to(x.device, x.dtype)
    if method in FIXED_GRID_METHODS:
        return ts, {}
    # Adaptive solvers would otherwise step past t1 and interpolate back, evaluating the model
    # outside the path's interval (alpha > 1 for a flow, abar > 1 for DDPM).
    options = {"step_t": ts[-1:]}
    if kinks is not None:
        options["jump_t"] = kinks.to(x.device, x.dtype)
    return ts, options


def on_path(t: Tensor, t0: float, t1: float) -> Tensor:
    """``t`` clamped to [t0, t1]: torchdiffeq's first-step heuristic probes t0 + h0 without
    clamping h0 to the interval (h0 ran to t = -23000 on DDPM's 1000-step time axis)."""
    return t.clamp(min(t0, t1), max(t0, t1))


def integrate(net: CountingModel, x: Tensor, t0: float, t1: float, *, method: str, steps: int, rtol: float,
              atol: float, kinks: Tensor | None = None) -> Tensor:
    """Solve dx/dt = velocity(x, t) from t0 to t1; fixed-step methods use ``steps`` uniform steps."""
    ts, options = solver_grid(x, t0, t1, method=method, steps=steps, kinks=kinks)

    def f(t: Tensor, y: Tensor) -> Tensor:
        # a real (contiguous) time vector, like every other call's: a compiled net sees one input layout
        return net.velocity(y, on_path(t, t0, t1).expand(y.shape[0]).contiguous())

    return odeint(f, x, ts, method=method, rtol=rtol, atol=atol, options=options)[-1]


@dataclass(frozen=True)
class ODE(Sampler):
    """Deterministic sampling along the probability-flow / flow ODE, t_max -> t_min, then the
    predicted x0 at t_min (``denoise``; one more evaluation). ``steps`` sets fixed-step grids."""

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
            x = integrate(net, x, process.t_max, process.t_min, method=self.method, steps=self.steps,
                          rtol=self.rtol, atol=self.atol, kinks=process.kinks())
        except AssertionError as err:  # an adaptive method's step control gave up ('underflow in dt')
            if net.first_nonfinite() is None:
                raise RuntimeError(f"sampler 'ode': torchdiffeq's {self.method} gave up: {err}") from None
            return torch.full_like(x, math.nan)  # on a non-finite field: run() names where it started
        return to_data(net, x, process.t_min) if self.denoise else x
