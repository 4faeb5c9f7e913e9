"""Samplers: one name -> class dict, one entry point, and deterministic inversion.

    x = genflow.sample(model, process, sampler="ddim", steps=50, shape=(16, 2), generator=g)
    result = genflow.samplers.run(...)      # SampleResult(samples, nfe)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genflow.ode import check_solver, solve
from genflow.processes.base import GaussianPath
from genflow.samplers.base import Sampler, allowed, option
from genflow.samplers.common import (CountingModel, NoiseSource, NonFiniteSamples, SampleResult, check_finite,
                                     check_steps, time_grid)
from genflow.samplers.ddim import DDIM, DDPMAncestral, ddim_walk
from genflow.samplers.graphs import CUDAGraphModel, check_graphable
from genflow.samplers.guidance import check_guidance, unconditional
from genflow.samplers.multistep import IPNDM, LMS
from genflow.samplers.ode import ODE
from genflow.samplers.sde import EulerMaruyama, PredictorCorrector
from genflow.samplers.singlestep import DPMSolver
from genflow.samplers.unipc import UniPC
from genflow.samplers.solvers import SCHEDULES, DPMSolverPP2M, DPMSolverPP3M, Heun, NoiseGrid, noise_grid
from genflow.samplers.schedules import LearnedSchedule, load_schedule
from genflow.samplers.learn import learn_schedule

#: Every sampler, by name: a ``Sampler`` subclass (samplers/base.py) whose ``name`` is its key.
SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMAncestral,
    "ddim": DDIM,
    "euler_maruyama": EulerMaruyama,
    "pc": PredictorCorrector,
    "ode": ODE,
    "dpmpp_2m": DPMSolverPP2M,
    "dpmpp_3m": DPMSolverPP3M,
    "heun": Heun,
    "lms": LMS,
    "ipndm": IPNDM,
    "unipc": UniPC,
    "dpm_solver": DPMSolver,
}


def make(sampler: str, steps: int, **options: Any) -> Sampler:
    """Build a sampler by name, refusing unknown names and options, and any option's value outside
    what its declaration allows, with one clear line."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid names: {', '.join(SAMPLERS)}")
    cls = SAMPLERS[sampler]
    unknown = sorted(set(options) - set(cls.options()))
    if unknown:
        raise ValueError(f"sampler {sampler!r} takes no option(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(cls.options())}")
    return cls(steps=steps, **options)


def _progress(enabled: bool, desc: str) -> Callable:
    return (lambda it: tqdm(it, desc=desc, leave=False)) if enabled else (lambda it: it)


def run(
    model: Callable[..., Tensor],
    process: GaussianPath,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    noise: Tensor | None = None,
    shape: tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    cond: dict | None = None,
    guidance: float = 0.0,
    uncond: dict | None = None,
    seed_offset: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> SampleResult:
    """Sample from ``model`` under ``process``; returns the samples and the NFE used.

    ``noise`` is the starting point at t_max (else drawn from the prior with ``shape``). Every
    random draw is per sample (``NoiseSource``), so a sample does not depend on the batch size;
    ``seed_offset`` continues the numbering when a large set is drawn in batches.

    ``guidance`` is classifier-free guidance's w (Ho & Salimans 2022): the output is
    (1 + w) cond - w uncond, so w = 0 is the conditional model given ``cond``. ``uncond`` defaults
    to ``cond`` with every label ``y`` replaced by the net's null class. A guided step is one NFE on a
    doubled batch (``SampleResult.forward_batch_factor`` = 2); see ``CountingModel``.

    Non-finite samples are refused (``NonFiniteSamples``, naming the first network evaluation
    whose input or output was not finite).
    """
    algo = make(sampler, steps, **options)
    algo.check(process)
    check_guidance(guidance)
    cond = cond or {}
    if guidance:
        uncond = unconditional(model, cond, uncond)
    if (noise is None) == (shape is None):
        raise ValueError("give exactly one of noise= (the starting point) or shape=")
    if noise is None:
        dtype = dtype or torch.get_default_dtype()
        device = torch.device(device or "cpu")
        source = NoiseSource.from_generator(shape[0], generator, device, dtype, seed_offset)
        x = process.prior_std() * source.randn(tuple(shape[1:]))
    else:
        x = noise
        source = NoiseSource.from_generator(x.shape[0], generator, x.device, x.dtype, seed_offset)
    net = CountingModel(model, process, cond, guidance, uncond)
    with torch.no_grad():
        out = algo(net, process, x, source, _progress(progress, sampler))
    check_finite(out, net, sampler, process)
    return SampleResult(samples=out, nfe=net.nfe, forward_batch_factor=net.forward_batch_factor)


def sample(model, process, *, sampler: str = "ddim", steps: int = 50, noise=None, shape=None, generator=None,
           progress: bool = False, **options) -> Tensor:
    """``run(...)`` returning only the samples (DESIGN.md's ``genflow.sample``)."""
    return run(model, process, sampler=sampler, steps=steps, noise=noise, shape=shape, generator=generator,
               progress=progress, **options).samples


def encode(model, process: GaussianPath, x0: Tensor, *, sampler: str = "ddim", steps: int = 50,
           spacing: str = "linspace", method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
           cond: dict | None = None) -> Tensor:
    """Deterministic inversion, data -> noise: DDIM run backwards (eta = 0) or the PF-ODE forwards.

    ``sample(..., noise=encode(...), denoise=False)`` with the same settings decodes it again.
    """
    if sampler not in ("ddim", "ode"):
        raise ValueError(f"encode takes sampler 'ddim' or 'ode'; got {sampler!r}")
    check_steps(steps)
    net = CountingModel(model, process, cond or {})
    with torch.no_grad():
        if sampler == "ode":
            check_solver(method, rtol=rtol, atol=atol, steps=steps)
            return solve(net.denoise, process, x0, to_noise=True, method=method, steps=steps, rtol=rtol, atol=atol)
        return ddim_walk(net, process, x0, time_grid(process, steps, spacing).flip(0).tolist())


__all__ = [
    "DDIM", "ODE", "SAMPLERS", "SCHEDULES", "CUDAGraphModel", "DDPMAncestral", "DPMSolver", "DPMSolverPP2M", "DPMSolverPP3M",
    "EulerMaruyama", "Heun", "IPNDM", "LMS", "LearnedSchedule", "NoiseGrid", "NoiseSource", "NonFiniteSamples",
    "PredictorCorrector", "SampleResult", "learn_schedule", "load_schedule",
    "Sampler", "UniPC", "allowed", "check_graphable", "encode", "make", "noise_grid", "option", "run", "sample", "time_grid",
]
