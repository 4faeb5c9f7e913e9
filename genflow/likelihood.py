"""Exact likelihood through the instantaneous change of variables (Chen et al. 2018, Thm. 1).

Along the probability-flow ODE (the flow ODE for flows) dx/dt = v(x, t),

    log p_{t_min}(x) = log p_prior(x(t_max)) + int_{t_min}^{t_max} div v(x(t), t) dt,

so every genflow model has a log-density: integrate x together with the divergence from data to
noise and add the prior's log-density. The divergence is exact (one autograd pass per dimension)
or Hutchinson's unbiased estimate eps^T (dv/dx) eps with one probe per example, fixed along the
trajectory (Grathwohl et al. 2019, FFJORD). The integration itself (torchdiffeq, in the variable
where DDPM's time axis has no kinks) lives in ``genflow.ode``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.ode import check_solver, draw_probes, log_density_change, rademacher
from genflow.processes.base import GaussianPath
from genflow.samplers.common import CountingModel


@dataclass(frozen=True)
class Likelihood:
    """Per-example log-density (nats), its two terms, the end point x(t_max) and the NFE."""

    log_prob: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    noise: Tensor
    nfe: int


def run(model, process: GaussianPath, x: Tensor, *, exact_divergence: bool = False, probe: str = "rademacher",
        method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int = 100,
        generator: torch.Generator | None = None, cond: dict | None = None, probes: Tensor | None = None) -> Likelihood:
    """``log_likelihood`` with its parts: prior term, divergence integral, x(t_max) and NFE.
    ``probes``: Hutchinson probes shaped like ``x`` (e.g. ``example_noise``'s), else drawn from ``generator``."""
    check_solver(method, rtol=rtol, atol=atol, steps=steps)
    net = CountingModel(model, process, cond or {})
    if probes is not None and probes.shape != x.shape:
        raise ValueError(f"probes must be shaped like x {tuple(x.shape)}; got {tuple(probes.shape)}")
    if exact_divergence:
        probes = None
    elif probes is None:
        probes = draw_probes(x, probe, generator)
    noise, delta = log_density_change(net.denoise, process, x, probe=probes, method=method, rtol=rtol, atol=atol,
                                      steps=steps)
    prior = process.prior_log_prob(noise)
    return Likelihood(prior + delta, prior, delta, noise, net.nfe)


def log_likelihood(model, process: GaussianPath, x: Tensor, *, exact_divergence: bool = False,
                   method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | None = None, **options) -> Tensor:
    """log p(x) in nats per example, of the model's distribution at t_min (DESIGN.md's API).

    Hutchinson's estimator by default (unbiased; pass ``generator`` for reproducible probes), the
    exact trace with ``exact_divergence=True``. ``options``: ``probe`` (rademacher | gaussian),
    ``probes`` (given probes), ``steps`` (fixed-grid methods), ``cond``. ``run(...)`` also returns the NFE.
    """
    return run(model, process, x, exact_divergence=exact_divergence, method=method, rtol=rtol, atol=atol,
               generator=generator, **options).log_prob


def dequantize(x: Tensor, bits: int, generator: torch.Generator | None = None, uniform: Tensor | None = None) -> Tensor:
    """Integer pixels k in {0..2^bits-1} -> z = 2 (k + u) / 2^bits - 1 in [-1, 1), u ~ U[0, 1)
    (``uniform`` when given, shaped like ``x``, else drawn from ``generator``)."""
    if uniform is not None and uniform.shape != x.shape:
        raise ValueError(f"uniform must be shaped like x {tuple(x.shape)}; got {tuple(uniform.shape)}")
    u = uniform.double() if uniform is not None else torch.rand(x.shape, generator=generator, dtype=torch.float64)
    u = u.to(x.device)
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
                 uniform: Tensor | None = None, **likelihood_options) -> Tensor:
    """Negative log-likelihood of discrete images in bits per dimension, per example.

    Uniform dequantization (Theis et al. 2016): with z = 2 (k + u) / 2^bits - 1, the scaling's
    Jacobian is (2 / 2^bits)^D, so
        bpd = -(E_u log p_z(z) + D log(2 / 2^bits)) / (D log 2) = -E_u log p_z(z) / (D log 2) + bits - 1,
    an upper bound on the discrete model's bpd. ``draws`` dequantization draws per image are
    averaged (they run as one batch, example by example: [x0 draw 0, x0 draw 1, x1 draw 0, ...],
    the layout of ``uniform`` when given, e.g. ``example_noise``'s). ``x``: integer pixels, or
    floats in [-1, 1].
    """
    if draws < 1 or bits < 1:
        raise ValueError(f"draws and bits must be >= 1; got draws={draws}, bits={bits}")
    k = to_integers(x, bits).repeat_interleave(draws, dim=0)
    z = dequantize(k, bits, generator, uniform).to(dtype)
    log_pz = log_likelihood(model, process, z, generator=generator, **likelihood_options).double()
    d = x[0].numel()
    nats = -(log_pz + d * math.log(2.0 / 2**bits))
    return (nats / (d * math.log(2.0))).reshape(len(x), draws).mean(1)


def example_seed(seed: int, index: int) -> int:
    """A 63-bit seed for example ``index`` under ``seed`` (SHA-256 of both: no two pairs share one)."""
    digest = hashlib.sha256(f"genflow-example:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def example_noise(indices: range | list[int], shape: tuple[int, ...], draws: int, seed: int,
                  dtype: torch.dtype = torch.float32, probe: str = "rademacher") -> tuple[Tensor, Tensor]:
    """(uniform float64, probes of ``dtype``), each [len(indices) * draws, *shape], drawn for every
    example from its own generator ``example_seed(seed, index)``: an example's dequantization noise
    and Hutchinson probes depend on (seed, index) only, never on its batch or rank (as NoiseSource
    does for sampling)."""
    uniform, normal = [], []
    for index in indices:
        g = torch.Generator().manual_seed(example_seed(seed, index))
        uniform.append(torch.rand((draws, *shape), generator=g, dtype=torch.float64))
        normal.append(torch.randn((draws, *shape), generator=g, dtype=dtype))
    probes = torch.cat(normal)
    return torch.cat(uniform), rademacher(probes) if probe == "rademacher" else probes
