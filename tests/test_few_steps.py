"""The few-step settings of the multistep solvers (issue 15): dpmpp_2m/3m's ``lower_order_final``
and dpmpp_3m's ``second_derivative`` weight, against formulas written out and the order they give;
iPNDM against lms where the steps in s are equal."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from genflow.samplers import IPNDM, LMS, NoiseGrid, noise_grid, run
from genflow.samplers.common import CountingModel, NoiseSource
from genflow.samplers.solvers import DPMSolverPP2M
from test_samplers import PROCESSES, exact_flow, fitted_order, gaussian, start

F64 = dict(dtype=torch.float64)


def test_half_weight_is_the_reference_codes_third_order_step():
    """Lu et al.'s released 3M (and diffusers'): D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),
    D2 = (D1_0 - D1_1)/(r0 + r1), step terms phi_2 D1 - phi_3 D2 (divided by alpha_s)."""
    x0s = [torch.tensor([v], **F64) for v in (0.3, -0.2, 0.9)]  # oldest first
    past, h = [0.6, 0.8], 0.7
    r0, r1 = past[0] / h, past[1] / h
    d1_0, d1_1 = (x0s[2] - x0s[1]) / r0, (x0s[1] - x0s[0]) / r1
    d1, d2 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)
    phi_2 = math.expm1(-h) / h + 1
    reference = phi_2 * d1 - ((math.expm1(-h) + h) / h**2 - 0.5) * d2
    assert torch.allclose(DPMSolverPP2M.correction(x0s, past, h, 0.5), reference, rtol=1e-13)
    full = DPMSolverPP2M.correction(x0s, past, h)
    assert torch.allclose(full - reference, -((math.expm1(-h) + h) / h**2 - 0.5) * d2, rtol=1e-12)


@pytest.mark.parametrize("weight,low,high", [("half", 1.7, 2.4), ("full", 2.7, 3.6)])
def test_half_weight_leaves_the_3m_solver_of_second_order(weight, low, high):
    process = PROCESSES["vpsde"]()
    model, x = gaussian().model(process), start(n=16, scale=process.prior_std())
    steps, errors = [20, 40, 80, 160], []
    for n in steps:
        end = noise_grid(process, n, "karras", to_data=False).times[-1]
        out = run(model, process, sampler="dpmpp_3m", steps=n, noise=x, denoise=False, schedule="karras",
                  second_derivative=weight).samples
        errors.append((out - exact_flow(process, x, process.t_max, end)).abs().max().item())
    fitted = fitted_order(steps, errors)
    print(f"dpmpp_3m second_derivative={weight}: errors {errors}, fitted {fitted:.2f}")
    assert low < fitted < high, (errors, fitted)


@pytest.mark.parametrize("name", ["ddpm", "flow_matching"])
def test_lower_order_final_caps_the_order_at_the_steps_left(name):
    """Orders 1, 2, 1 on three steps (no denoise): 3M with the flag is 2M with the flag; with denoise
    the last step is first order anyway, so the flag leaves 2M as it is."""
    process = PROCESSES[name]()
    model, x = gaussian().model(process), start(n=8, scale=process.prior_std())
    kw = dict(steps=3, noise=x, denoise=False, lower_order_final=True)
    three = run(model, process, sampler="dpmpp_3m", **kw).samples
    assert torch.allclose(three, run(model, process, sampler="dpmpp_2m", **kw).samples, rtol=1e-12, atol=1e-12)
    full = run(model, process, sampler="dpmpp_3m", **{**kw, "lower_order_final": False}).samples
    assert not torch.allclose(three, full)
    plain = run(model, process, sampler="dpmpp_2m", steps=6, noise=x).samples
    assert torch.equal(plain, run(model, process, sampler="dpmpp_2m", steps=6, noise=x, lower_order_final=True).samples)


def uniform_in_s(process, steps: int, top: float = 5.0) -> NoiseGrid:
    times = process.time_at_log_snr(-2 * torch.log(torch.linspace(top, 0.05, steps + 1, **F64)))
    log_snrs = process.log_snr(times)
    return NoiseGrid(times=times.tolist(), sigmas=torch.exp(-0.5 * log_snrs).tolist(), log_snrs=log_snrs.tolist(),
                     to_data=False)


def on_grid(cls, grid: NoiseGrid, **options):
    @dataclasses.dataclass(frozen=True)
    class OnGrid(cls):
        def grid(self, process):
            return grid
    return OnGrid(steps=len(grid.times) - 1, **options)


def test_ipndm_with_equal_steps_in_s_is_lms_and_of_fourth_order_once_asymptotic():
    """iPNDM's fixed weights are lms's exact ones where the steps in s are equal, so the two give the
    same samples there: a variable-step iPNDM (exact Adams-Bashforth in s) is lms. From s = 5 the
    asymptotic regime is reached at 80-640 steps: fitted order ~3.9 (from s = 20 the same steps
    are pre-asymptotic: 3.05), the warm-up's Euler step (local error O(h^2), where eps' is small)
    not yet visible."""
    process = PROCESSES["vpsde"]()
    model, x = gaussian().model(process), start(n=16, scale=process.prior_std())
    steps, errors = [80, 160, 320, 640], []
    for n in steps:
        grid = uniform_in_s(process, n)
        x_top = exact_flow(process, x, process.t_max, grid.times[0])
        outs = [on_grid(cls, grid, lower_order_final=False, order=4, **basis)(CountingModel(model, process, {}), process,
                                                                      x_top, NoiseSource(len(x), 0, x.device, x.dtype), iter)
                for cls, basis in ((IPNDM, {}), (LMS, {"basis": "s"}))]
        assert torch.allclose(outs[0], outs[1], rtol=1e-10, atol=1e-12)
        errors.append((outs[0] - exact_flow(process, x_top, grid.times[0], grid.times[-1])).abs().max().item())
    fitted = fitted_order(steps, errors)
    print(f"ipndm = lms uniform in s from 5: errors {errors}, fitted {fitted:.2f}")
    assert fitted > 3.5, (errors, fitted)
