"""What every sampler shares: per-sample noise, NFE counting, time grids, refusals."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.processes.base import Denoised, GaussianPath
from genflow.utils import check_choice

SPACINGS = ("leading", "trailing", "linspace", "quadratic")


@dataclass(frozen=True)
class SampleResult:
    """Samples and the number of network evaluations (NFE) it took to make them.

    ``forward_batch_factor`` is how many rows each evaluation fed the network per sample: 2 under
    classifier-free guidance (conditional and unconditional in one doubled batch), else 1.
    """

    samples: Tensor
    nfe: int
    forward_batch_factor: int = 1


class NoiseSource:
    """Gaussian noise drawn per sample from its own generator, so a sample's value does not
    depend on the batch it is drawn in (as EDM's StackedRandomGenerator).

    Sample ``i`` of a batch uses seed ``seed + offset + i``; a batch of k equals the first k
    samples of a batch of 2k, and batches with offsets 0, k, 2k, ... equal one big batch. Each
    generator draws the noise of several steps at once (how many depends on the example's size
    only, never on the batch), so the per-sample streams cost few calls per step.
    """

    CHUNK_VALUES = 2**18  # values per sample drawn in one call (at most MAX_CHUNK steps)
    MAX_CHUNK = 16

    def __init__(self, batch: int, seed: int, device: torch.device, dtype: torch.dtype, offset: int = 0) -> None:
        self.device, self.dtype = device, dtype
        self.generators = [torch.Generator(device=device).manual_seed(seed + offset + i) for i in range(batch)]
        self._buffer: Tensor | None = None
        self._next = 0

    @classmethod
    def from_generator(cls, batch, generator, device, dtype, offset: int = 0) -> NoiseSource:
        """Derive the base seed from ``generator`` (or fresh entropy when it is None)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else int(
            torch.seed() % 2**62
        )
        return cls(batch, seed, device, dtype, offset)

    def randn(self, event_shape: tuple[int, ...]) -> Tensor:
        """One standard-normal draw per sample, shaped ``[batch, *event_shape]``."""
        event_shape = tuple(event_shape)
        if self._buffer is None or self._buffer.shape[2:] != event_shape or self._next == self._buffer.shape[1]:
            chunk = max(1, min(self.MAX_CHUNK, self.CHUNK_VALUES // max(1, math.prod(event_shape))))
            self._buffer = torch.stack([torch.randn((chunk, *event_shape), generator=g, device=self.device,
                                                    dtype=self.dtype) for g in self.generators])
            self._next = 0
        self._next += 1
        return self._buffer[:, self._next - 1]


class CountingModel:
    """Wraps ``model(x, t, **cond)`` as ``denoise(x, t) -> (x0, eps)`` and counts evaluations.

    With ``guidance`` w != 0 it is the classifier-free guided model (Ho & Salimans 2022, eq. 6):
    out = out_c + w (out_c - out_u) = (1 + w) out_c - w out_u, the conditional (``cond``) and
    unconditional (``uncond``) outputs of ONE forward pass on the batch concatenated with itself
    (1 NFE, ``forward_batch_factor`` 2). The outputs are combined in the model's own
    parametrization; every parametrization is affine in (x0, eps) at fixed (x, t) and the weights
    sum to one, so this is the same rule applied to eps, x0, score, v or velocity. w = 0 is the
    conditional model (and runs it alone).
    """

    def __init__(self, model: Callable[..., Tensor], process: GaussianPath, cond: dict, guidance: float = 0.0,
                 uncond: dict | None = None) -> None:
        self.model, self.process, self.cond, self.nfe = model, process, cond, 0
        self.guidance = float(guidance)
        self.forward_batch_factor = 2 if self.guidance else 1
        if self.guidance:
            self.pairs = {k: torch.cat([v, uncond[k]]) for k, v in cond.items()}  # type: ignore[index]

    def denoise(self, x: Tensor, t: Tensor) -> Denoised:
        self.nfe += 1
        if not self.guidance:
            return self.process.to_hub(self.model(x, t, **self.cond), x, t)
        out_c, out_u = self.model(torch.cat([x, x]), torch.cat([t, t]), **self.pairs).chunk(2)
        return self.process.to_hub(out_c + self.guidance * (out_c - out_u), x, t)


def check_steps(steps: int, process: GaussianPath | None = None) -> None:
    """steps >= 1; with a discrete ``process``, at most its number of steps."""
    most = process.timesteps if process is not None and process.discrete else None  # type: ignore[attr-defined]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (most is not None and steps > most):
        allowed = "an integer >= 1" if most is None else f"an integer >= 1 and <= {most} (the steps of {process!r})"
        raise ValueError(f"steps must be {allowed}; got {steps!r}")


def time_grid(process: GaussianPath, steps: int, spacing: str = "linspace") -> Tensor:
    """``steps`` decreasing times from t_max towards t_min (float64).

    Discrete processes (DDPM) get integer steps: ``leading`` (DDIM's uniform skip, arange(0, T, T//n)),
    ``trailing`` (round(arange(T, 0, -T/n)) - 1, ends at T-1), ``linspace`` (round(linspace(0, T-1, n)))
    and ``quadratic`` (DDIM's CIFAR choice, int(linspace(0, sqrt(0.8 T), n)^2)). Continuous processes
    get ``linspace`` or ``quadratic`` (dense near the data) on [t_min, t_max].
    """
    check_choice(spacing, SPACINGS, "spacing")
    check_steps(steps, process)
    u = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if not process.discrete:
        if spacing not in ("linspace", "quadratic"):
            raise ValueError(f"spacing {spacing!r} is for discrete steps; continuous processes take linspace or quadratic")
        u = u if spacing == "linspace" else u**2
        return (process.t_min + (process.t_max - process.t_min) * u).flip(0)
    T = process.timesteps  # type: ignore[attr-defined]
    if spacing == "leading":
        grid = torch.arange(0, T, T // steps, dtype=torch.float64)[:steps]
    elif spacing == "trailing":
        grid = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1).flip(0)
    elif spacing == "linspace":
        grid = (u * (T - 1)).round()
    else:
        grid = (u * (0.8 * T) ** 0.5) ** 2
        grid = grid.floor()
    if len(torch.unique(grid)) != steps:
        raise ValueError(f"spacing {spacing!r} repeats a step at steps={steps} for T={T}; use fewer steps or linspace")
    return grid.flip(0)


def refuse(sampler: str, process: GaussianPath, reason: str) -> ValueError:
    return ValueError(f"sampler {sampler!r} cannot run on {process!r}: {reason}")


def full_time(t: float, x: Tensor) -> Tensor:
    """The time ``t`` for every example of ``x``, in ``x``'s dtype and device."""
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
