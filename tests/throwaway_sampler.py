"""A sampler registered from outside genflow, as a pytest plugin (``-p throwaway_sampler``) or by
``monkeypatch.setitem(SAMPLERS, ...)``: proof that a sampler is one class plus one dict entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from genflow.samplers import SAMPLERS, Sampler, option
from genflow.samplers.common import full_time, to_data


@dataclass(frozen=True)
class TemperedEuler(Sampler):
    """Euler steps on the probability-flow ODE from a prior draw scaled by ``temperature``."""

    name: ClassVar[str] = "tempered_euler"
    steps: int = option(40, "sampler steps", min=1)
    temperature: float = option(1.0, "scale of the starting noise (1: the prior; below 1: sharper samples)",
                                above=0, max=2)

    def __call__(self, net, process, x, noise, progress):
        grid = torch.linspace(process.t_max, process.t_min, self.steps + 1, dtype=torch.float64).tolist()
        x = self.temperature * x
        for t, s in progress(list(zip(grid[:-1], grid[1:]))):
            x = x + (s - t) * net.velocity(x, full_time(t, x))
        return to_data(net, x, grid[-1])


def pytest_configure(config) -> None:
    SAMPLERS[TemperedEuler.name] = TemperedEuler
