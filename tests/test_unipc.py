"""UniPC: its rhos against the phi functions in closed form, runs against the formula written out,
fitted convergence orders on the exact single-Gaussian ODE, honest NFE and one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_nfe_is_honest

from genflow.samplers import noise_grid, run
from genflow.samplers.solvers import scaled_sigma
from genflow.samplers.unipc import unipc_rhos
from test_samplers import PROCESSES, exact_flow, fitted_order, gaussian, start

F64 = dict(dtype=torch.float64)


def phi(k: int, z: float) -> float:
    """phi_k(z) = (e^z - sum_{n<k} z^n/n!) / z^k."""
    return (math.exp(z) - sum(z**n / math.factorial(n) for n in range(k))) / z**k


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_rhos_solve_the_order_conditions(variant):
    """sum_j rho_j r_j^(i-1) = i! hh phi_{i+1}(hh) / B for i = 1..p, hh = -h (Zhao et al. 2023,
    eq. 9, for x0), with B = hh (bh1) or e^hh - 1 (bh2)."""
    h, rks = 0.7, [-0.8, -1.9]
    b_h, rhos = unipc_rhos(rks, h, variant, corrector=True)  # UniC-3: the two earlier x0 and the new one
    assert b_h == pytest.approx(-h if variant == "bh1" else math.expm1(-h), rel=1e-14)
    nodes = [*rks, 1.0]
    for i in range(1, 4):
        lhs = sum(rho * r ** (i - 1) for rho, r in zip(rhos, nodes))
        assert lhs == pytest.approx(math.factorial(i) * -h * phi(i + 1, -h) / b_h, rel=1e-10)
    _, predictor = unipc_rhos(rks, h, variant, corrector=False)  # UniP-3: the first two conditions
    for i in range(1, 3):
        lhs = sum(rho * r ** (i - 1) for rho, r in zip(predictor, rks))
        assert lhs == pytest.approx(math.factorial(i) * -h * phi(i + 1, -h) / b_h, rel=1e-10)
    assert unipc_rhos([-1.1], h, variant, corrector=False)[1] == [0.5] == unipc_rhos([], h, variant, True)[1]


@pytest.mark.parametrize("name", ["ddpm", "flow_matching"])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_order_one_with_unic_is_the_formula_written_out(name, variant):
    """UniP-1 is DDIM; UniC-1 redoes the step with rho = 1/2 on m_t - m0 (the evaluation at the
    predicted point, which the next step reuses as its m0): x_t^c = x_t^DDIM - alpha_t B (m_t - m0) / 2."""
    process = PROCESSES[name]()
    model, x = gaussian().model(process), start(n=8, scale=process.prior_std())
    grid = noise_grid(process, 3, to_data=False)
    out = run(model, process, sampler="unipc", steps=3, noise=x, order=1, variant=variant, denoise=False)
    lam = [0.5 * v for v in grid.log_snrs]
    c = process.coefficients(torch.tensor(grid.times, **F64))
    y, m0 = x, process.denoise(model, x, torch.full((8,), grid.times[0], **F64)).x0
    for i in range(3):
        ddim = c.sigma[i + 1] / c.sigma[i] * y + (c.alpha[i + 1] - c.alpha[i] * c.sigma[i + 1] / c.sigma[i]) * m0
        if i < 2:  # no UniC after the last step, nor across a flow's infinite h
            m_t = process.denoise(model, ddim, torch.full((8,), grid.times[i + 1], **F64)).x0
            if math.isfinite(lam[i]):
                h = lam[i + 1] - lam[i]
                b_h = -h if variant == "bh1" else math.expm1(-h)
                ddim = ddim - c.alpha[i + 1] * b_h * 0.5 * (m_t - m0)
            m0 = m_t  # the next step's x0: the evaluation at the predicted (uncorrected) point
        y = ddim
    assert out.nfe == 3 and torch.allclose(out.samples, y, atol=1e-12)


@pytest.mark.parametrize("name,order,low,high", [*((name, 3, 2.9, 4.3) for name in sorted(PROCESSES)),
                                                 ("vpsde", 1, 1.8, 2.3), ("vpsde", 2, 2.7, 3.3)])
def test_convergence_order_is_one_above_unip_with_unic(name, order, low, high):
    """UniC raises UniP-p's order to p + 1: fitted 1.99 and 2.98 for p = 1, 2; for p = 3 3.4-3.7
    on the diffusions, 3.0 on the flows (their jump from s = inf to 1000 leaves an error floor
    near 1e-7), with UniP's last step uncorrected."""
    process = PROCESSES[name]()
    model = gaussian().model(process)
    x = start(n=64, scale=process.prior_std())
    top = min(scaled_sigma(process, process.t_max), 1e3)
    steps, errors = [40, 80, 160, 320], []
    for n in steps:
        end = noise_grid(process, n, "logsnr", sigma_max=top, to_data=False).times[-1]
        out = run(model, process, sampler="unipc", steps=n, noise=x, denoise=False, sigma_max=top,
                  lower_order_final=False, order=order).samples
        errors.append((out - exact_flow(process, x, process.t_max, end)).abs().max().item())
    fitted = fitted_order(steps, errors)
    print(f"{name} unipc order {order}: errors {errors}, fitted {fitted:.2f}")
    assert low < fitted < high, (errors, fitted)


def test_nfe_is_honest_and_bad_options_are_one_line():
    process = PROCESSES["vpsde"]()
    model = gaussian().model(process)
    assert_nfe_is_honest(model, process, "unipc", 7)
    with pytest.raises(ValueError, match="^sampler 'unipc': order must be an integer >= 1 and <= 3; got 4$"):
        run(model, process, sampler="unipc", steps=4, shape=(2, 2), order=4)
    with pytest.raises(ValueError, match="^sampler 'unipc': variant must be one of bh1, bh2; got 'bh3'$"):
        run(model, process, sampler="unipc", steps=4, shape=(2, 2), variant="bh3")
