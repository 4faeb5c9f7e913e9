"""What every sampler shares: per-sample noise, NFE counting, time grids, refusals."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.processes.base import Denoised, GaussianPath, PathCoefficients
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
    generator draws the noise of several steps in one call, written in place into one buffer for
    the batch: ``base`` steps first (16, fewer for examples of over 2^14 values), then four times
    as many per refill, up to ``MAX_CHUNK`` steps or ``GROW_VALUES`` values per sample (the growth
    is for small examples, where one call per generator costs more than its numbers). How many
    depends on the example's size and the refill's rank only, never on the batch. On the CPU the
    chunking does not change the numbers: a generator's normals drawn in calls of whole blocks of
    16 values are the same as in one call, and every chunk but a fixed one for examples of over
    2^14 values is a multiple of 16 steps. On CUDA a sample's stream depends on the chunks.
    """

    CHUNK_VALUES = 2**18  # values per sample drawn in one call at most (the first refills)
    GROW_VALUES = 2**11  # values per sample a refill grows to at most (small examples)
    MAX_CHUNK = 256  # steps per call at most

    def __init__(self, batch: int, seed: int, device: torch.device, dtype: torch.dtype, offset: int = 0) -> None:
        self.device, self.dtype = device, dtype
        self.seeds = range(seed + offset, seed + offset + batch)
        self._generators: list[torch.Generator] | None = None  # made at the first draw (DDIM's x_T given: never)
        self._buffer: Tensor | None = None
        self._next = 0
        self._refills = 0

    @classmethod
    def from_generator(cls, batch, generator, device, dtype, offset: int = 0) -> NoiseSource:
        """Derive the base seed from ``generator`` (or fresh entropy when it is None)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else int(
            torch.seed() % 2**62
        )
        return cls(batch, seed, device, dtype, offset)

    @property
    def generators(self) -> list[torch.Generator]:
        """One generator per sample, seeded ``seed + offset + i``."""
        if self._generators is None:
            self._generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]
        return self._generators

    @classmethod
    def chunk(cls, event_shape: tuple[int, ...], refill: int) -> int:
        """Steps drawn per generator call at the ``refill``-th refill (0-based) for this example size."""
        size = max(1, math.prod(event_shape))
        base = max(1, min(16, cls.CHUNK_VALUES // size))
        most = max(base, min(cls.MAX_CHUNK, cls.GROW_VALUES // size) // 16 * 16)  # whole blocks of 16 steps
        return min(most, base * 4**refill)

    def randn(self, event_shape: tuple[int, ...]) -> Tensor:
        """One standard-normal draw per sample, shaped ``[batch, *event_shape]``."""
        event_shape = tuple(event_shape)
        if self._buffer is None or self._buffer.shape[2:] != event_shape or self._next == self._buffer.shape[1]:
            if self._buffer is not None and self._buffer.shape[2:] != event_shape:
                self._refills = 0
            steps = self.chunk(event_shape, self._refills)
            self._buffer = torch.empty((len(self.seeds), steps, *event_shape), device=self.device,
                                       dtype=self.dtype)
            for row, g in zip(self._buffer, self.generators):
                row.normal_(generator=g)
            self._next, self._refills = 0, self._refills + 1
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
        #: per evaluation, its time and whether its input and output were finite, both left on the
        #: device (no host sync per step); read only when the samples are not finite
        self.calls: list[tuple[Tensor, Tensor]] = []
        if self.guidance:
            if uncond is None:
                raise ValueError("guidance needs the unconditional cond (uncond=)")
            self.pairs = {k: torch.cat([v, uncond[k]]) for k, v in cond.items()}

    def denoise(self, x: Tensor, t: Tensor, coefficients: PathCoefficients | None = None) -> Denoised:
        """The network at (x, t) as (x0, eps); a shared time (``full_time``'s) has its coefficients
        computed once, on one element, and broadcast, or given (``StepTimes.at``). The network
        gets the time as one contiguous vector (one input layout for a compiled net or a CUDA
        graph, and a tensor it may write into): a fill, no arithmetic per example."""
        self.nfe += 1
        if not self.guidance:
            out = self.model(x, t.contiguous(), **self.cond)
        else:
            out_c, out_u = self.model(torch.cat([x, x]), torch.cat([t, t]), **self.pairs).chunk(2)
            out = out_c + self.guidance * (out_c - out_u)
        self.calls.append((t[:1], torch.isfinite(_total(x) + _total(out))))
        return self.process.to_hub(out, x, shared_time(t), coefficients=coefficients)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """dx/dt of the probability-flow ODE (flow ODE for flows): alpha' x0 + sigma' eps."""
        hub = self.denoise(x, t)
        return self.process.from_hub(hub.x0, hub.eps, shared_time(t), "velocity")

    def first_nonfinite(self) -> tuple[int, float] | None:
        """The first evaluation (1-based) whose input or output was not finite, and its time."""
        return next(((i + 1, float(t)) for i, (t, ok) in enumerate(self.calls) if not bool(ok)), None)


def _total(x: Tensor) -> Tensor:
    """The sum of ``x``'s values in at least float32: not finite exactly when some value is NaN or
    inf, or the finite values sum past float32's range (|sum| > 3e38, samples already far out of
    range). One reduction to a scalar: at 256 x 3x32x32 on the CPU about 16x cheaper than
    ``isfinite(x).all()`` (BENCHMARKS.md)."""
    return x.sum(dtype=torch.promote_types(x.dtype, torch.float32))


class NonFiniteSamples(RuntimeError):
    """A sampler run ended in NaN or infinite samples (genflow-sample: one line, exit 1)."""


def check_finite(samples: Tensor, net: CountingModel, sampler: str, process: GaussianPath) -> None:
    """Refuse non-finite ``samples``, naming the first evaluation where a non-finite value appeared."""
    if bool(torch.isfinite(samples).all()):
        return
    first = net.first_nonfinite()
    if first is not None:
        where = f"first in network evaluation {first[0]} of {net.nfe}, at t = {first[1]:.6g}"
    elif net.calls:
        where = f"after the last network evaluation, at t = {float(net.calls[-1][0]):.6g}"
    else:
        where = "without a network evaluation"
    raise NonFiniteSamples(f"sampler {sampler!r} on {process!r} gave non-finite samples ({where})")


def check_steps(steps: int, process: GaussianPath | None = None) -> None:
    """steps >= 1; with a discrete ``process``, at most its number of steps."""
    most = process.timesteps if process is not None else None
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
    T = process.timesteps
    assert T is not None  # a discrete process declares its steps
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


def check_reverse_sde(sampler: str, process: GaussianPath, times: Tensor) -> None:
    """Refuse a grid where the reverse SDE's drift f = alpha'/alpha or diffusion g^2 is not finite,
    or g^2 < 0, or alpha/sigma is below float32's resolution, where x_t holds no data to rounding
    and f is a quotient of rounding errors (a cosine path's alpha(1) = cos(pi/2) = 6e-17, f = -2.6e16)."""
    t = times.to(torch.float64)
    c, f, g2 = process.coefficients(t), process.drift_coef(t), process.diffusion_sq(t)
    bad = ~(torch.isfinite(f) & torch.isfinite(g2) & (g2 >= 0)) | (c.alpha < torch.finfo(torch.float32).eps * c.sigma)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise refuse(sampler, process, f"its reverse SDE is not finite at t = {float(t[i]):.6g} (alpha = "
                                       f"{float(c.alpha[i]):.3g}, f = alpha'/alpha = {float(f[i]):.3g}, "
                                       f"g^2 = {float(g2[i]):.3g}); use ode, ddim or dpmpp_2m")


def check_transitions(sampler: str, process: GaussianPath, times: Tensor) -> None:
    """Refuse a grid (decreasing times) where a step's transition variance is not finite and >= 0."""
    t = times.to(torch.float64)
    var = process.transition_variance(t[:-1], t[1:])
    bad = ~(torch.isfinite(var) & (var >= 0))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise refuse(sampler, process, f"the variance of q(x_t | x_s) is {float(var[i]):.3g} for the step from "
                                       f"t = {float(t[i]):.6g} to s = {float(t[i + 1]):.6g}")


def to_data(net: CountingModel, x: Tensor, t: float) -> Tensor:
    """The last step, from time ``t`` to alpha = 1: the predicted x0 (DDPM's, DDIM's and EDM's
    final step; the posterior mean of q(x_0 | x_t, x0) is x0 itself)."""
    return net.denoise(x, full_time(t, x)).x0


def one_time(t: float, x: Tensor) -> Tensor:
    """The time ``t`` as a one-element tensor in ``x``'s dtype and device: what a step's
    coefficients are computed on (once per step, broadcast over the batch by ``append_dims``)."""
    return torch.full((1,), float(t), device=x.device, dtype=x.dtype)


def full_time(t: float, x: Tensor) -> Tensor:
    """The time ``t`` for every example of ``x``: ``one_time`` expanded (a stride-0 view; the
    network gets it made contiguous by ``CountingModel``)."""
    return one_time(t, x).expand(x.shape[0])


def shared_time(t: Tensor) -> Tensor:
    """The one element of a time vector that ``full_time`` expanded, else ``t`` as it is."""
    return t[:1] if t.ndim == 1 and t.shape[0] > 1 and t.stride(0) == 0 else t


class StepTimes:
    """A grid's times in ``x``'s dtype and device and their coefficients, computed in one call per
    run; ``at(i)`` hands a step its time (expanded, as ``full_time``) and coefficients (one
    element each) by slicing, with no arithmetic per step."""

    def __init__(self, process: GaussianPath, grid: list[float], x: Tensor) -> None:
        self.times = torch.tensor(grid, dtype=x.dtype, device=x.device)
        self.c = process.coefficients(self.times)
        self.batch = x.shape[0]

    def at(self, i: int) -> tuple[Tensor, PathCoefficients]:
        c = self.c
        return self.times[i:i + 1].expand(self.batch), PathCoefficients(
            c.alpha[i:i + 1], c.sigma[i:i + 1], c.d_alpha[i:i + 1], c.d_sigma[i:i + 1])
