"""Shared fixtures: every registered process (plus variants that need arguments, and a path defined
only by its coefficients), and interior times for each."""

from __future__ import annotations

import math

import pytest
import torch

from genflow.processes import DDPM, PROCESSES, FlowMatching, GaussianPath, PathCoefficients


class CosinePath(GaussianPath):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2) on t in [0, 1]: a process given by its
    coefficients alone (the cosine schedule without Nichol & Dhariwal's offset; v-prediction, as
    Salimans & Ho pair with it). alpha(1) = cos(pi/2) = 6e-17: its reverse SDE's drift
    alpha'/alpha is unbounded at t = 1."""

    def __init__(self, prediction: str = "v") -> None:
        super().__init__(prediction)

    def coefficients(self, t: torch.Tensor) -> PathCoefficients:
        half = math.pi / 2
        return PathCoefficients(alpha=torch.cos(half * t), sigma=torch.sin(half * t),
                                d_alpha=-half * torch.sin(half * t), d_sigma=half * torch.cos(half * t))


#: every process of the registry by its name, and the cases on top of it
PROCESS_FACTORIES = {
    **PROCESSES,
    "ddpm_cosine": lambda **kw: DDPM(beta_schedule="cosine", **kw),
    "flow_sigma_min": lambda **kw: FlowMatching(sigma_min=0.1, **kw),
    "cosine_path": CosinePath,
}


@pytest.fixture(params=sorted(PROCESS_FACTORIES))
def process(request) -> GaussianPath:
    return PROCESS_FACTORIES[request.param]()


def interior_times(process: GaussianPath, n: int, seed: int = 0, margin: float = 0.01) -> torch.Tensor:
    """n float64 times strictly inside the process's interval (fractional for DDPM)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = process.t_min, process.t_max
    span = hi - lo
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return lo + span * (margin + (1 - 2 * margin) * u)


def assert_nfe_is_honest(model, process: GaussianPath, sampler: str, steps: int) -> None:
    """With and without ``denoise``, the reported NFE equals the network calls and ``steps``
    (a solver whose last step ends on the predicted x0 spends no call more for it)."""
    from genflow.samplers import run

    calls = []

    def counted(x, t):
        calls.append(len(x))
        return model(x, t)

    for denoise in (True, False):
        calls.clear()
        out = run(counted, process, sampler=sampler, steps=steps, shape=(4, 2), denoise=denoise,
                  generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert out.nfe == len(calls) == steps, (denoise, out.nfe, len(calls))
