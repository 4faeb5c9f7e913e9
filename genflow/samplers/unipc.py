"""UniPC (Zhao et al. 2023): the unified predictor UniP and corrector UniC on the data prediction,
in the log-SNR of any Gaussian path (solvers.py), one network evaluation per step.

With lambda = log(alpha/sigma), a step from s0 to t (h = lambda_t - lambda_s0 > 0) through the
x0 predictions m0 (at s0) and m_k (at earlier times, r_k = (lambda_k - lambda_s0)/h) is

    x_t = (sigma_t/sigma_s0) x_s0 + alpha_t (1 - e^-h) m0 - alpha_t B(h) sum_k rho_k (m_k - m0)/r_k,

(the multistep UniP-p with x0 prediction), with B = -h (``bh1``) or e^-h - 1 (``bh2``): the
paper's B(h) = h or e^h - 1 at hh = -h, as its released code has them for x0. The rhos solve
R rho = b, R_ij = r_j^(i-1), b_i = i! hh phi_{i+1}(hh) / B (sec. 3.2, eq. 9; tested). UniC reuses the network's
output at the predicted x_t, which the next step needs anyway: the same step again with m_t among
the m_k (r = 1), so it raises the order by one at no extra NFE. As in the released code the
second-order predictor takes rho = 1/2, and the last step is not corrected (no evaluation after it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from genflow.processes.base import GaussianPath
from genflow.samplers.base import option
from genflow.samplers.common import CountingModel, NoiseSource, full_time
from genflow.samplers.solvers import _coefficients, _GridOptions


def unipc_rhos(rks: list[float], h: float, variant: str, corrector: bool) -> tuple[float, list[float]]:
    """B(h) and the rhos of a UniP (``corrector`` False: one per earlier x0) or UniC step (one more,
    for the new x0 at r = 1), for earlier points at ``rks`` = (lambda_k - lambda_s0)/h."""
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rks = [*rks, 1.0]
    order = len(rks)
    phi, factorial, b = math.expm1(hh) / hh - 1.0, 1, []
    for i in range(1, order + 1):
        b.append(phi * factorial / b_h)
        factorial *= i + 1
        phi = phi / hh - 1.0 / factorial
    R = torch.tensor([[r ** (i - 1) for r in rks] for i in range(1, order + 1)], dtype=torch.float64)
    size = order if corrector else order - 1
    if size == 0:
        return b_h, []
    if size == 1:
        return b_h, [0.5]  # UniP-2 and UniC-1 (the released code's choice for UniP-2)
    return b_h, torch.linalg.solve(R[:size, :size], torch.tensor(b[:size], dtype=torch.float64)).tolist()


@dataclass(frozen=True)
class UniPC(_GridOptions):
    """UniPC (Zhao et al. 2023, Alg. 2 and 3: UniPC-p with data prediction): UniP of order
    ``order`` with the UniC corrector, one NFE per step; lower orders on the warm-up and, with
    ``lower_order_final``, on the last steps. The step to s = 0 (``denoise``) is the predicted x0."""

    name: ClassVar[str] = "unipc"
    order: int = option(3, "UniP's order (UniC adds one)", min=1, max=3)
    variant: str = option("bh2", "B(h): bh1 (h) or bh2 (e^h - 1)", choices=("bh1", "bh2"))
    corrector: bool = option(True, "apply UniC after every step but the last")
    lower_order_final: bool = option(True, "lower the order on the last steps to the steps left")

    def __call__(self, net: CountingModel, process: GaussianPath, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = self.grid(process)
        alpha, sigma = _coefficients(process, grid.times)
        lam = [0.5 * v for v in grid.log_snrs]
        steps, x0s, last = len(grid.times) - 1, [], None  # last: (i, x before step i, its earlier points)
        for i in progress(range(steps + grid.to_data)):
            m = net.denoise(x, full_time(grid.times[i], x)).x0
            if i == steps:
                return m  # the step to s = 0: the predicted x0
            if last is not None and self.corrector:
                x = self.step(alpha, sigma, lam, *last, x0s, m)
            x0s = [*x0s[-(self.order - 1):], m] if self.order > 1 else [m]
            usable = [j for j in range(i - len(x0s) + 1, i) if math.isfinite(lam[j])]  # a flow's t_max: -inf
            order = min(self.order, len(usable) + 1, steps - i if self.lower_order_final else self.order)
            earlier = usable[len(usable) - order + 1:] if order > 1 else []
            last = (i, x, earlier) if math.isfinite(lam[i]) else None  # no UniC across an infinite h
            x = self.step(alpha, sigma, lam, i, x, earlier, x0s, None)
        return x

    def step(self, alpha, sigma, lam, i: int, x: Tensor, earlier: list[int], x0s: list[Tensor],
             m_t: Tensor | None) -> Tensor:
        """UniP (``m_t`` None) or UniC (``m_t``: the x0 at the predicted x_t) from grid time i to
        i + 1, with the x0 predictions at the grid indices ``earlier``; ``x0s`` ends with m0."""
        ratio, m0 = sigma[i + 1] / sigma[i], x0s[-1]
        out = ratio * x + (alpha[i + 1] - alpha[i] * ratio) * m0  # alpha_t (1 - e^-h) m0, finite at alpha_s0 = 0
        if not earlier and m_t is None:
            return out
        h = lam[i + 1] - lam[i]
        rks = [(lam[j] - lam[i]) / h for j in earlier]
        b_h, rhos = unipc_rhos(rks, h, self.variant, m_t is not None)
        d1s = [(x0s[-1 - (i - j)] - m0) / r for j, r in zip(earlier, rks)]
        if m_t is not None:
            d1s.append(m_t - m0)
        return out - alpha[i + 1] * b_h * sum(rho * d for rho, d in zip(rhos, d1s))
