"""Exact likelihood through the instantaneous change of variables (Chen et al. 2018, Thm. 1).

Along the probability-flow ODE (the flow ODE for flows) dx/dt = v(x, t),

    log p_{t_min}(x) = log p_prior(x(t_max)) + int_{t_min}^{t_max} div v(x(t), t) dt,

so every genflow model has a log-density: integrate x together with the divergence from data to
noise (torchdiffeq) and add the prior's log-density. The divergence is exact (one autograd pass
per dimension) or Hutchinson's unbiased estimate eps^T (dv/dx) eps with one probe per example,
fixed along the trajectory (Grathwohl et al. 2019, FFJORD).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from genflow.processes.base import GaussianPath
from genflow.samplers.common import CountingModel
from genflow.samplers.ode import on_path, solver_grid
from genflow.utils import check_choice, sum_except_batch

PROBES = ("rademacher", "gaussian")
Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Likelihood:
    """Per-example log-density (nats), its two terms, the end point x(t_max) and the NFE."""

    log_prob: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    noise: Tensor
    nfe: int


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

    delta = int_{t0}^{t1} div v dt, so log p_t0(x) = log p_t1(x(t1)) + delta. ``probe`` None: the
    exact divergence; else Hutchinson with that fixed probe. ``adjoint`` backpropagates through
    ``odeint_adjoint`` (memory independent of the number of steps; ``params`` are the network's).
    """
    from torchdiffeq import odeint_adjoint

    if adjoint and not params:
        raise ValueError("adjoint=True needs params= (the network's parameters) to give them gradients")
    ts, options = solver_grid(x, t0, t1, method=method, steps=steps, kinks=kinks)
    dynamics = _Dynamics(velocity, probe, create_graph, t0, t1, params)
    zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    solve = odeint_adjoint if adjoint else odeint
    extra = {"adjoint_params": tuple(params), "adjoint_options": options} if adjoint else {}
    xs, deltas, kinetic, frobenius = solve(dynamics, (x, zero, zero, zero), ts, method=method, rtol=rtol,
                                           atol=atol, options=options, **extra)
    return Flow(xs[-1], deltas[-1], kinetic[-1], frobenius[-1])


def flow_with_divergence(velocity: Velocity, x: Tensor, t0: float, t1: float, **options) -> tuple[Tensor, Tensor]:
    """(x(t1), int_{t0}^{t1} div v dt): ``integrate_flow`` for evaluation."""
    flow = integrate_flow(velocity, x, t0, t1, **options)
    return flow.end, flow.delta


def run(model, process: GaussianPath, x: Tensor, *, exact_divergence: bool = False, probe: str = "rademacher",
        method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int = 100,
        generator: torch.Generator | None = None, cond: dict | None = None) -> Likelihood:
    """``log_likelihood`` with its parts: prior term, divergence integral, x(t_max) and NFE."""
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be > 0; got {rtol}, {atol}")
    net = CountingModel(model, process, cond or {})
    probes = None if exact_divergence else draw_probes(x, probe, generator)
    noise, delta = flow_with_divergence(net.velocity, x, process.t_min, process.t_max, probe=probes,
                                        method=method, rtol=rtol, atol=atol, steps=steps, kinks=process.kinks())
    prior = process.prior_log_prob(noise)
    return Likelihood(prior + delta, prior, delta, noise, net.nfe)


def log_likelihood(model, process: GaussianPath, x: Tensor, *, exact_divergence: bool = False,
                   method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | None = None, **options) -> Tensor:
    """log p(x) in nats per example, of the model's distribution at t_min (DESIGN.md's API).

    Hutchinson's estimator by default (unbiased; pass ``generator`` for reproducible probes), the
    exact trace with ``exact_divergence=True``. ``options``: ``probe`` (rademacher | gaussian),
    ``steps`` (fixed-grid methods), ``cond``. ``run(...)`` also returns the NFE.
    """
    return run(model, process, x, exact_divergence=exact_divergence, method=method, rtol=rtol, atol=atol,
               generator=generator, **options).log_prob


def dequantize(x: Tensor, bits: int, generator: torch.Generator | None = None) -> Tensor:
    """Integer pixels k in {0..2^bits-1} -> z = 2 (k + u) / 2^bits - 1 in [-1, 1), u ~ U[0, 1)."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device="cpu").to(x.device)
    return 2.0 * (x.double() + u) / 2**bits - 1.0


def to_integers(x: Tensor, bits: int) -> Tensor:
    """Pixels as integers: uint8/int tensors as they are, floats in [-1, 1] by k = round((x+1)/2 (2^bits-1))."""
    if not x.dtype.is_floating_point:
        k = x.long()
    else:
        if float(x.min()) < -1 - 1e-6 or float(x.max()) > 1 + 1e-6:
            raise ValueError("scaled images must lie in [-1, 1]; pass integer pixels otherwise")
        k = torch.round((x.double() + 1) / 2 * (2**bits - 1)).long()
    if int(k.min()) < 0 or int(k.max()) > 2**bits - 1:
        raise ValueError(f"pixel values must lie in 0..{2**bits - 1} for bits={bits}")
    return k


def bits_per_dim(model, process: GaussianPath, x: Tensor, *, bits: int = 8, draws: int = 1,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 **likelihood_options) -> Tensor:
    """Negative log-likelihood of discrete images in bits per dimension, per example.

    Uniform dequantization (Theis et al. 2016): with z = 2 (k + u) / 2^bits - 1, the scaling's
    Jacobian is (2 / 2^bits)^D, so
        bpd = -(E_u log p_z(z) + D log(2 / 2^bits)) / (D log 2) = -E_u log p_z(z) / (D log 2) + bits - 1,
    an upper bound on the discrete model's bpd. ``draws`` dequantization draws per image are
    averaged (they run as one batch). ``x``: integer pixels, or floats in [-1, 1].
    """
    if draws < 1 or bits < 1:
        raise ValueError(f"draws and bits must be >= 1; got draws={draws}, bits={bits}")
    k = to_integers(x, bits).repeat_interleave(draws, dim=0)
    z = dequantize(k, bits, generator).to(dtype)
    log_pz = log_likelihood(model, process, z, generator=generator, **likelihood_options).double()
    d = x[0].numel()
    nats = -(log_pz + d * math.log(2.0 / 2**bits))
    return (nats / (d * math.log(2.0))).reshape(len(x), draws).mean(1)
