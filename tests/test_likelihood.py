"""Exact likelihood: the oracle's true log-density, a linear flow's log-determinant, Hutchinson's
unbiasedness, and bits/dim against a closed form."""

from __future__ import annotations

import math

import pytest
import torch

import genflow
from genflow.likelihood import bits_per_dim, run
from genflow.ode import flow_with_divergence
from genflow.data import toy_sample
from genflow.nets import MLP
from genflow.processes import CNF, VPSDE, FlowMatching
from genflow.testing import GaussianMixture

F64 = dict(dtype=torch.float64)
from test_samplers import PROCESSES  # the registry's processes and the cosine path


def correlated_gaussian(mean=(0.5, -1.0, 0.25)) -> GaussianMixture:
    return GaussianMixture([list(mean)], [[[0.5, 0.2, 0.0], [0.2, 0.3, -0.1], [0.0, -0.1, 0.4]]])


def two_modes() -> GaussianMixture:
    return GaussianMixture.isotropic([[-1.0, 0.5], [1.0, -0.5]], [0.4, 0.25], weights=[0.6, 0.4])


def data_points(target: GaussianMixture, n: int = 6, seed: int = 0) -> torch.Tensor:
    return target.sample(n, generator=torch.Generator().manual_seed(seed))


def marginal(target: GaussianMixture, process, x: torch.Tensor, t: float) -> torch.Tensor:
    return target.marginal_log_prob(process, x, torch.full((len(x),), t, **F64))


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("target", [correlated_gaussian, two_modes], ids=["gaussian", "mixture"])
def test_the_divergence_integral_carries_the_true_density_along_the_flow(name, target):
    """log p_{t_min}(x) = log p_{t_max}(x(t_max)) + int div v dt, with both p's the data's true
    marginals: the flow and its log-determinant are exact, whatever the prior."""
    process, data = PROCESSES[name](), target()
    x = data_points(data)
    out = run(data.model(process), process, x, exact_divergence=True, rtol=1e-8, atol=1e-8)
    transported = marginal(data, process, out.noise, process.t_max) + out.delta_log_prob
    error = (transported - marginal(data, process, x, process.t_min)).abs().max().item() / data.dim
    print(f"{name}: max error {error:.1e} nats/dim, NFE {out.nfe}")
    assert error < 1e-6


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_log_likelihood_with_the_exact_trace_is_the_true_log_density(name):
    """With the prior N(0, sigma(t_max)^2 I) in place of the true end marginal. For zero-mean data
    the two differ by O(alpha(t_max)^2) (VP: alpha(1)^2 = 4e-5; DDPM: abar_T = 4e-5; flows: 0);
    a mean m would add about alpha(t_max) m.x(t_max), 5e-3 nats for |m| = 1 on DDPM's linear
    schedule, which is the schedule's, not the solver's."""
    process, data = PROCESSES[name](), correlated_gaussian(mean=(0.0, 0.0, 0.0))
    x = data_points(data)
    log_prob = genflow.log_likelihood(data.model(process), process, x, exact_divergence=True, rtol=1e-8,
                                      atol=1e-8)
    error = (log_prob - marginal(data, process, x, process.t_min)).abs().max().item() / data.dim
    print(f"{name}: max error {error:.1e} nats/dim")
    assert error < 1e-3


def test_hutchinson_is_unbiased():
    """K probes of the same point: their mean is within 4 standard errors of the exact value."""
    process, data = VPSDE(), two_modes()
    x = data_points(data, n=1)
    exact = run(data.model(process), process, x, exact_divergence=True, rtol=1e-7, atol=1e-7).log_prob
    for probe in ("rademacher", "gaussian"):
        many = genflow.log_likelihood(data.model(process), process, x.repeat(400, 1), probe=probe, rtol=1e-7,
                                      atol=1e-7, generator=torch.Generator().manual_seed(1))
        se = many.std() / math.sqrt(len(many))
        assert abs(many.mean() - exact) < 4 * se + 1e-6, (probe, many.mean(), exact, se)
        assert many.std() > 1e-4  # it is an estimate, not the exact trace in disguise


@pytest.mark.parametrize("exact", [True, False])
def test_change_of_variables_for_a_linear_field(exact):
    """dx/dt = A x: x(t) = expm(A t) x0 and int div v dt = t tr(A), for any x0."""
    A = torch.tensor([[0.3, -1.0, 0.2], [0.5, -0.2, 0.0], [0.1, 0.4, -0.6]], **F64)
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), **F64)
    probe = None if exact else torch.randn(5, 3, generator=torch.Generator().manual_seed(1), **F64)
    x1, delta = flow_with_divergence(lambda x, t: x @ A.T, x0, 0.0, 1.5, probe=probe, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x1, x0 @ torch.linalg.matrix_exp(1.5 * A).T, rtol=1e-8, atol=1e-8)
    expected = 1.5 * torch.trace(A) if exact else 1.5 * torch.einsum("ni,ij,nj->n", probe, A, probe)
    torch.testing.assert_close(delta, expected.expand(5), rtol=1e-8, atol=1e-8)


def test_bits_per_dim_of_a_discretized_gaussian_matches_the_closed_form():
    """Data N(m, s^2 I) in [-1, 1]-space under flow matching with the exact model. For pixel k and
    z = a (k + u) - 1 (a = 2 / 2^bits), E_u[(z - m)^2] = (a (k + 1/2) - 1 - m)^2 + a^2 / 12, so
    E_u log p_z has a closed form; bpd = -E_u log p_z / (D ln 2) + bits - 1."""
    m, s, bits, draws = 0.1, 0.4, 8, 600
    data = GaussianMixture.isotropic([[m] * 4], [s], event_shape=(1, 2, 2))
    process = FlowMatching()
    k = torch.tensor([[[[12, 140], [200, 99]]], [[[128, 64], [255, 0]]]], dtype=torch.uint8)
    bpd = bits_per_dim(data.model(process), process, k, bits=bits, draws=draws, exact_divergence=True,
                       rtol=1e-7, atol=1e-7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = 2.0 / 2**bits
    second = (a * (k.double() + 0.5) - 1 - m) ** 2 + a**2 / 12
    log_pz = (-0.5 * second / s**2 - 0.5 * math.log(2 * math.pi * s**2)).flatten(1).sum(1)
    expected = -log_pz / (4 * math.log(2)) + bits - 1
    # Monte Carlo over draws: the spread of log p_z over u is about a / s^2 * |z - m| per pixel.
    torch.testing.assert_close(bpd, expected, rtol=0, atol=2e-3)
    scaled = k.double() / 255 * 2 - 1  # the same pixels given as floats in [-1, 1]
    again = bits_per_dim(data.model(process), process, scaled, bits=bits, draws=draws, exact_divergence=True,
                         rtol=1e-7, atol=1e-7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, bpd, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: bits_per_dim(None, FlowMatching(), torch.full((1, 2), 300)), r"0\.\.255"),
        (lambda x: bits_per_dim(None, FlowMatching(), torch.full((1, 2), 1.5)), r"\[-1, 1\]"),
        (lambda x: bits_per_dim(None, FlowMatching(), x, draws=0), "draws and bits must be >= 1"),
        (lambda x: genflow.log_likelihood(None, FlowMatching(), x, method="rk5"), "method must be one of"),
        (lambda x: genflow.log_likelihood(None, FlowMatching(), x, probe="sobol"), "probe"),
    ],
)
def test_bad_likelihood_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(1, 2))


def test_cnf_loss_is_the_negative_log_likelihood_per_dimension():
    """Two routes to the same number: CNF.loss (exact trace, no regularizers, tight dopri5) and
    -log_likelihood / D for an untrained net."""
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=1, time_scale=1000.0).double()
    process = CNF(method="dopri5", rtol=1e-9, atol=1e-9, exact_divergence=True, kinetic=0.0, jacobian=0.0)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), **F64)
    loss = process.loss(net, x)
    nll = -genflow.log_likelihood(net, process, x, exact_divergence=True, rtol=1e-9, atol=1e-9).mean() / 2
    torch.testing.assert_close(loss, nll, rtol=1e-6, atol=1e-7)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_adjoint_gradients_match_direct_backpropagation():
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=1, time_scale=1000.0).double()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), **F64)
    grads = []
    for adjoint in (False, True):
        net.zero_grad()
        CNF(method="dopri5", rtol=1e-7, atol=1e-7, adjoint=adjoint).loss(
            net, x, generator=torch.Generator().manual_seed(2)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    error = ((grads[1] - grads[0]).norm() / grads[0].norm()).item()
    print(f"adjoint vs direct: relative error {error:.1e}")
    assert error < 1e-3  # the two solve different ODEs to rtol 1e-7 (adjoint: backwards in time)


def test_a_cnf_trained_by_maximum_likelihood_beats_the_prior_on_8gaussians():
    """200 steps (about 15 s on 2 cores): the true test NLL (dopri5, exact trace) falls at least
    1.5 nats below the N(0, I) prior's (measured: 3.3 against 5.9)."""
    torch.manual_seed(0)
    train, test = toy_sample("8gaussians", 20000, seed=0), toy_sample("8gaussians", 500, seed=1)
    process = CNF(steps=8)
    net = MLP(dim=2, hidden=64, depth=2, time_scale=1000.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = process.loss(net, train[torch.randint(len(train), (256,), generator=g)], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior = -process.prior_log_prob(test).mean().item()
    nll = -genflow.log_likelihood(net, process, test, exact_divergence=True).mean().item()
    print(f"test NLL {nll:.3f} nats against the prior's {prior:.3f}")
    assert nll < prior - 1.5


def test_rademacher_probes_are_signs_never_zero():
    from genflow.ode import rademacher

    noise = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0])
    assert rademacher(noise).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]
