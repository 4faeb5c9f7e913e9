"""DPM-Solver singlestep (Lu et al. 2022, arXiv 2206.00927) in the log-SNR of any Gaussian path
(solvers.py), for a given NFE budget: DPM-Solver-fast (sec. 3.4).

With lambda = log(alpha/sigma) and h = lambda_t - lambda_s, a step of order k evaluates the
network at s and at k - 1 points inside the step, lambda_s + r h (r = 1/2 for DPM-Solver-2;
1/3, 2/3 for DPM-Solver-3). Every point starts from the DDIM step alpha_p x0_s + sigma_p eps_s
and adds one correction in the prediction m (eps: DPM-Solver, Alg. 1 and 2; x0: DPM-Solver++'s
singlestep form, Lu et al. 2022b, 2211.01095, eqs. of its released code), with hh = h for eps
and -h for x0, b = sigma (eps) or alpha (x0), phi(z) = (e^z - 1)/z - 1:

    order 2, end:  - b_t (e^hh - 1) / (2 r1) (m_1 - m_s)
    order 3, s2:   - b_s2 (r2 / r1) phi(r2 hh) (m_1 - m_s)
    order 3, end:  - b_t / r2 phi(hh) (m_2 - m_s)

(The DDIM step is the order-1 step of either form and stays finite at a flow's alpha = 0.)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from genflow.processes.base import GaussianPath
from genflow.samplers.base import option
from genflow.samplers.common import CountingModel, NoiseSource, full_time, to_data
from genflow.samplers.solvers import NoiseGrid, _coefficients, _GridOptions, grid_range

#: The intermediate points of a step of each order, as fractions r of the step in lambda.
FRACTIONS = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}


def fast_orders(budget: int, order: int) -> list[int]:
    """DPM-Solver-fast's orders for ``budget`` NFE (Lu et al. 2022, sec. 3.4): at order 3,
    M = budget // 3 + 1 steps, of order 3 but the last (budget % 3 = 1: 1; 2: 2) or the last two
    (budget % 3 = 0: 2 then 1); at order 2, steps of order 2 and a last of order 1 if the budget
    is odd; at order 1, ``budget`` DDIM steps."""
    if budget == 0:
        return []
    if order == 3:
        steps = budget // 3 + 1
        return [3] * (steps - 2) + [2, 1] if budget % 3 == 0 else [3] * (steps - 1) + [budget % 3]
    return [order] * (budget // order) + [1] * (budget % order)


def _phi(z: float) -> float:
    return math.expm1(z) / z - 1.0


@dataclass(frozen=True)
class DPMSolver(_GridOptions):
    """DPM-Solver-fast (Lu et al. 2022, sec. 3.4): singlestep steps of order ``order`` and a final
    lower-order one or two spending exactly ``steps`` NFE, on a grid uniform in log-SNR (by
    default) with one level per step. With ``denoise`` the last NFE is the step to s = 0 (the
    predicted x0). A flow's first step, from s = inf, is DDIM (order 1)."""

    name: ClassVar[str] = "dpm_solver"
    #: Its levels follow from the NFE budget: no given or learned grid (make refuses these options).
    withheld: ClassVar[tuple[str, ...]] = ("sigmas", "times", "schedule_file")
    steps: int = option(20, "the NFE budget, not the steps: steps of order `order` and a last one or two of "
                        "lower order spend exactly this many evaluations (with denoise, the last is the step "
                        "to s = 0)", min=1)
    order: int = option(3, "the order of the singlestep steps (1: DDIM, 2: DPM-Solver-2, 3: DPM-Solver-3)",
                        min=1, max=3)
    prediction: str = option("data", "what the steps extrapolate: data (x0, DPM-Solver++) or noise (eps, "
                             "DPM-Solver)", choices=("data", "noise"))
    jump_ddim: bool = option(True, "make a first step that jumps from t_max down to the schedule (s(t_max) > "
                             "sigma_max) a DDIM step of its own (always for a flow, where s(t_max) = inf)")

    def check(self, process: GaussianPath) -> None:
        if self.schedule == "learned":
            raise ValueError(f"sampler {self.name!r}: takes no learned grid; its levels follow from the NFE "
                             f"budget (steps) and the schedule (logsnr, karras, time)")
        super().check(process)

    def plan(self, process: GaussianPath) -> tuple[list[int], NoiseGrid]:
        """The orders of the steps and their grid (one level per step) for the NFE budget."""
        budget = self.steps - self.denoise
        orders = fast_orders(budget, self.order)
        if budget and self.jumps(process):
            orders = [1, *fast_orders(budget - 1, self.order)]
        return orders, dataclasses.replace(self, steps=len(orders) + self.denoise).grid(process)

    def jumps(self, process: GaussianPath) -> bool:
        """Whether the first step is a DDIM jump: always where s(t_max) is infinite (a flow, whose
        lambda is -inf there); with ``jump_ddim`` wherever s(t_max) lies above the schedule."""
        top, _, hi, _ = grid_range(process, self.steps, self.schedule, rho=self.rho, sigma_min=self.sigma_min,
                                   sigma_max=self.sigma_max)
        return not math.isfinite(top) or (self.jump_ddim and top > hi)

    def __call__(self, net: CountingModel, process: GaussianPath, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        orders, grid = self.plan(process)
        lam = [0.5 * v for v in grid.log_snrs]
        inner = [lam[i] + r * (lam[i + 1] - lam[i]) for i, k in enumerate(orders) for r in FRACTIONS[k]]
        times = process.time_at_log_snr(2.0 * torch.tensor(inner, dtype=torch.float64)).tolist() if inner else []
        alpha, sigma = _coefficients(process, times + grid.times)
        points = iter(zip(times, alpha, sigma))  # the inner points, step by step
        ends = list(zip(grid.times, alpha[len(times):], sigma[len(times):]))
        for i in progress(range(len(orders))):
            inside = [next(points) for _ in FRACTIONS[orders[i]]]
            x = self.step(net, x, ends[i][0], [*inside, ends[i + 1]], lam[i + 1] - lam[i])
        return to_data(net, x, grid.times[-1]) if grid.to_data else x

    def step(self, net: CountingModel, x: Tensor, t: float, points: list[tuple[float, float, float]],
             h: float) -> Tensor:
        """One step from time ``t`` through ``points`` (time, alpha, sigma: the inner points, then
        the end) of a step of h in lambda; len(points) is its order and its NFE."""
        hub = net.denoise(x, full_time(t, x))
        data = self.prediction == "data"
        hh, m_s = (-h, hub.x0) if data else (h, hub.eps)
        predictions: list[Tensor] = []  # m at the inner points so far
        for k, (time, _, _) in enumerate(points[:-1]):
            inner = net.denoise(self.point(hub, points, k, predictions, m_s, hh), full_time(time, x))
            predictions.append(inner.x0 if data else inner.eps)
        return self.point(hub, points, len(points) - 1, predictions, m_s, hh)

    def point(self, hub, points, k: int, predictions: list[Tensor], m_s: Tensor, hh: float) -> Tensor:
        """x at ``points[k]``: the DDIM step from the step's start and the correction of the order."""
        _, a, s = points[k]
        out = a * hub.x0 + s * hub.eps
        if k == 0:
            return out
        b = a if self.prediction == "data" else s
        if len(points) == 2:  # DPM-Solver-2's end
            weight = math.expm1(hh) / (2 * FRACTIONS[2][0])
        else:  # DPM-Solver-3's second inner point, then its end
            r1, r2 = FRACTIONS[3]
            weight = r2 / r1 * _phi(r2 * hh) if k == 1 else _phi(hh) / r2
        return out - b * weight * (predictions[-1] - m_s)
