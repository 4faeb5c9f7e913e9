"""Higher-order solvers of the probability-flow ODE on any Gaussian path, in its log-SNR.

Dividing x_t = alpha x0 + sigma eps by alpha gives every process EDM's form x/alpha = x0 + s eps
with s = sigma/alpha = exp(-log_snr/2): the same ODE, d(x/alpha)/ds = eps, whatever the time
axis (DDPM's kinks included). So the grids and solvers here are written once, in s (or the
log-SNR), and a grid point becomes a process time through ``GaussianPath.time_at_log_snr``.

- ``dpmpp_2m``: DPM-Solver++(2M), Lu et al. 2022b, Algorithm 2 (data prediction, multistep).
- ``dpmpp_3m``: its third-order multistep sibling (the second-derivative term at the reference code's half
  weight by default, or at its full, exact weight).
- ``heun``: EDM's Heun sampler, Karras et al. 2022, Algorithm 1 (deterministic) and, with
  ``s_churn`` > 0, Algorithm 2 (stochastic churn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from genflow.processes.base import GaussianPath
from genflow.samplers.base import Floats, Sampler, option
from genflow.samplers.common import CountingModel, NoiseSource, StepTimes, check_steps, full_time, to_data
from genflow.samplers.schedules import load_schedule
from genflow.utils import check_choice

#: ``logsnr``: uniform in log-SNR (DPM-Solver's choice); ``karras``: EDM eq. 5 with ``rho``;
#: ``time``: uniform in the process's own time.
SCHEDULES = ("logsnr", "karras", "time")
#: The schedule option also takes ``learned``: the grid of ``schedule_file`` (samplers/schedules.py).
GRID_SCHEDULES = (*SCHEDULES, "learned")
SCHEDULE_DOC = ("noise levels: logsnr (uniform in log-SNR), karras (EDM's rho schedule), time (uniform in time) "
                "or learned (the schedule file's)")
#: EDM's noise range (for data in [-1, 1]), clipped to the path's own.
DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX = 0.002, 80.0


@dataclass(frozen=True)
class NoiseGrid:
    """Where a solver evaluates the network: times t_0 = t_max > t_1 > ... with their noise levels.

    ``sigmas`` are s = sigma/alpha (inf where alpha = 0, a flow's t = 1) and ``log_snrs`` the
    log(alpha^2/sigma^2). With ``to_data`` the last step goes on from the last time to s = 0,
    i.e. to the predicted x0 (a first-order step, as in EDM and DDIM); without, the solver stops
    at the last time. ``jump``: the first step starts above the schedule (at t_max, where s is
    above ``sigma_max`` or infinite) and lands on its second level.
    """

    times: list[float]
    sigmas: list[float]
    log_snrs: list[float]
    to_data: bool
    jump: bool = False

    @property
    def steps(self) -> int:
        return len(self.times) - 1 + self.to_data


def scaled_sigma(process: GaussianPath, t: float) -> float:
    """s = sigma/alpha at time ``t`` (inf where alpha = 0)."""
    return math.exp(-0.5 * float(process.log_snr(torch.tensor([t], dtype=torch.float64))))


def time_at_sigma(process: GaussianPath, s: float) -> float:
    """The time where sigma/alpha = ``s``."""
    return float(process.time_at_log_snr(torch.tensor([-2.0 * math.log(s)], dtype=torch.float64)))


def grid_range(process: GaussianPath, steps: int, schedule: str, *, rho: float, sigma_min: float | None,
               sigma_max: float | None) -> tuple[float, float, float, float]:
    """Check a grid's settings; s(t_max), s(t_min) and the schedule's ends s_hi, s_lo."""
    check_steps(steps)
    check_choice(schedule, SCHEDULES, "schedule")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0; got {rho}")
    top, bottom = scaled_sigma(process, process.t_max), scaled_sigma(process, process.t_min)
    hi = min(top, DEFAULT_SIGMA_MAX) if sigma_max is None else sigma_max
    lo = max(bottom, DEFAULT_SIGMA_MIN) if sigma_min is None else sigma_min
    if not (0 < lo and math.isfinite(hi)):
        raise ValueError(f"sigma_min must be > 0 and sigma_max finite (s = sigma/alpha; the grid's ends); "
                         f"got {lo}, {hi}")
    if not bottom <= lo < hi <= top:
        raise ValueError(f"need s(t_min) <= sigma_min < sigma_max <= s(t_max), with s = sigma/alpha: "
                         f"{bottom:.4g} <= {lo:.4g} < {hi:.4g} <= {top:.4g} fails for {process!r}")
    return top, bottom, hi, lo


def noise_grid(process: GaussianPath, steps: int, schedule: str = "logsnr", *, rho: float = 7.0,
               sigma_min: float | None = None, sigma_max: float | None = None, to_data: bool = True) -> NoiseGrid:
    """``steps`` solver steps from the prior's time t_max down to s = ``sigma_min``, and on to
    s = 0 when ``to_data``.

    The levels run from s_hi to s_lo by ``schedule``: by default EDM's range clipped to the path's,
    s_hi = min(s(t_max), 80) and s_lo = max(s(t_min), 0.002); ``sigma_max`` and ``sigma_min`` set
    them within the path's range. The first time is always t_max, where the prior sits: where
    s(t_max) > s_hi (DDPM's and VP's s(t_max) ~ 157; a flow's is infinite) the first step jumps
    from t_max to the schedule's second level.
    """
    top, bottom, hi, lo = grid_range(process, steps, schedule, rho=rho, sigma_min=sigma_min, sigma_max=sigma_max)
    count = steps if to_data else steps + 1
    u = torch.linspace(0.0, 1.0, count, dtype=torch.float64)
    t_lo = float(process.t_min) if lo == bottom else time_at_sigma(process, lo)
    if schedule == "time":
        t_hi = float(process.t_max) if hi == top else time_at_sigma(process, hi)
        times = t_hi + u * (t_lo - t_hi)
    else:
        if schedule == "karras":
            s = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
            log_snr = -2.0 * torch.log(s)
        else:
            log_snr = -2.0 * math.log(hi) + u * (2.0 * math.log(hi) - 2.0 * math.log(lo))
        times = process.time_at_log_snr(log_snr)
        times[-1] = t_lo
    times[0] = process.t_max
    log_snrs = process.log_snr(times)
    return NoiseGrid(times=times.tolist(), sigmas=torch.exp(-0.5 * log_snrs).tolist(), log_snrs=log_snrs.tolist(),
                     to_data=to_data, jump=top > hi)


def given_grid(process: GaussianPath, steps: int, *, sigmas: list[float] | None = None,
               times: list[float] | None = None, to_data: bool = True) -> NoiseGrid:
    """A user's grid: strictly decreasing levels s = sigma/alpha (``sigmas``) or process times
    (``times``), inside the path's range. The first time is t_max, where the prior sits: a first
    level below it is jumped to from t_max (as ``noise_grid`` does), one at t_max is the start
    (and a grid level: ``heun``'s trapezoid starts there, where s(t_max) is finite).
    ``steps`` must be the grid's: its levels after t_max, plus one to s = 0 with ``to_data``."""
    given, what = (sigmas, "sigmas") if times is None else (times, "times")
    if (sigmas is None) == (times is None):
        raise ValueError("give one of sigmas= (levels sigma/alpha) or times= for a given grid, not both")
    values = torch.tensor(list(given), dtype=torch.float64)
    if not bool((values.diff() < 0).all()):
        raise ValueError(f"{what} must be strictly decreasing (from noise to data); got {list(given)}")
    t_min, t_max = float(process.t_min), float(process.t_max)
    ends = (scaled_sigma(process, t_min), scaled_sigma(process, t_max)) if times is None else (t_min, t_max)
    if not ends[0] <= float(values[-1]) <= float(values[0]) <= ends[1]:
        span = "s = sigma/alpha from t_min to t_max" if times is None else "t_min to t_max"
        raise ValueError(f"{what} must lie in [{ends[0]:.6g}, {ends[1]:.6g}] for {process!r} ({span}); "
                         f"got {float(values[-1]):.6g} to {float(values[0]):.6g}")
    at = values if times is not None else process.time_at_log_snr(-2.0 * torch.log(values))
    at = at.clamp(t_min, t_max)
    at = at if float(values[0]) == ends[1] else torch.cat([torch.tensor([t_max], dtype=torch.float64), at])
    at[0] = t_max
    if len(at) - 1 + to_data != steps:
        raise ValueError(f"the given {what} make {len(at) - 1 + to_data} steps ({len(at) - 1} from t_max"
                         f"{', 1 to s = 0' if to_data else ''}); pass steps={len(at) - 1 + to_data}, not {steps}")
    log_snrs = process.log_snr(at)
    return NoiseGrid(times=at.tolist(), sigmas=torch.exp(-0.5 * log_snrs).tolist(), log_snrs=log_snrs.tolist(),
                     to_data=to_data, jump=len(at) > len(values) or not math.isfinite(scaled_sigma(process, t_max)))


@dataclass(frozen=True)
class _GridOptions(Sampler):
    steps: int = option(20, "sampler steps", min=1)
    schedule: str = option("logsnr", SCHEDULE_DOC, choices=GRID_SCHEDULES)
    rho: float = option(7.0, "the karras schedule's rho (EDM: 7)", above=0)
    sigma_min: float | None = option(None, "lowest noise level sigma/alpha of the grid (default max(path's, "
                                     "0.002))", kind=float, above=0, optional=True)
    sigma_max: float | None = option(None, "highest level of the grid's schedule (default min(path's, 80)); "
                                     "above it one step jumps", kind=float, above=0, optional=True)
    denoise: bool = option(True, "end on the predicted x0 (one NFE) instead of the grid's last noise level")
    sigmas: tuple | None = option(None, "a given grid: decreasing levels sigma/alpha after t_max (replaces the "
                                  "schedule; steps = their number, + 1 with denoise)", kind=Floats, above=0,
                                  optional=True)
    times: tuple | None = option(None, "a given grid: decreasing process times (as sigmas)", kind=Floats,
                                 optional=True)
    schedule_file: str | None = option(None, "a learned grid: a JSON file from genflow-learn-schedule (replaces "
                                       "the schedule)", kind=str, optional=True)

    def grid(self, process: GaussianPath) -> NoiseGrid:
        if self.schedule_file is not None or self.schedule == "learned":
            return self.learned_grid(process)
        if self.sigmas is not None or self.times is not None:
            return given_grid(process, self.steps, sigmas=self.sigmas, times=self.times, to_data=self.denoise)
        return noise_grid(process, self.steps, self.schedule, rho=self.rho, sigma_min=self.sigma_min,
                          sigma_max=self.sigma_max, to_data=self.denoise)

    def learned_grid(self, process: GaussianPath) -> NoiseGrid:
        """The grid of ``schedule_file``, refused unless it was learned for this process, sampler,
        steps and settings (samplers/schedules.py)."""
        if self.schedule_file is None:
            raise ValueError("schedule 'learned' needs schedule_file=PATH (a JSON file from genflow-learn-schedule)")
        if self.sigmas is not None or self.times is not None:
            raise ValueError("give one of schedule_file, sigmas or times, not several")
        learned = load_schedule(self.schedule_file)
        learned.check_fits(process, self.name, self.settings(), f"schedule file {self.schedule_file}")
        return given_grid(process, self.steps, sigmas=learned.sigmas, to_data=self.denoise)

    def check(self, process: GaussianPath) -> None:
        given = self.sigmas is not None or self.times is not None or self.schedule_file is not None
        if given or self.schedule == "learned":
            if self.sigma_min is not None or self.sigma_max is not None:
                raise ValueError(f"sampler {self.name!r}: a given grid (sigmas or times) sets its own ends; "
                                 f"leave sigma_min and sigma_max unset")
            try:
                self.grid(process)
            except ValueError as err:
                raise ValueError(f"sampler {self.name!r}: {err}") from None
        else:
            grid_range(process, self.steps, self.schedule, rho=self.rho, sigma_min=self.sigma_min,
                       sigma_max=self.sigma_max)


def _coefficients(process: GaussianPath, times: list[float]) -> tuple[list[float], list[float]]:
    c = process.coefficients(torch.tensor(times, dtype=torch.float64))
    return c.alpha.tolist(), c.sigma.tolist()


@dataclass(frozen=True)
class DPMSolverPP2M(_GridOptions):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): one evaluation per step, second order.

    With lambda = log(alpha/sigma) and h = lambda_s - lambda_t, a step from t to s is

        x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^-h) D,
        D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev,   r = h_prev / h,

    with D = x0_t on the first step (DDIM). The step to s = 0 (``denoise``) is first order,
    D = x0_t: the second-order D has r = 0 there. NFE = ``steps``.
    """

    name: ClassVar[str] = "dpmpp_2m"
    #: How many past x0 predictions a step uses (2: this class; 3: ``DPMSolverPP3M``).
    order: ClassVar[int] = 2
    lower_order_final: bool = option(False, "lower the order on the last steps to the steps left (diffusers' "
                                     "lower_order_final; the step to s = 0 is always first order)")

    @property
    def d2_weight(self) -> float:
        """The weight of the x0'' term (``DPMSolverPP3M``'s ``second_derivative``)."""
        return 1.0

    def __call__(self, net: CountingModel, process: GaussianPath, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = self.grid(process)
        alpha, sigma = _coefficients(process, grid.times)
        lam = [0.5 * v for v in grid.log_snrs]
        history: list[Tensor] = []  # x0 predictions at the grid times so far, newest last
        steps, times = len(grid.times) - 1, StepTimes(process, grid.times, x)
        for i in progress(range(steps)):
            history = [*history[-(self.order - 1):], net.denoise(x, *times.at(i)).x0]
            # alpha_s (1 - e^-h) = alpha_s - alpha_t sigma_s / sigma_t: finite at a flow's alpha_t = 0
            ratio = sigma[i + 1] / sigma[i]
            x = ratio * x + (alpha[i + 1] - alpha[i] * ratio) * history[-1]
            # past steps of finite length (a flow's first step starts at lambda = -inf)
            past = [lam[j] - lam[j - 1] for j in range(i, i - len(history) + 1, -1)]
            usable = next((k for k, h in enumerate(past) if not math.isfinite(h)), len(past))
            if self.lower_order_final:  # order <= the steps left, the step to s = 0 included
                usable = min(usable, steps + grid.to_data - i - 1)
            x = x + alpha[i + 1] * self.correction(history[len(history) - 1 - usable:], past[:usable],
                                                    lam[i + 1] - lam[i], self.d2_weight)
        return to_data(net, x, grid.times[-1]) if grid.to_data else x  # the step to s = 0

    @staticmethod
    def correction(x0s: list[Tensor], past: list[float], h: float, d2_weight: float = 1.0) -> Tensor | float:
        """What the multistep terms add to the DDIM step, divided by alpha_s: 0 with one x0;
        with two, (1 - e^-h)/(2r) (x0_t - x0_prev) (Alg. 2); with three, phi_2 D1 - phi_3 D2 with
        phi_2 = (e^-h - 1)/h + 1, phi_3 = (e^-h - 1 + h)/h^2 - 1/2 and D1 ~ h x0', D2 ~ h^2 x0''
        (derivatives in lambda) from the quadratic through the three x0: exact when x0 is
        quadratic in lambda (tested); ``d2_weight`` 0.5 is the reference code's D2."""
        if len(x0s) == 1:
            return 0.0
        em1 = math.expm1(-h)  # e^-h - 1
        r0 = past[0] / h
        d1_0 = (x0s[-1] - x0s[-2]) / r0
        if len(x0s) == 2:
            return -0.5 * em1 * d1_0
        r1 = past[1] / h
        d1_1 = (x0s[-2] - x0s[-3]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = 2.0 * d2_weight * (d1_0 - d1_1) / (r0 + r1)  # h^2 x0'': the reference code's D2 lacks this 2
        return (em1 / h + 1.0) * d1 - ((em1 + h) / h**2 - 0.5) * d2


@dataclass(frozen=True)
class DPMSolverPP3M(DPMSolverPP2M):
    """DPM-Solver++(3M): the data-prediction multistep solver of third order, one evaluation per
    step; the first two steps are of first and second order, the step to s = 0 of first.

    Lu et al.'s released code (and diffusers' ``solver_order=3``) use the same phi functions but
    D2 = (D1_0 - D1_1)/(r0 + r1), which is h^2 x0''/2, half the second derivative term, so their
    step is not exact for a quadratic x0 and the solver converges at second order.
    ``second_derivative="full"`` takes D2 = 2 (D1_0 - D1_1)/(r0 + r1): the fitted order on the
    exact single-Gaussian ODE is 3.0-3.2 (tests/test_solvers.py). The default is the reference's
    half weight, by measurement: at 5-10 NFE it has the smaller likelihood gap on 3-4 of the 4
    exact-mixture problems, at 15-20 on 2 (the full weight wins in 16-D there; BENCHMARKS.md)."""

    name: ClassVar[str] = "dpmpp_3m"
    order: ClassVar[int] = 3
    second_derivative: str = option("half", "the x0'' term's weight: half (the reference code's and diffusers', "
                                    "second order) or full (exact at order 3)", choices=("half", "full"))

    @property
    def d2_weight(self) -> float:
        return 1.0 if self.second_derivative == "full" else 0.5


@dataclass(frozen=True)
class Heun(_GridOptions):
    """EDM's sampler (Karras et al. 2022): Heun's method on d(x/alpha)/ds = eps, s = sigma/alpha.

    Alg. 1 with ``s_churn`` = 0: each step is an Euler step (the DDIM step) and a trapezoid
    correction with eps at the Euler point, two evaluations; the step to s = 0 is Euler alone,
    so NFE = 2 ``steps`` - 1 with ``denoise`` (2 ``steps`` without). A first step that jumps
    from t_max down to the schedule (s(t_max) above ``sigma_max``; always for a flow, whose
    s(t_max) is infinite) is Euler alone too: the trapezoid has no finite form at s = inf and
    overshoots across a jump of many noise scales, where the x0 prediction barely moves and
    Euler (DDIM) is nearly exact.

    Alg. 2 (``s_churn`` > 0): before a step at level s in [``s_tmin``, ``s_tmax``], noise raises
    it to s (1 + gamma), gamma = min(s_churn / steps, sqrt(2) - 1), kept within the path, with
    fresh noise scaled by ``s_noise``.
    """

    name: ClassVar[str] = "heun"
    steps: int = option(18, "sampler steps", min=1)
    schedule: str = option("karras", SCHEDULE_DOC, choices=GRID_SCHEDULES)
    s_churn: float = option(0.0, "EDM's stochastic churn (0: deterministic)", min=0)
    s_tmin: float = option(0.0, "churn only at noise levels >= s_tmin", min=0)
    s_tmax: float = option(math.inf, "churn only at noise levels <= s_tmax", min=0, infinite=True)
    s_noise: float = option(1.0, "scale of the churn's fresh noise (EDM: 1.0 to 1.007)", min=0)

    def check(self, process: GaussianPath) -> None:
        super().check(process)
        if not self.s_tmax >= self.s_tmin:
            raise ValueError(f"sampler 'heun': need s_tmin <= s_tmax; got {self.s_tmin}, {self.s_tmax}")

    def __call__(self, net: CountingModel, process: GaussianPath, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = self.grid(process)
        alpha, _ = _coefficients(process, grid.times)
        for i in progress(range(len(grid.times) - 1)):
            t, s_t, x = self.churn(process, grid, alpha, i, x, noise)
            hub = net.denoise(x, full_time(t, x))
            s_next, a_next = grid.sigmas[i + 1], alpha[i + 1]
            scaled = hub.x0 + s_next * hub.eps  # Euler in s: x/alpha + (s_next - s_t) eps
            if not (i == 0 and grid.jump):
                eps_next = net.denoise(a_next * scaled, full_time(grid.times[i + 1], x)).eps
                scaled = scaled + 0.5 * (s_next - s_t) * (eps_next - hub.eps)
            x = a_next * scaled
        if not grid.to_data:
            return x
        t, _, x = self.churn(process, grid, alpha, len(grid.times) - 1, x, noise)
        return to_data(net, x, t)  # Euler to s = 0

    def churn(self, process: GaussianPath, grid: NoiseGrid, alpha: list[float], i: int, x: Tensor,
              noise: NoiseSource) -> tuple[float, float, Tensor]:
        """Alg. 2's noise before step ``i``: the raised time, its level s_hat and x there (as given
        where there is no churn)."""
        t, s_t = grid.times[i], grid.sigmas[i]
        gamma = min(self.s_churn / self.steps, math.sqrt(2) - 1)
        if not (gamma > 0 and math.isfinite(s_t) and self.s_tmin <= s_t <= self.s_tmax):
            return t, s_t, x
        s_hat = min(s_t * (1 + gamma), grid.sigmas[0])
        t = time_at_sigma(process, s_hat)
        a_hat = float(process.coefficients(torch.tensor([t], dtype=torch.float64)).alpha)
        bump = math.sqrt(max(s_hat**2 - s_t**2, 0.0)) * self.s_noise
        return t, s_hat, a_hat * (x / alpha[i] + bump * noise.randn(x.shape[1:]))
