"""Learned step schedules: the time grid of a given model, sampler and NFE budget, fitted without
data to a many-step teacher from the same prior noise (after LD3, Tong et al. 2024, "Learning to
Discretize Denoising Diffusion ODEs", arXiv 2405.15506).

    learned = learn_schedule(model, process, sampler="dpmpp_2m", nfe=5, shape=(2,))
    learned.save("dpmpp_2m-5.json")     # genflow-sample --schedule-file dpmpp_2m-5.json ...
    x = genflow.sample(model, process, sampler="dpmpp_2m", steps=learned.steps, **learned.options(), ...)

The objective (``objective="mse"``, the default) is plain: the mean squared distance, per
coordinate, between the student's samples and the teacher's from the same ``draws`` prior draws.
``objective="trimmed"`` takes that mean over the 95 % of draws nearest the teacher: on data with
many sharp modes a few draws end in another mode than the teacher's (a change of mode, harmless to
the distribution when it goes both ways) and cost the squared distance between modes, so a handful
of them sets the plain mean and the grid (BENCHMARKS.md). LD3 differs in three ways: it backpropagates
through the solver (here: a derivative-free search, Powell's method in scipy, so every grid sampler
works as it is, its coefficients in Python floats untouched, at iterations x NFE x draws network
evaluations), it relaxes the target to a ball around the teacher's sample (a slack, LPIPS on images;
here none), and it parametrizes the grid the same way (softmax of free numbers over the log range).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from genflow.processes.base import GaussianPath
from genflow.samplers.common import NonFiniteSamples
from genflow.samplers.schedules import GRID_OPTIONS, LearnedSchedule, fingerprint
from genflow.samplers.solvers import SCHEDULES, given_grid, noise_grid, scaled_sigma
from genflow.utils import check_choice

#: The teacher when none is given: DPM-Solver++(2M) at 200 steps (second order; its error there is
#: far below any few-step grid's).
DEFAULT_TEACHER = {"sampler": "dpmpp_2m", "steps": 200}
#: The search's box on each free number (softmax logits): increments within e^20 of each other.
LOGIT_BOUND = 10.0
#: The log-range the levels may take: s from max(s(t_min), S_FLOOR) to min(s(t_max), S_CEILING).
S_FLOOR, S_CEILING = 1e-4, 1e3
#: The share of draws ``objective="trimmed"`` keeps, those nearest the teacher.
TRIM_KEEP = 0.95


def _samplers() -> dict:
    from genflow.samplers import SAMPLERS

    return SAMPLERS


def grid_samplers() -> list[str]:
    """The registered samplers that take a given grid (``sigmas=``): those a schedule can be learned for."""
    return [name for name, cls in _samplers().items() if "sigmas" in cls.options()]


def log_range(process: GaussianPath) -> tuple[float, float]:
    """log s at the top and bottom of where the learned levels may lie."""
    top = min(scaled_sigma(process, float(process.t_max)), S_CEILING)
    bottom = max(scaled_sigma(process, float(process.t_min)), S_FLOOR)
    return math.log(top), math.log(bottom)


def levels_of(logits: np.ndarray, span: tuple[float, float], keep_last: bool = False) -> list[float]:
    """K + 1 free numbers -> K levels s strictly decreasing inside (bottom, top): the softmax splits
    the log range into K + 1 positive gaps, the levels sit between them; with ``keep_last`` the
    bottom itself follows as the last level."""
    top, bottom = span
    gaps = np.exp(logits - logits.max())
    cuts = np.cumsum(gaps / gaps.sum())[:-1]
    return np.exp(top - cuts * (top - bottom)).tolist() + [math.exp(bottom)] * keep_last


def logits_of(levels: list[float], span: tuple[float, float], keep_last: bool = False) -> np.ndarray:
    """The inverse of ``levels_of`` (gaps kept above 1e-4 of the range, inside the search's box)."""
    top, bottom = span
    edges = np.array([top, *np.log(levels[:len(levels) - keep_last]), bottom])
    gaps = np.maximum(-np.diff(edges) / (top - bottom), 1e-4)
    logits = np.log(gaps / gaps.sum())
    return np.clip(logits - logits.mean(), -LOGIT_BOUND, LOGIT_BOUND)


def mean_squared(a: Tensor, b: Tensor) -> float:
    """The objective: the mean squared distance per coordinate."""
    return float(((a.double() - b.double()) ** 2).mean())


def trimmed_squared(a: Tensor, b: Tensor, keep: float = TRIM_KEEP) -> float:
    """The mean squared distance per coordinate over the ``keep`` share of draws nearest the
    teacher's (rounded down, at least one: 9 of 10, 243 of 256): the draws that changed mode do not
    count."""
    per_draw = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    kept = max(1, math.floor(keep * per_draw.numel() + 1e-9))
    return float(per_draw.sort().values[:kept].mean())


#: ``objective=`` name -> (the distance of student samples to the teacher's, its description)
OBJECTIVES = {"mse": (mean_squared, "mean squared distance to the teacher"),
              "trimmed": (trimmed_squared, f"mean squared distance to the teacher over the {TRIM_KEEP:.0%} of "
                                           f"draws nearest it")}


def steps_for(sampler: str, nfe: int, process: GaussianPath, settings: dict, shape: tuple) -> tuple[int, int]:
    """The most steps whose run on a given grid costs at most ``nfe`` evaluations, and its NFE (a
    run with a network that costs nothing counts them; a given grid jumps from t_max to its first
    level, which for ``heun`` is one evaluation less than a trapezoid from t_max)."""
    from genflow.samplers import run

    best = None
    for steps in range(2, nfe + 2):
        levels = noise_grid(process, steps, to_data=settings.get("denoise", True)).sigmas[1:]
        out = run(lambda x, t, **c: torch.zeros_like(x), process, sampler=sampler, steps=steps, sigmas=levels,
                  noise=torch.zeros(1, *shape, dtype=torch.float64), **settings)
        if out.nfe > nfe:
            break
        best = (steps, out.nfe)
    if best is None:
        raise ValueError(f"sampler {sampler!r} needs more than {nfe} NFE for a grid with a level to learn; "
                         f"raise nfe")
    return best


def _check(sampler: str, nfe: int, draws: int, iterations: int, options: dict, objective: str) -> None:
    check_choice(objective, tuple(OBJECTIVES), "learn_schedule: objective")
    names = grid_samplers()
    if sampler not in names:
        raise ValueError(f"learn_schedule takes a sampler with a given grid (sigmas=): {', '.join(names)}; got "
                         f"{sampler!r} (for ddim: lms with order=1 is its step on any grid)")
    grid_keys = sorted(set(options) & set(GRID_OPTIONS))
    if grid_keys:
        raise ValueError(f"learn_schedule learns the grid; drop the grid option(s) {', '.join(grid_keys)}")
    for what, value, least in (("nfe", nfe, 2), ("draws", draws, 1), ("iterations", iterations, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"learn_schedule: {what} must be an integer >= {least}; got {value!r}")


def learn_schedule(model: Callable[..., Tensor], process: GaussianPath, *, sampler: str = "dpmpp_2m", nfe: int = 5,
                   shape: tuple[int, ...], draws: int = 256, teacher: dict | None = None, seed: int = 0,
                   iterations: int = 300, learn_ends: bool = True, objective: str = "mse",
                   options: dict | None = None, cond: dict | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                   progress: bool = True) -> LearnedSchedule:
    """Fit the grid of ``sampler`` (with ``options``) at ``nfe`` evaluations to ``teacher``'s samples
    from the same ``draws`` prior draws of one example's ``shape`` (seed ``seed``).

    ``teacher``: ``{"sampler": name, "steps": n, **options}`` (default ``DEFAULT_TEACHER``). The
    search starts from the best of the fixed schedules (logsnr, karras, time) at the same steps and
    runs Powell's method over K + 1 softmax logits for the K levels after t_max (``levels_of``), at
    most ``iterations`` objective evaluations of one student run each; the grid is always strictly
    decreasing inside the path's range. ``learn_ends`` False keeps the last level at the fixed
    schedules' (s = max(s(t_min), 0.002), as LD3 keeps its ends): on the mixtures the learned one
    does better, by the objective and by nll_gap and sliced W2. ``objective``: ``"mse"`` (the mean
    squared distance to the teacher) or ``"trimmed"`` (the same over the 95 % of draws nearest it;
    see the module's doc). Returns the schedule with the objective at the start and after
    (``LearnedSchedule``; ``.save(path)`` writes it).
    """
    from genflow.samplers import make, run

    options, teacher = dict(options or {}), dict(teacher or DEFAULT_TEACHER)
    _check(sampler, nfe, draws, iterations, options, objective)
    distance, description = OBJECTIVES[objective]
    make(sampler, 2, **options).check(process)  # unknown options or a refused process: before any work
    dtype = dtype or torch.get_default_dtype()
    steps, used = steps_for(sampler, nfe, process, options, tuple(shape))
    noise = process.prior_std() * torch.randn(draws, *shape, generator=torch.Generator().manual_seed(seed),
                                              dtype=torch.float64).to(device or "cpu", dtype)
    kw = dict(noise=noise, cond=cond, generator=torch.Generator().manual_seed(seed))
    target = run(model, process, sampler=teacher["sampler"], steps=teacher["steps"], **kw,
                 **{k: v for k, v in teacher.items() if k not in ("sampler", "steps")}).samples

    def distance_of(levels: list[float]) -> float:
        """The distance to the teacher; inf where the sampler refuses the grid (levels too close to
        tell apart as times) or its samples are not finite: a wall for the search, not an answer."""
        try:
            out = run(model, process, sampler=sampler, steps=steps, sigmas=levels, **kw, **options).samples
        except (ValueError, NonFiniteSamples):
            return math.inf
        value = distance(out, target)
        return value if math.isfinite(value) else math.inf

    starts = {name: noise_grid(process, steps, name, to_data=options.get("denoise", True)).sigmas[1:]
              for name in SCHEDULES}
    span = log_range(process) if learn_ends else (log_range(process)[0], math.log(starts["logsnr"][-1]))
    scores = {name: distance_of(levels) for name, levels in starts.items()}
    start = min(scores, key=scores.get)
    best = _search(distance_of, logits_of(starts[start], span, not learn_ends), span, not learn_ends, iterations,
                   progress, scores[start])
    levels, after = (best if best[1] < scores[start] else (starts[start], scores[start]))
    grid = given_grid(process, steps, sigmas=levels, to_data=options.get("denoise", True))
    settings = {k: v for k, v in make(sampler, steps, **options).settings().items()
                if k not in GRID_OPTIONS and k != "steps"}
    return LearnedSchedule(
        process=fingerprint(process), sampler=sampler, settings=settings, steps=steps, nfe=used,
        sigmas=list(levels), times=grid.times, teacher=teacher, draws=draws, seed=seed, iterations=iterations,
        objective={"name": description, "kind": objective, "ends": "learned" if learn_ends else "fixed",
                   "start": start, "before": scores[start],
                   "after": after, "fixed": scores})


def _search(objective: Callable[[list[float]], float], x0: np.ndarray, span: tuple[float, float], keep_last: bool,
            iterations: int, progress: bool, start: float) -> tuple[list[float], float]:
    """Powell's method on the logits within the box; the best levels seen and their objective."""
    best = [levels_of(x0, span, keep_last), start]
    bar = tqdm(total=iterations, desc="learn_schedule", leave=False, disable=not progress)

    def f(logits: np.ndarray) -> float:
        levels = levels_of(np.clip(logits, -LOGIT_BOUND, LOGIT_BOUND), span, keep_last)
        value = objective(levels)
        if value < best[1]:
            best[:] = [levels, value]
        bar.update(1)
        bar.set_postfix(objective=f"{best[1]:.3g}")
        return value if math.isfinite(value) else 1e30

    if iterations > 0:
        # start along e_k - e_{k+1}, each moving one level between its neighbours (a plain axis
        # moves them all, through the softmax's normalization), and e_K (the last gap)
        moves = np.eye(len(x0)) - np.eye(len(x0), k=1) * (np.arange(len(x0)) < len(x0) - 1)[:, None]
        # no bounds: scipy's bounded line search golden-sections the whole box and misses the
        # narrow valleys; the box is kept by clipping in f (flat outside)
        from scipy.optimize import minimize  # here: `import genflow` does not pay for scipy.optimize

        minimize(f, x0, method="Powell", options={"maxfev": iterations, "xtol": 1e-3, "ftol": 1e-6, "direc": moves})
    bar.close()
    return best[0], best[1]


__all__ = ["DEFAULT_TEACHER", "LearnedSchedule", "grid_samplers", "learn_schedule", "levels_of", "logits_of"]
