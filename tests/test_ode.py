"""The ODE module: the variable each path is solved in, DDPM at VP's cost, settings refused in one line."""

from __future__ import annotations

import math

import pytest
import torch

from genflow import ode
from genflow.processes import DDPM, VESDE, VPSDE, FlowMatching, GaussianPath, SubVPSDE
from genflow.samplers import run
from genflow.testing import GaussianMixture

F64 = dict(dtype=torch.float64)


def mixture16() -> GaussianMixture:
    """The benchmark's 16-D mixture of 6 (scripts/bench_samplers.py)."""
    g = torch.Generator().manual_seed(16)
    means = 1.5 * torch.randn(6, 16, generator=g, **F64)
    stds = 0.3 + 0.4 * torch.rand(6, generator=g, **F64)
    return GaussianMixture.isotropic(means.tolist(), stds.tolist(), weights=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("process, vp", [(DDPM(), True), (DDPM(beta_schedule="cosine"), True),
                                                 (VPSDE(), False), (SubVPSDE(), False), (VESDE(), False),
                                                 (FlowMatching(), False)], ids=repr)
def test_paths_with_kinks_are_solved_in_the_reference_vp_time(process, vp):
    assert ode.Chart.of(process).vp is vp


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_time_at_log_snr_is_the_bisection_of_the_base_class(schedule):
    """DDPM's closed-form inverse (log abar = -softplus(-lambda) on its linear segment) equals the
    generic bisection route, and inverts log_snr at fractional steps and at both ends."""
    process = DDPM(beta_schedule=schedule)
    t = torch.cat([torch.tensor([0.0, 0.5, 1.0, 998.25, 999.0], **F64),
                   999 * torch.rand(50, generator=torch.Generator().manual_seed(0), **F64)])
    lam = process.log_snr(t)
    closed = process.time_at_log_snr(lam)
    assert torch.allclose(closed, t, rtol=0, atol=1e-7)
    assert torch.allclose(closed, GaussianPath.time_at_log_snr(process, lam), rtol=0, atol=1e-7)
    outside = process.time_at_log_snr(torch.tensor([50.0, -50.0], **F64))
    assert outside.tolist() == [0.0, 999.0]


def test_the_velocity_in_the_vp_time_is_the_time_velocity_over_du_dt():
    """dx/du = (dx/dt) / (du/dt), with du/dt a central difference of u(t) = vp_time(lambda(t)) inside
    one of DDPM's segments; and vp_time inverts the reference VP-SDE's own log-SNR."""
    process, data = DDPM(), mixture16()
    model = data.model(process)
    denoise = lambda x, t: process.to_hub(model(x, t), x, t)  # noqa: E731
    t = torch.tensor([412.3], **F64)
    x = data.sample(4, generator=torch.Generator().manual_seed(0))
    u = lambda t: ode.vp_time(process.log_snr(t))  # noqa: E731
    du_dt = (u(t + 1e-6) - u(t - 1e-6)) / 2e-6
    v_t = ode.Chart(process, vp=False).velocity(denoise)(x, t.expand(4))
    v_u = ode.Chart(process, vp=True).velocity(denoise)(x, u(t).expand(4))
    assert torch.allclose(v_u, v_t / du_dt, rtol=1e-7, atol=0)
    s = torch.linspace(0.01, 1.0, 7, **F64)
    assert torch.allclose(ode.vp_time(VPSDE().log_snr(s)), s, rtol=1e-10, atol=0)
    lam, dlam = ode.vp_log_snr(s)
    assert torch.allclose(lam, VPSDE().log_snr(s), rtol=1e-10, atol=0)
    assert torch.allclose(dlam, (ode.vp_log_snr(s + 1e-6)[0] - ode.vp_log_snr(s - 1e-6)[0]) / 2e-6, rtol=1e-6)


def test_dopri5_on_ddpm_costs_about_what_it_costs_on_vp():
    """The issue's goal: on the 16-D mixture's exact scores, dopri5 at rtol = atol = 1e-5 takes at
    most 1.5x the NFE on DDPM(T = 1000) that it takes on VPSDE (it restarted at each of DDPM's 998
    kinks before: 7000 NFE); and the two land on the same samples, up to the tolerance and the
    small difference between the two schedules."""
    data = mixture16()
    noise = torch.randn(200, 16, generator=torch.Generator().manual_seed(0), **F64)
    nfe, samples = {}, {}
    for name, process in (("ddpm", DDPM(timesteps=1000)), ("vpsde", VPSDE())):
        out = run(data.model(process), process, sampler="ode", noise=noise * process.prior_std(), rtol=1e-5,
                  atol=1e-5, denoise=False)
        nfe[name], samples[name] = out.nfe, out.samples
    print(f"dopri5 NFE: {nfe}")
    assert nfe["ddpm"] <= 1.5 * nfe["vpsde"], nfe
    assert (samples["ddpm"] - samples["vpsde"]).abs().mean() < 0.05


def test_the_likelihood_on_ddpm_is_exact_and_cheap():
    """The exact-trace likelihood on DDPM(T = 1000) with the default dopri5 at 1e-5 matches the
    mixture's true log-density at t_min to < 1e-3 nats/dim (zero-mean data: the prior's mismatch is
    O(abar_T)), in a few hundred NFE, not thousands."""
    from genflow.likelihood import run as likelihood

    process = DDPM(timesteps=1000)
    data = GaussianMixture.isotropic([[0.6, -0.3, 0.2], [-0.6, 0.3, -0.2]], [0.4, 0.3])
    x = data.sample(8, generator=torch.Generator().manual_seed(1))
    out = likelihood(data.model(process), process, x, exact_divergence=True)
    truth = data.marginal_log_prob(process, x, torch.full((8,), process.t_min, **F64))
    error = (out.log_prob - truth).abs().max().item() / data.dim
    print(f"ddpm likelihood: error {error:.1e} nats/dim, NFE {out.nfe}")
    assert error < 1e-3 and out.nfe < 400


@pytest.mark.parametrize("settings, match", [
    (dict(method="dopri4"), "method must be one of"),
    (dict(rtol=math.nan), "rtol must be a finite number > 0"),
    (dict(atol=-1.0), "atol must be a finite number > 0"),
    (dict(rtol=math.inf), "rtol must be a finite number > 0"),
    (dict(steps=0), "steps .* must be an integer >= 1"),
    (dict(steps=2.5), "steps .* must be an integer >= 1"),
])
def test_bad_solver_settings_are_refused_in_one_line(settings, match):
    full = dict(method="rk4", rtol=1e-5, atol=1e-5, steps=10) | settings
    with pytest.raises(ValueError, match=match) as err:
        ode.check_solver(full.pop("method"), **full)
    assert "\n" not in str(err.value)
