"""lms and ipndm: Adams weights against closed forms, runs against the formulas written out here,
fitted convergence orders on the exact single-Gaussian ODE, honest NFE and one-line refusals."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import assert_nfe_is_honest

from genflow.samplers import IPNDM, LMS, NoiseGrid, noise_grid, run
from genflow.samplers.common import CountingModel, NoiseSource
from genflow.samplers.multistep import IPNDM_WEIGHTS, adams_weights, log_adams_weights
from genflow.samplers.solvers import scaled_sigma
from test_samplers import PROCESSES, exact_flow, fitted_order, gaussian, start

F64 = dict(dtype=torch.float64)


def lagrange_integrals(nodes, start, end):
    """Gauss-Legendre (exact to degree 7) of each Lagrange basis polynomial written as a product."""
    u, w = np.polynomial.legendre.leggauss(4)
    tau = start + (end - start) * (u + 1) / 2
    out = []
    for j, node in enumerate(nodes):
        basis = np.prod([(tau - o) / (node - o) for k, o in enumerate(nodes) if k != j], axis=0)
        out.append(float((end - start) / 2 * np.sum(w * basis)))
    return out


def test_adams_weights_are_ab2_in_closed_form_and_integrate_cubics_exactly():
    """Variable-step AB2: w0 = h (1 + h / (2 h')), w1 = -h^2 / (2 h'); four nodes integrate any cubic;
    uniform steps give iPNDM's fixed weights."""
    s0, s1, s2 = 3.0, 1.7, 0.4
    h, h_prev = s2 - s1, s1 - s0
    assert np.allclose(adams_weights([s1, s0], s1, s2), [h * (1 + h / (2 * h_prev)), -h * h / (2 * h_prev)], rtol=1e-13)
    nodes, a, b = [0.9, 2.5, 6.0, 30.0], 0.9, 0.2  # newest first, a karras-like spread
    cubic = np.polynomial.Polynomial([0.3, -1.2, 0.7, -0.05])
    exact = cubic.integ()(b) - cubic.integ()(a)
    assert abs(np.dot(adams_weights(nodes, a, b), cubic(np.array(nodes))) - exact) < 1e-12
    assert np.allclose(adams_weights(nodes, a, b), lagrange_integrals(nodes, a, b), rtol=1e-11, atol=1e-13)
    for order in range(1, 5):
        uniform = [1.0 - 0.1 * k for k in range(order)]
        assert np.allclose(adams_weights(uniform, 1.0, 1.1), [0.1 * w for w in IPNDM_WEIGHTS[order - 1]], rtol=1e-12)


def integral_of_log_power(k: int, s: float) -> float:
    """An antiderivative of (log s)^k in s, by parts: s sum_m (-1)^m k!/(k-m)! (log s)^(k-m); 0 at s = 0."""
    return 0.0 if s == 0 else s * sum((-1) ** m * math.factorial(k) / math.factorial(k - m) * math.log(s) ** (k - m)
                                      for m in range(k + 1))


@pytest.mark.parametrize("nodes,a,b", [([0.9, 2.5, 6.0, 30.0], 0.9, 0.2), ([0.9, 2.5, 6.0, 30.0], 0.9, 0.0),
                                       ([80.0, 157.0, 400.0], 80.0, 30.0), ([1.0, 1.01], 1.0, 0.99),
                                       ([0.05, 0.0501, 0.0502, 0.0503], 0.05, 0.0499), ([0.02, 0.3], 0.02, 0.0)])
def test_log_s_weights_integrate_every_polynomial_in_log_s_exactly(nodes, a, b):
    """sum_j w_j p(log s_j) = integral of p(log s) ds from a to b for every p of degree < len(nodes)
    (down to s = 0, on steps short in log s, from s = 80), against the closed form by parts; they
    differ from Adams' weights in s."""
    w = np.array(log_adams_weights(nodes, a, b))
    logs = np.log(np.array(nodes))
    for k in range(len(nodes)):
        exact = integral_of_log_power(k, b) - integral_of_log_power(k, a)
        assert abs(np.dot(w, logs**k) - exact) <= 1e-12 * max(1.0, abs(exact)), (k, np.dot(w, logs**k), exact)
    assert not np.allclose(w, adams_weights(nodes, a, b), rtol=1e-6, atol=0)


def test_log_s_weights_are_deis_rho_ab2_in_closed_form():
    """Order 2 (DEIS's rho-AB2, L linear in log s): w1 = integral of (log s - log s_i)/(log s_{i-1} - log s_i) ds
    = [s (log s - log s_i - 1)]_{s_i}^{s_{i+1}} / (log s_{i-1} - log s_i), w0 = s_{i+1} - s_i - w1."""
    s_prev, s_now, s_next = 3.0, 1.7, 0.4

    def ind(s):
        return s * (math.log(s) - math.log(s_now) - 1) / (math.log(s_prev) - math.log(s_now))

    w1 = ind(s_next) - ind(s_now)
    assert np.allclose(log_adams_weights([s_now, s_prev], s_now, s_next), [s_next - s_now - w1, w1], rtol=1e-13)


def by_hand(process, x, grid: NoiseGrid, order: int, weights, lower_order_final: bool):
    """The multistep recursion written out: y = x/alpha, y_{i+1} = y_i + sum_j w_j eps_{i-j}; the
    first step from t_max (s = inf for a flow: left out of later steps' polynomials) as x0 + s_1 eps;
    the step to s = 0 gives y."""
    model = gaussian().model(process)
    levels = grid.sigmas + ([0.0] if grid.to_data else [])
    steps, eps = len(levels) - 1, []
    for i in range(steps):
        t = torch.full((len(x),), grid.times[i], **F64)
        hub = process.denoise(model, x, t)
        eps.append(hub.eps)
        known = i + 1 if math.isfinite(levels[0]) else max(i, 1)  # a flow's eps at s = inf has no node
        k = min(order, known, steps - i if lower_order_final else order)
        if i == 0 or k == 1:
            y = hub.x0 + levels[i + 1] * hub.eps
        else:
            nodes = levels[i - k + 1:i + 1][::-1]
            w = weights(nodes, levels[i], levels[i + 1])
            y = x / process.coefficients(t).alpha[:, None] + sum(w[j] * eps[-1 - j] for j in range(k))
        a_next = 1.0 if i + 1 == len(grid.times) else float(process.coefficients(torch.tensor([grid.times[i + 1]], **F64)).alpha)
        x = a_next * y
    return x


def ipndm_by_hand(nodes, start, end):
    table = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    return [(end - start) * w for w in table[len(nodes)]]


def log_lagrange_integrals(nodes, start, end):
    """Gauss-Legendre (40 points) in u = log s of each Lagrange basis polynomial in log s times e^u."""
    return [
        _gauss_log(lambda u: np.prod([(u - math.log(o)) / (math.log(node) - math.log(o))
                                      for k, o in enumerate(nodes) if k != j], axis=0), start, end)
        for j, node in enumerate(nodes)]


def _gauss_log(f, start, end):
    """integral from start to end of f(log s) ds = integral of f(u) e^u du; down to s = 0 cut at
    log s = log start - 60 (e^-60: nothing left)."""
    a, b = math.log(start), (math.log(end) if end > 0 else math.log(start) - 60.0)
    u, w = np.polynomial.legendre.leggauss(80)
    tau = a + (b - a) * (u + 1) / 2
    return float((b - a) / 2 * np.sum(w * f(tau) * np.exp(tau)))


@pytest.mark.parametrize("name", ["ddpm", "vpsde", "flow_matching"])
@pytest.mark.parametrize("sampler,weights", [("lms", lagrange_integrals), ("ipndm", ipndm_by_hand),
                                             ("lms_log_s", log_lagrange_integrals)])
@pytest.mark.parametrize("denoise,final", [(False, False), (True, True), (False, True)])
def test_run_is_the_formula_written_out(name, sampler, weights, denoise, final):
    process = PROCESSES[name]()
    x = start(n=16, scale=process.prior_std())
    steps = 7
    grid = noise_grid(process, steps, "karras", to_data=denoise)
    basis = dict(basis="log_s" if sampler == "lms_log_s" else "s") if sampler.startswith("lms") else {}
    out = run(gaussian().model(process), process, sampler=sampler.removesuffix("_log_s"), steps=steps, noise=x,
              schedule="karras", denoise=denoise, lower_order_final=final, order=4, **basis)
    assert out.nfe == steps
    assert torch.allclose(out.samples, by_hand(process, x, grid, 4, weights, final), rtol=1e-10, atol=1e-10)


def test_order_one_is_ddim_and_lms_order_two_differs_from_dpmpp_2m_in_its_variable():
    """order = 1 is the DDIM step x_s = alpha_s x0 + sigma_s eps at every step."""
    process = PROCESSES["vpsde"]()
    model, x = gaussian().model(process), start(n=8, scale=process.prior_std())
    ddim = run(model, process, sampler="dpmpp_2m", steps=1, noise=x, denoise=False).samples
    for sampler in ("lms", "ipndm"):
        one = run(model, process, sampler=sampler, steps=1, noise=x, denoise=False, order=1).samples
        assert torch.allclose(one, ddim, atol=1e-12)


def top_level(process) -> float:
    """The grid's top: s(t_max) where finite (no jump), else 1000 (a flow's jump from s = inf
    then leaves an error below 1e-7)."""
    return min(scaled_sigma(process, process.t_max), 1e3)


@pytest.mark.parametrize("name,order,low,high,basis", [*((name, 4, 3.5, 4.3, "s") for name in sorted(PROCESSES)),
                                                       ("vpsde", 2, 1.8, 2.3, "s"), ("flow_matching", 3, 2.7, 3.3, "s"),
                                                       *((name, 4, 3.5, 4.4, "log_s") for name in sorted(PROCESSES)),
                                                       ("vpsde", 3, 2.7, 4.0, "log_s"), ("vesde", 3, 2.7, 4.0, "log_s"),
                                                       ("flow_matching", 3, 2.7, 4.0, "log_s")])
def test_lms_convergence_order_to_the_exact_ode_solution(name, order, low, high, basis):
    """The error at the grid's last level falls 2^order-fold per doubling of steps (fixed order to
    the end: lower_order_final=False; the warm-up's low-order steps lie where eps barely moves), in
    either basis. In log s over 40-160 steps (its errors are ~30x smaller: at 320 steps a flow's
    reach the jump's floor): fitted 3.8-4.3 at order 4, and 3.7-3.9 at order 3, above 3 before the
    asymptotic regime (the single Gaussian's eps has a small third derivative in log s)."""
    process = PROCESSES[name]()
    model = gaussian().model(process)
    x = start(n=64, scale=process.prior_std())
    kw = dict(schedule="logsnr", sigma_max=top_level(process), denoise=False, lower_order_final=False, order=order,
              basis=basis)
    steps, errors = [40, 80, 160] if basis == "log_s" else [80, 160, 320, 640], []
    for n in steps:
        end = noise_grid(process, n, "logsnr", sigma_max=kw["sigma_max"], to_data=False).times[-1]
        out = run(model, process, sampler="lms", steps=n, noise=x, **kw).samples
        errors.append((out - exact_flow(process, x, process.t_max, end)).abs().max().item())
    fitted = fitted_order(steps, errors)
    print(f"{name} lms basis {basis} order {order}: errors {errors}, fitted {fitted:.2f}")
    assert low < fitted < high, (errors, fitted)


@dataclasses.dataclass(frozen=True)
class UniformIPNDM(IPNDM):
    """iPNDM on a grid uniform in s from 20 to 0.05 (its fixed weights' home), started at s = 20, where the
    warm-up's low-order steps cost little (eps barely moves there)."""

    def grid(self, process):
        times = process.time_at_log_snr(-2 * torch.log(torch.linspace(20.0, 0.05, self.steps + 1, **F64)))
        log_snrs = process.log_snr(times)  # the levels as the times give them (as noise_grid)
        return NoiseGrid(times=times.tolist(), sigmas=torch.exp(-0.5 * log_snrs).tolist(), log_snrs=log_snrs.tolist(),
                         to_data=False)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_ipndm_is_of_higher_order_on_a_grid_uniform_in_s_and_second_order_on_karras(name):
    """Its weights are Adams-Bashforth's for uniform steps: higher order where the steps in s are
    equal (fitted 3.05 over 80-640 steps from s = 20: the warm-up's low-order steps, which iPNDM
    keeps, hold it under 4); on a non-uniform grid the weights are off by O(h), second order."""
    process = PROCESSES[name]()
    model = gaussian().model(process)
    x = start(n=64, scale=process.prior_std())
    steps, uniform, karras = [80, 160, 320, 640], [], []
    for n in steps:
        grid = UniformIPNDM(steps=n).grid(process)
        x_top = exact_flow(process, x, process.t_max, grid.times[0])
        out = UniformIPNDM(steps=n, lower_order_final=False, order=4)(CountingModel(model, process, {}), process, x_top,
                                                              NoiseSource(len(x), 0, x.device, x.dtype), iter)
        uniform.append((out - exact_flow(process, x_top, grid.times[0], grid.times[-1])).abs().max().item())
        kw = dict(schedule="karras", sigma_max=top_level(process), denoise=False, lower_order_final=False, order=4)
        end = noise_grid(process, n, "karras", sigma_max=kw["sigma_max"], to_data=False).times[-1]
        out = run(model, process, sampler="ipndm", steps=n, noise=x, **kw).samples
        karras.append((out - exact_flow(process, x, process.t_max, end)).abs().max().item())
    fitted, second = fitted_order(steps, uniform), fitted_order(steps, karras)
    print(f"{name} ipndm: uniform in s {uniform} (order {fitted:.2f}); karras {karras} (order {second:.2f})")
    assert fitted > 2.8 and 1.7 < second < 2.4, (uniform, fitted, karras, second)


@pytest.mark.parametrize("sampler", ["lms", "ipndm"])
def test_nfe_is_honest_and_bad_options_are_one_line(sampler):
    process = PROCESSES["flow_matching"]()
    model = gaussian().model(process)
    assert_nfe_is_honest(model, process, sampler, 9)
    for order in (0, 5, 2.5):
        with pytest.raises(ValueError, match=rf"^sampler '{sampler}': order must be an integer >= 1 and <= 4; got {order}$"):
            run(model, process, sampler=sampler, steps=4, shape=(2, 2), order=order)
    with pytest.raises(ValueError, match="schedule must be one of logsnr, karras, time, learned; got 'cosine'$"):
        run(model, process, sampler=sampler, steps=4, shape=(2, 2), schedule="cosine")


def test_a_bad_basis_is_refused_in_one_line_and_shows_in_help():
    from genflow.cli.sample import parser
    process = PROCESSES["vpsde"]()
    with pytest.raises(ValueError, match="^sampler 'lms': basis must be one of s, log_s; got 'log'$"):
        run(gaussian().model(process), process, sampler="lms", steps=4, shape=(2, 2), basis="log")
    assert "log_s" in parser().format_help() and parser().parse_args(["--ckpt", "x.pt", "--basis", "log_s"]).basis == "log_s"
    assert LMS(steps=4).basis == "log_s" and LMS(steps=4).order == 3


def test_classes_are_registered_with_their_names():
    from genflow.samplers import SAMPLERS
    assert SAMPLERS["lms"] is LMS and SAMPLERS["ipndm"] is IPNDM and LMS.name == "lms" and IPNDM.name == "ipndm"


@pytest.mark.parametrize("name", ["ddpm", "vpsde", "flow_matching"])
@pytest.mark.parametrize("sampler", ["lms", "dpmpp_2m", "heun"])
def test_a_given_grid_of_a_schedules_own_levels_or_times_is_that_schedule(name, sampler):
    """sigmas= (levels after t_max) and times= (with t_max first) rebuild the karras grid exactly
    (for heun t_max given as a time is a level of the grid where s(t_max) is finite: its trapezoid
    starts there instead of jumping)."""
    process = PROCESSES[name]()
    model, x = gaussian().model(process), start(n=8, scale=process.prior_std())
    grid = noise_grid(process, 6, "karras")
    kw = dict(sampler=sampler, steps=6, noise=x)
    built = run(model, process, schedule="karras", **kw)
    by_levels = run(model, process, sigmas=grid.sigmas[1:], **kw)
    by_times = run(model, process, times=grid.times, **kw)
    assert by_levels.nfe == built.nfe and torch.allclose(by_levels.samples, built.samples, atol=1e-9)
    if sampler != "heun" or name == "flow_matching":
        assert by_times.nfe == built.nfe and torch.equal(by_times.samples, built.samples)


@pytest.mark.parametrize("grid,message", [
    (dict(sigmas=[80.0, 10.0, 1.0], steps=20), "the given sigmas make 4 steps \\(3 from t_max, 1 to s = 0\\); pass steps=4, not 20"),
    (dict(sigmas=[10.0, 80.0, 1.0], steps=4), "sigmas must be strictly decreasing \\(from noise to data\\); got \\[10.0, 80.0, 1.0\\]"),
    (dict(sigmas=[1e6, 1.0], steps=3), "sigmas must lie in \\[0.0010005, 152.167\\] for VPSDE"),
    (dict(sigmas=[1.0, 1e-4], steps=3), "sigmas must lie in \\[0.0010005, 152.167\\] for VPSDE"),
    (dict(times=[0.5, 0.1, -1.0], steps=4), "times must lie in \\[1e-05, 1\\] for VPSDE"),
    (dict(times=[1.0, 0.5], sigmas=[1.0], steps=2), "give one of sigmas= \\(levels sigma/alpha\\) or times= for a given grid"),
    (dict(sigmas=[8.0, 1.0], sigma_min=0.5, steps=3), "a given grid \\(sigmas or times\\) sets its own ends; leave sigma_min"),
    (dict(sigmas=[8.0, 0.0], steps=3), "sigmas must be a non-empty list of finite numbers > 0, or None"),
    (dict(sigmas=[], steps=1), "sigmas must be a non-empty list of finite numbers > 0, or None"),
    (dict(times=[1.0, math.nan], steps=2), "times must be a non-empty list of finite numbers, or None"),
])
def test_a_bad_given_grid_is_refused_in_one_line(grid, message):
    process = PROCESSES["vpsde"]()
    calls = []
    with pytest.raises(ValueError, match=f"^sampler 'lms': {message}") as err:
        run(lambda x, t: calls.append(1), process, sampler="lms", shape=(2, 2), **grid)
    assert "\n" not in str(err.value) and not calls


def test_a_given_grid_reads_from_one_command_line_word():
    from genflow.samplers.base import Floats
    from genflow.cli.sample import parser
    assert Floats("80,10, 1,0.1") == (80.0, 10.0, 1.0, 0.1)
    args = parser().parse_args(["--ckpt", "x.pt", "--sampler", "lms", "--sigmas", "80,10,1", "--steps", "4"])
    assert args.sigmas == (80.0, 10.0, 1.0)
    assert LMS(steps=4, sigmas=[80, 10, 1]).sigmas == (80.0, 10.0, 1.0)  # a list becomes a tuple: hashable
    hash(LMS(steps=4, sigmas=[80, 10, 1]))
