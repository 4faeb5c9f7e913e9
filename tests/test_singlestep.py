"""dpm_solver (DPM-Solver-fast, Lu et al. 2022): the paper's order rule for an NFE budget, steps
against the paper's formulas written out here, fitted convergence orders on the exact
single-Gaussian ODE for every process, honest NFE and one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_nfe_is_honest

from genflow.samplers import SAMPLERS, DPMSolver, noise_grid, run
from genflow.samplers.learn import grid_samplers
from genflow.samplers.singlestep import fast_orders
from genflow.samplers.solvers import scaled_sigma
from test_samplers import PROCESSES, exact_flow, fitted_order, gaussian, start

F64 = dict(dtype=torch.float64)


def test_fast_orders_are_the_papers_rule():
    """Sec. 3.4: M = K // 3 + 1 steps; K % 3 = 0: 3, ..., 3, 2, 1; 1: 3, ..., 3, 1; 2: 3, ..., 3, 2."""
    assert fast_orders(9, 3) == [3, 3, 2, 1] and fast_orders(10, 3) == [3, 3, 3, 1]
    assert fast_orders(11, 3) == [3, 3, 3, 2] and fast_orders(3, 3) == [2, 1] and fast_orders(1, 3) == [1]
    assert fast_orders(7, 2) == [2, 2, 2, 1] and fast_orders(4, 1) == [1] * 4 and fast_orders(0, 3) == []
    assert all(sum(fast_orders(k, order)) == k for k in range(40) for order in (1, 2, 3))


def top_level(process) -> float:
    """s(t_max) where finite (no jump), else 1000 (a flow's DDIM jump from s = inf then leaves an
    error below 1e-7)."""
    return min(scaled_sigma(process, process.t_max), 1e3)


CASES = [*((name, 3, prediction, 2.6, 3.6) for name in sorted(PROCESSES) for prediction in ("data", "noise")),
         ("vpsde", 2, "data", 1.8, 2.3), ("flow_matching", 2, "noise", 1.8, 2.3)]


@pytest.mark.parametrize("name,order,prediction,low,high", CASES)
def test_convergence_order_to_the_exact_ode_solution(name, order, prediction, low, high):
    """The error at the grid's last level falls 2^order-fold per doubling of the budget. The budgets
    are 2 mod 3 (order 3: the steps end in one of order 2; the paper's final order-1 step at
    K % 3 = 0 or 1 costs the global order its third power). Data prediction fits 2.7-2.8 here
    (3.1-3.3 over the last doubling), noise prediction 3.1-3.3."""
    process = PROCESSES[name]()
    model = gaussian().model(process)
    x = start(n=16, scale=process.prior_std())
    budgets = [62, 122, 242, 482] if order == 3 else [40, 80, 160, 320]
    kw = dict(order=order, prediction=prediction, denoise=False, sigma_max=top_level(process))
    errors = []
    for n in budgets:
        end = DPMSolver(steps=n, **kw).plan(process)[1].times[-1]
        out = run(model, process, sampler="dpm_solver", steps=n, noise=x, **kw)
        assert out.nfe == n
        errors.append((out.samples - exact_flow(process, x, process.t_max, end)).abs().max().item())
    fitted = fitted_order(budgets, errors)
    print(f"{name} dpm_solver order {order} {prediction}: errors {errors}, fitted {fitted:.2f}")
    assert low < fitted < high, (errors, fitted)


def coefficients(process, lam: float):
    t = process.time_at_log_snr(torch.tensor([2.0 * lam], **F64))
    c = process.coefficients(t)
    return t, float(c.alpha), float(c.sigma)


def paper_step(process, model, x, lam_s, lam_t, order, prediction):
    """DPM-Solver-2 and -3 (Lu et al. 2022, Alg. 1 and 2, r1 = 1/2; r1 = 1/3, r2 = 2/3) on eps, and
    DPM-Solver++'s singlestep forms on x0 (2S: Lu et al. 2022b, Alg. 1), written as the papers do."""
    h = lam_t - lam_s
    t_s, a_s, s_s = coefficients(process, lam_s)
    _, a_t, s_t = coefficients(process, lam_t)

    def m(x, t):
        hub = process.denoise(model, x, t.expand(len(x)))
        return hub.eps if prediction == "noise" else hub.x0

    m_s = m(x, t_s)
    if prediction == "noise":
        if order == 2:
            t1, a1, s1 = coefficients(process, lam_s + 0.5 * h)
            u = a1 / a_s * x - s1 * math.expm1(0.5 * h) * m_s
            return a_t / a_s * x - s_t * math.expm1(h) * m_s - s_t / (2 * 0.5) * math.expm1(h) * (m(u, t1) - m_s)
        r1, r2 = 1 / 3, 2 / 3
        (t1, a1, s1), (t2, a2, s2) = coefficients(process, lam_s + r1 * h), coefficients(process, lam_s + r2 * h)
        u1 = a1 / a_s * x - s1 * math.expm1(r1 * h) * m_s
        d1 = m(u1, t1) - m_s
        u2 = a2 / a_s * x - s2 * math.expm1(r2 * h) * m_s - s2 * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1) * d1
        d2 = m(u2, t2) - m_s
        return a_t / a_s * x - s_t * math.expm1(h) * m_s - s_t / r2 * (math.expm1(h) / h - 1) * d2
    if order == 2:
        r = 0.5
        t1, a1, s1 = coefficients(process, lam_s + r * h)
        u = s1 / s_s * x - a1 * math.expm1(-r * h) * m_s
        d = (1 - 1 / (2 * r)) * m_s + 1 / (2 * r) * m(u, t1)
        return s_t / s_s * x - a_t * math.expm1(-h) * d
    r1, r2 = 1 / 3, 2 / 3
    (t1, a1, s1), (t2, a2, s2) = coefficients(process, lam_s + r1 * h), coefficients(process, lam_s + r2 * h)
    u1 = s1 / s_s * x - a1 * math.expm1(-r1 * h) * m_s
    u2 = (s2 / s_s * x - a2 * math.expm1(-r2 * h) * m_s
          + r2 / r1 * a2 * (math.expm1(-r2 * h) / (r2 * h) + 1) * (m(u1, t1) - m_s))
    return s_t / s_s * x - a_t * math.expm1(-h) * m_s + 1 / r2 * a_t * (math.expm1(-h) / h + 1) * (m(u2, t2) - m_s)


@pytest.mark.parametrize("name", ["ddpm", "vpsde", "vesde"])
@pytest.mark.parametrize("prediction", ["data", "noise"])
def test_a_run_is_the_papers_steps_written_out(name, prediction):
    """A budget of 5 NFE without the jump: one DPM-Solver-3 step, then one DPM-Solver-2 step, on two
    steps uniform in log-SNR from s(t_max)."""
    process = PROCESSES[name]()
    model, x = gaussian().model(process), start(n=8, scale=process.prior_std())
    grid = noise_grid(process, 2, "logsnr", sigma_max=top_level(process), to_data=False)
    lam = [0.5 * v for v in grid.log_snrs]
    y = paper_step(process, model, x, lam[0], lam[1], 3, prediction)
    y = paper_step(process, model, y, lam[1], lam[2], 2, prediction)
    out = run(model, process, sampler="dpm_solver", steps=5, noise=x, denoise=False, prediction=prediction,
              sigma_max=top_level(process))
    assert out.nfe == 5 and torch.allclose(out.samples, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["ddpm", "vpsde", "flow_matching"])
def test_order_one_is_ddim_on_the_same_grid(name):
    """order 1: a DDIM step per NFE, the grid uniform in log-SNR: lms at order 1 on the same grid."""
    process = PROCESSES[name]()
    model, x = gaussian().model(process), start(n=8, scale=process.prior_std())
    for denoise in (True, False):
        ours = run(model, process, sampler="dpm_solver", steps=6, noise=x, order=1, denoise=denoise).samples
        lms = run(model, process, sampler="lms", steps=6, noise=x, order=1, denoise=denoise).samples
        assert torch.allclose(ours, lms, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["vpsde", "flow_matching"])
def test_nfe_is_the_budget_and_bad_options_are_one_line(name):
    process = PROCESSES[name]()
    model = gaussian().model(process)
    for budget in (1, 2, 3, 4, 5, 9):
        assert_nfe_is_honest(model, process, "dpm_solver", budget)
    for order in (0, 4, 2.5):
        message = rf"^sampler 'dpm_solver': order must be an integer >= 1 and <= 3; got {order}$"
        with pytest.raises(ValueError, match=message):
            run(model, process, sampler="dpm_solver", steps=4, shape=(2, 2), order=order)
    with pytest.raises(ValueError, match="^sampler 'dpm_solver': prediction must be one of data, noise; got 'v'$"):
        run(model, process, sampler="dpm_solver", steps=4, shape=(2, 2), prediction="v")
    calls = []
    for grid in ("sigmas", "times", "schedule_file"):  # its levels follow from the budget
        with pytest.raises(ValueError, match=f"^sampler 'dpm_solver' takes no option\\(s\\) {grid}; ") as err:
            run(lambda x, t: calls.append(1), process, sampler="dpm_solver", steps=4, shape=(2, 2), **{grid: [8.0]})
        assert "\n" not in str(err.value) and not calls
    with pytest.raises(ValueError, match="^sampler 'dpm_solver': takes no learned grid; "):
        run(lambda x, t: calls.append(1), process, sampler="dpm_solver", steps=4, shape=(2, 2), schedule="learned")
    assert "dpm_solver" not in grid_samplers() and "dpmpp_2m" in grid_samplers()


def test_registered_with_its_name():
    assert SAMPLERS["dpm_solver"] is DPMSolver and DPMSolver.name == "dpm_solver"
