"""Shared fixtures: one instance of every process family, and interior times for each."""

from __future__ import annotations

import pytest
import torch

from genflow.processes import DDPM, VESDE, VPSDE, FlowMatching, GaussianPath, SubVPSDE

PROCESS_FACTORIES = {
    "ddpm_linear": lambda **kw: DDPM(**kw),
    "ddpm_cosine": lambda **kw: DDPM(beta_schedule="cosine", **kw),
    "vpsde": lambda **kw: VPSDE(**kw),
    "subvpsde": lambda **kw: SubVPSDE(**kw),
    "vesde": lambda **kw: VESDE(**kw),
    "flow": lambda **kw: FlowMatching(**kw),
    "flow_sigma_min": lambda **kw: FlowMatching(sigma_min=0.1, **kw),
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
