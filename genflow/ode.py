"""The probability-flow ODE in one place: solver settings, the variable it is integrated in, and the
augmented integration (state, divergence, regularizers) through torchdiffeq.

Samplers, the likelihood and the CNF process import this module; it imports only the processes'
algebra. Along the probability-flow ODE (Song et al. 2021, eq. 13; a flow's ODE for flows)

    dx/dt = alpha'(t) x0(x, t) + sigma'(t) eps(x, t).

DDPM's continuous extension (log alpha-bar linear between integer steps) has a kink in alpha' and
sigma' at every step, where an adaptive solver in native time must restart (~7 NFE per step, ~7000
at T = 1000). Against any variable u that is a smooth function of the log-SNR lambda,

    dx/du = (alpha' x0 + sigma' eps) (d lambda/du) / (d lambda/dt),

the jumps cancel in the ratio. ``Chart`` solves paths with kinks in the time of the reference
VP-SDE with the same log-SNR (the variable that measured cheapest), and every other path in its
own time (flows, whose log-SNR is infinite at an end, included).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint, odeint_adjoint

from genflow.processes.base import Denoised, GaussianPath
from genflow.utils import append_dims, check_choice, sum_except_batch

FIXED_GRID_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "heun2", "heun3")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")
PROBES = ("rademacher", "gaussian")

Velocity = Callable[[Tensor, Tensor], Tensor]
Denoiser = Callable[[Tensor, Tensor], Denoised]


# --------------------------------------------------------------------------- solver settings
def check_method(method: str, what: str = "method") -> None:
    check_choice(method, FIXED_GRID_METHODS + ADAPTIVE_METHODS, what)


def check_solver(method: str, *, rtol: float, atol: float, steps: int, prefix: str = "") -> None:
    """One line for any bad setting: a known method, finite tolerances > 0 and an integer steps >= 1.
    ``prefix`` goes before each name (``"--"`` names command-line flags)."""
    check_method(method, f"{prefix}method")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{prefix}{name} must be a finite number > 0; got {value!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{prefix}steps (of a fixed-grid method) must be an integer >= 1; got {steps!r}")


def solver_grid(x: Tensor, t0: float, t1: float, *, method: str, steps: int,
                kinks: Tensor | None = None) -> tuple[Tensor, dict]:
    """The output times and torchdiffeq options for solving from t0 to t1 with ``method``:
    ``steps`` uniform steps for fixed-grid methods; for adaptive ones, no step past t1 and a
    restart at each of the given kinks."""
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


# --------------------------------------------------------------------------- the variable
#: The reference VP-SDE whose time a path with kinks is solved in (Song et al. 2021: beta from 0.1 to 20).
VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0


def vp_time(log_snr: Tensor) -> Tensor:
    """The time u of the reference VP-SDE with this log-SNR: B(u) = 0.1 u + 9.95 u^2 = softplus(-lambda)."""
    a = 0.5 * (VP_BETA_MAX - VP_BETA_MIN)
    integrated = torch.nn.functional.softplus(-log_snr)
    return 2 * integrated / (VP_BETA_MIN + torch.sqrt(VP_BETA_MIN**2 + 4 * a * integrated))


def vp_log_snr(u: Tensor) -> tuple[Tensor, Tensor]:
    """lambda(u) of the reference VP-SDE and d lambda/du."""
    a = 0.5 * (VP_BETA_MAX - VP_BETA_MIN)
    integrated = VP_BETA_MIN * u + a * u**2
    return -torch.log(torch.expm1(integrated)), -(VP_BETA_MIN + 2 * a * u) / -torch.expm1(-integrated)


@dataclass(frozen=True)
class Chart:
    """The variable u the ODE is solved in, with the process time t(u): the process's own time, or
    (``vp``) the time of the reference VP-SDE with the same log-SNR, where dx/du = (dx/dt) / (du/dt).

    A path with kinks (DDPM's extension) is solved in the reference VP time: alpha', sigma' and
    d lambda/dt all jump together at a kink, so their ratio is smooth (the exact model's ODE has no
    kink left) and an adaptive solver needs no restart. Smooth paths keep their own time. On the
    16-D mixture's exact scores, dopri5 at 1e-5 on DDPM(T = 1000) takes 80 NFE in the VP time, 116
    in log(sigma/alpha) and 7000 in its own time with restarts; VP in its own time takes 80-98.
    """

    process: GaussianPath
    vp: bool

    @classmethod
    def of(cls, process: GaussianPath) -> Chart:
        """The VP time where the path has kinks and a finite log-SNR at both ends; else its own."""
        if process.kinks() is None:
            return cls(process, vp=False)
        ends = process.log_snr(torch.tensor([process.t_min, process.t_max], dtype=torch.float64))
        return cls(process, vp=bool(torch.isfinite(ends).all()))

    def ends(self) -> tuple[float, float]:
        """u at the data end (t_min) and at the noise end (t_max)."""
        ends = torch.tensor([self.process.t_min, self.process.t_max], dtype=torch.float64)
        return tuple((vp_time(self.process.log_snr(ends)) if self.vp else ends).tolist())  # type: ignore[return-value]

    def kinks(self) -> Tensor | None:
        """Where an adaptive solver must restart: the path's kinks in its own time, none in the VP time."""
        return None if self.vp else self.process.kinks()

    def velocity(self, denoise: Denoiser) -> Velocity:
        """dx/du from a denoiser (x, t) -> (x0, eps): alpha' x0 + sigma' eps, divided by du/dt."""
        process, vp = self.process, self.vp

        def velocity(x: Tensor, u: Tensor) -> Tensor:
            if vp:
                log_snr, dlog_snr_du = vp_log_snr(u[:1].double())
                t = process.time_at_log_snr(log_snr).to(u).expand(len(u)).contiguous()
            else:
                t = u
            hub = denoise(x, t)
            v = process.from_hub(hub.x0, hub.eps, t, "velocity")
            if not vp:
                return v
            c = process.coefficients(t)
            dlog_snr_dt = 2 * (c.d_alpha / c.alpha - c.d_sigma / c.sigma)
            return v * append_dims(dlog_snr_du.to(v) / dlog_snr_dt, x.ndim)

        return velocity


def solve(denoise: Denoiser, process: GaussianPath, x: Tensor, *, to_noise: bool, method: str, steps: int,
          rtol: float, atol: float, chart: Chart | None = None) -> Tensor:
    """x at the other end of the probability-flow ODE: from t_min to t_max (``to_noise``, encoding)
    or back, in ``chart`` (default ``Chart.of(process)``). Fixed-grid methods take ``steps``
    uniform steps in the chart's variable."""
    chart = chart or Chart.of(process)
    u_data, u_noise = chart.ends()
    u0, u1 = (u_data, u_noise) if to_noise else (u_noise, u_data)
    ts, options = solver_grid(x, u0, u1, method=method, steps=steps, kinks=chart.kinks())
    velocity = chart.velocity(denoise)

    def f(u: Tensor, y: Tensor) -> Tensor:
        # a real (contiguous) time vector, like every other call's: a compiled net sees one input layout
        return velocity(y, on_path(u, u0, u1).expand(y.shape[0]).contiguous())

    return odeint(f, x, ts, method=method, rtol=rtol, atol=atol, options=options)[-1]


# --------------------------------------------------------------------------- with the divergence
def draw_probes(x: Tensor, kind: str, generator: torch.Generator | None) -> Tensor:
    """Hutchinson probes with E[eps eps^T] = I: Rademacher signs or standard normals."""
    check_choice(kind, PROBES, "probe")
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return rademacher(noise) if kind == "rademacher" else noise


def rademacher(noise: Tensor) -> Tensor:
    """Signs of ``noise`` as +-1 (never 0, which sign() would give for an exact zero)."""
    return torch.where(noise >= 0, 1.0, -1.0).to(noise)


def divergence(v: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """The exact div_x v per example: one autograd pass per dimension."""
    flat_v = v.reshape(v.shape[0], -1)
    total = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for i in range(flat_v.shape[1]):
        (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True, create_graph=create_graph)
        total = total + grad.reshape(grad.shape[0], -1)[:, i]
    return total


class _Dynamics(torch.nn.Module):
    """d/dt of (x, delta, kinetic, frobenius): v, div v, |v|^2, |probe^T dv/dx|^2 (Finlay et al. 2020).

    A module so that ``odeint_adjoint`` can find the network's parameters. With ``create_graph``
    the divergence stays differentiable (maximum-likelihood training); otherwise it is detached.
    """

    def __init__(self, velocity: Velocity, probe: Tensor | None, create_graph: bool, t0: float, t1: float,
                 params: tuple = ()) -> None:
        super().__init__()
        self.velocity, self.probe, self.create_graph, self.t0, self.t1 = velocity, probe, create_graph, t0, t1
        self.params = torch.nn.ParameterList(params)  # only for odeint_adjoint's bookkeeping

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            y = state[0]
            if not self.create_graph:
                y = y.detach()
            if not y.requires_grad:
                y = y.requires_grad_(True)
            v = self.velocity(y, on_path(t, self.t0, self.t1).expand(y.shape[0]))
            if self.probe is not None:  # one vector-Jacobian product gives both Hutchinson terms
                (vjp,) = torch.autograd.grad(v, y, self.probe, create_graph=self.create_graph)
                div, frobenius = sum_except_batch(vjp * self.probe), sum_except_batch(vjp**2)
            else:
                div = divergence(v, y, create_graph=self.create_graph)
                frobenius = torch.zeros_like(div)
            kinetic = sum_except_batch(v**2)
        if not self.create_graph:
            return v.detach(), div.detach(), kinetic.detach(), frobenius.detach()
        return v, div, kinetic, frobenius


@dataclass(frozen=True)
class Flow:
    """x(t1), the divergence integral delta, and the integrals of |v|^2 and |probe^T dv/dx|^2."""

    end: Tensor
    delta: Tensor
    kinetic: Tensor
    frobenius: Tensor


def integrate_flow(velocity: Velocity, x: Tensor, t0: float, t1: float, *, probe: Tensor | None = None,
                   method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int = 100,
                   kinks: Tensor | None = None, create_graph: bool = False, adjoint: bool = False,
                   params: tuple = ()) -> Flow:
    """Solve dx/dt = velocity(x, t) from t0 to t1 together with the divergence integral.

    delta = int_{t0}^{t1} div v dt, so log p_t0(x) = log p_t1(x(t1)) + delta (Chen et al. 2018,
    Thm. 1). ``probe`` None: the exact divergence; else Hutchinson with that fixed probe.
    ``adjoint`` backpropagates through ``odeint_adjoint`` (memory independent of the number of
    steps; ``params`` are the network's).
    """
    if adjoint and not params:
        raise ValueError("adjoint=True needs params= (the network's parameters) to give them gradients")
    ts, options = solver_grid(x, t0, t1, method=method, steps=steps, kinks=kinks)
    dynamics = _Dynamics(velocity, probe, create_graph, t0, t1, params)
    zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    solve_ = odeint_adjoint if adjoint else odeint
    extra = {"adjoint_params": tuple(params), "adjoint_options": options} if adjoint else {}
    xs, deltas, kinetic, frobenius = solve_(dynamics, (x, zero, zero, zero), ts, method=method, rtol=rtol,
                                            atol=atol, options=options, **extra)
    return Flow(xs[-1], deltas[-1], kinetic[-1], frobenius[-1])


def flow_with_divergence(velocity: Velocity, x: Tensor, t0: float, t1: float, **options) -> tuple[Tensor, Tensor]:
    """(x(t1), int_{t0}^{t1} div v dt): ``integrate_flow`` for evaluation."""
    flow = integrate_flow(velocity, x, t0, t1, **options)
    return flow.end, flow.delta


def log_density_change(denoise: Denoiser, process: GaussianPath, x: Tensor, *, probe: Tensor | None = None,
                       method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                       steps: int = 100, chart: Chart | None = None) -> tuple[Tensor, Tensor]:
    """(x(t_max), delta) along the probability-flow ODE from data x at t_min, solved in ``chart``
    (default ``Chart.of(process)``): log p_{t_min}(x) = log p_{t_max}(x(t_max)) + delta."""
    chart = chart or Chart.of(process)
    u0, u1 = chart.ends()
    return flow_with_divergence(chart.velocity(denoise), x, u0, u1, probe=probe, method=method, rtol=rtol,
                                atol=atol, steps=steps, kinks=chart.kinks())
