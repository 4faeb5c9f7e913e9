"""Linear multistep solvers of d(x/alpha)/ds = eps, s = sigma/alpha (EDM's form of every path's
probability-flow ODE; see solvers.py), one network evaluation per step.

Both are Adams-Bashforth methods: a step from s_i to s_{i+1} integrates the polynomial through the
last ``order`` eps predictions,

    x_{i+1}/alpha_{i+1} = x_i/alpha_i + sum_j w_j eps_{i-j},

with order min(``order``, i + 1) on the warm-up (lower-order start, no extra NFE) and, with
``lower_order_final``, min(``order``, steps left) on the last steps, so the step to s = 0 is the
predicted x0 (as DDIM's and EDM's last step).

- ``lms``: linear multistep with the Adams weights w_j integrated exactly on the non-uniform grid
  (Karras et al. 2022, sec. 3; k-diffusion's ``sample_lms``); with ``basis="log_s"`` (default)
  the polynomial is in log s, still integrated over ds exactly: w_j = integral of L_j(log s) ds
  (DEIS's rho-AB, Zhang & Chen 2023; diffusers' DEIS ``logrho``).
- ``ipndm``: improved PNDM (Zhang & Chen 2023, DEIS, sec. 4 and App.): the fixed Adams-Bashforth
  weights of uniform steps (1; 3/2, -1/2; 23/12, -16/12, 5/12; 55/24, -59/24, 37/24, -9/24)
  times the step length s_{i+1} - s_i, whatever the grid. Only on a grid uniform in s is it of
  high order; on the usual non-uniform grids the weights are off by O(h) and it converges at
  second order, but it is strong at few steps (tested; BENCHMARKS.md).

A variable-step iPNDM, Adams-Bashforth with the exact weights of the actual nodes in s, is
``lms``: both integrate the polynomial through the eps predictions in the same variable s (EDM's
sigma), with the same warm-up; where the steps in s are equal the two give the same samples
(tests/test_few_steps.py). (The "ipndm_v" coefficients of later code agree with these at order 2
only: at orders 3-4 they do not integrate a quadratic exactly on uneven steps, so they too are of
second order there.)

The warm-up's steps of orders 1, 2, 3 have local errors O(h^2), O(h^3), O(h^4): once each, so
the Euler step alone bounds the global order by 2, with a constant ~ eps'(s) at the top of the
grid. From s(t_max) ~ 157 (VP) or 80 that constant is tiny and the fitted order is 3.7-3.9 over
40-640 steps; from s = 5 on a logsnr grid it shows (local orders 3.3 -> 2.2); on a grid uniform in
s from 5 it does not yet (3.9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import Tensor

from genflow.processes.base import GaussianPath
from genflow.samplers.base import option
from genflow.samplers.common import CountingModel, NoiseSource, full_time
from genflow.samplers.solvers import _coefficients, _GridOptions

#: iPNDM's weights (newest eps first): Adams-Bashforth for uniform steps, orders 1-4.
IPNDM_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _gamma_p(k: int, x: float) -> float:
    """P(k + 1, x), the regularized lower incomplete gamma function, x >= 0 (+inf allowed): by its
    series of positive terms e^-x x^(k+1) sum_n x^n / (k+1+n)! where x is small (no cancellation),
    else 1 - e^-x sum_{m<=k} x^m/m!."""
    if x == math.inf:
        return 1.0
    if x > 40.0:
        return 1.0 - math.exp(-x) * sum(x**m / math.factorial(m) for m in range(k + 1))
    term = x ** (k + 1) / math.factorial(k + 1)
    total, n = 0.0, 0
    while term > 1e-17 * total or n == 0:
        total, n = total + term, n + 1
        term *= x / (k + 1 + n)
    return math.exp(-x) * total


def log_adams_weights(nodes: list[float], start: float, end: float) -> list[float]:
    """The integral over s from ``start`` to ``end`` (>= 0) of each Lagrange basis polynomial in
    log s through the ``nodes``' log s (newest first, ``start`` the newest): DEIS's rho-AB weights
    (Zhang & Chen 2023; diffusers' ``solver_type="logrho"``), exact in closed form. In
    v = (log s - log start)/H, H the nodes' spread in log s, s = start e^(H v), they are the w with
    sum_j w_j v_j^k = integral of v^k ds = -start k! (-1/H)^k P(k + 1, log(start/end)), P the
    regularized incomplete gamma function (end = 0: P = 1)."""
    logs = np.log(np.asarray(nodes, dtype=np.float64))
    spread = logs[-1] - logs[0] if len(nodes) > 1 else 1.0
    v = (logs - logs[0]) / spread
    x = math.inf if end == 0 else math.log(start / end)
    moments = [-start * math.factorial(k) * (-1 / spread) ** k * _gamma_p(k, x) for k in range(len(nodes))]
    return np.linalg.solve(np.vander(v, len(nodes), increasing=True).T, moments).tolist()


def adams_weights(nodes: list[float], start: float, end: float) -> list[float]:
    """The integral from ``start`` to ``end`` of each Lagrange basis polynomial through ``nodes``
    (newest first): the Adams-Bashforth weights on a non-uniform grid, exact. They are the w that
    integrate every polynomial of degree < len(nodes) exactly, sum_j w_j u_j^k = 1/(k + 1) in
    u = (s - start)/(end - start), so levels of 80 and 0.002 lose no digits."""
    h = end - start
    u = (np.asarray(nodes, dtype=np.float64) - start) / h
    powers = np.vander(u, len(nodes), increasing=True).T  # row k: u_j^k
    return (h * np.linalg.solve(powers, 1.0 / np.arange(1, len(nodes) + 1))).tolist()


@dataclass(frozen=True)
class _Multistep(_GridOptions):
    """The multistep loop shared by ``lms`` and ``ipndm``; a subclass gives ``weights``."""

    order: int = option(4, "the multistep order (1: DDIM)", min=1, max=4)
    lower_order_final: bool = option(True, "lower the order on the last steps to the steps left (the step to "
                                     "s = 0 is the predicted x0)")

    def weights(self, nodes: list[float], start: float, end: float) -> list[float]:
        raise NotImplementedError

    def __call__(self, net: CountingModel, process: GaussianPath, x: Tensor, noise: NoiseSource, progress) -> Tensor:
        grid = self.grid(process)
        levels = grid.sigmas + [0.0] * grid.to_data  # s = 0: the data, where alpha = 1
        alpha = _coefficients(process, grid.times)[0] + [1.0] * grid.to_data
        steps = len(levels) - 1
        eps: list[Tensor] = []  # eps predictions at the levels so far, newest last
        for i in progress(range(steps)):
            hub = net.denoise(x, full_time(grid.times[i], x))
            eps = [*eps[-(self.order - 1):], hub.eps] if self.order > 1 else [hub.eps]
            nodes = levels[i - len(eps) + 1:i + 1][::-1]  # newest first
            finite = next((k for k, s in enumerate(nodes) if not math.isfinite(s)), len(nodes))  # a flow's s = inf
            order = min(len(eps), max(finite, 1), steps - i if self.lower_order_final else self.order)
            # x_i/alpha_i = x0 + s_i eps: the first-order (DDIM) step, finite from s = inf, then the
            # multistep terms, sum_j w_j eps_{i-j} - (s_{i+1} - s_i) eps_i (the weights sum to the step)
            scaled = hub.x0 + levels[i + 1] * hub.eps
            if order > 1:
                w = self.weights(nodes[:order], levels[i], levels[i + 1])
                scaled = scaled + sum(w[j] * (eps[-1 - j] - hub.eps) for j in range(1, order))
            x = alpha[i + 1] * scaled
        return x


@dataclass(frozen=True)
class LMS(_Multistep):
    """Linear multistep (Karras et al. 2022; k-diffusion's ``sample_lms``): Adams-Bashforth of
    order ``order`` on eps in s, its weights the exact integrals of the Lagrange basis over each
    step of the non-uniform grid. One NFE per step; fitted order 3.6-3.8 at ``order`` = 4. With
    ``basis="log_s"`` (the default) the eps history is a polynomial in log s instead, integrated
    exactly over ds (DEIS's rho-AB, Zhang & Chen 2023; diffusers' DEIS with
    ``solver_type="logrho"``). Defaults by measurement (BENCHMARKS.md): log_s beats s at 10 NFE on
    all four exact-mixture problems at every order and grid, and order 3 beats 4 there (4 of 4) and
    at 20 NFE on 2 of 4."""

    name: ClassVar[str] = "lms"
    order: int = option(3, "the multistep order (1: DDIM)", min=1, max=4)
    basis: str = option("log_s", "the variable eps is interpolated in: s (Adams, k-diffusion's lms) or log_s "
                        "(DEIS's rho-AB)", choices=("s", "log_s"))

    def weights(self, nodes: list[float], start: float, end: float) -> list[float]:
        return (log_adams_weights if self.basis == "log_s" else adams_weights)(nodes, start, end)


@dataclass(frozen=True)
class IPNDM(_Multistep):
    """iPNDM (Zhang & Chen 2023): PNDM's linear multistep with a lower-order multistep warm start
    instead of Runge-Kutta; the fixed Adams-Bashforth weights of uniform steps times each step's
    length in s. One NFE per step. Its defaults, order 3 and the full order to the end, are the
    measured best at 5-20 NFE (order 3 wins on all four exact-mixture problems from 8 NFE on;
    keeping the order on the last steps wins on 3 of 4 at 5, 8 and 10 NFE; BENCHMARKS.md)."""

    name: ClassVar[str] = "ipndm"
    order: int = option(3, "the multistep order (1: DDIM)", min=1, max=4)
    lower_order_final: bool = option(False, "lower the order on the last steps to the steps left (the step to "
                                     "s = 0 is the predicted x0)")

    def weights(self, nodes: list[float], start: float, end: float) -> list[float]:
        return [(end - start) * w for w in IPNDM_WEIGHTS[len(nodes) - 1]]
