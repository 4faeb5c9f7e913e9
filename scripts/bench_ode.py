"""The probability-flow ODE's cost by the variable it is solved in (genflow.ode.Chart).

On the 16-D Gaussian mixture's exact scores (genflow.testing.GaussianMixture), float64, dopri5 at
rtol = atol = 1e-5: NFE and wall time of sampling (the prior to t_min, n samples) and of the
exact-trace likelihood (m examples), with the error of the log-density against the mixture's true
marginal at t_min (per dimension; it includes the prior's mismatch O(alpha(t_max)), the same in
every row of a process), for each process in its own time and in the reference VP time.

    python scripts/bench_ode.py [--n 200] [--m 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from genflow import ode
from genflow.processes import DDPM, VESDE, VPSDE, SubVPSDE
from genflow.samplers.common import CountingModel
from genflow.testing import GaussianMixture

F64 = dict(dtype=torch.float64)
PROCESSES = {"ddpm-1000": lambda: DDPM(timesteps=1000), "vpsde": VPSDE, "subvpsde": SubVPSDE, "vesde": VESDE}


def mixture16() -> GaussianMixture:
    """The 16-D mixture of 6 of scripts/bench_samplers.py."""
    g = torch.Generator().manual_seed(16)
    means = 1.5 * torch.randn(6, 16, generator=g, **F64)
    stds = 0.3 + 0.4 * torch.rand(6, generator=g, **F64)
    return GaussianMixture.isotropic(means.tolist(), stds.tolist(), weights=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="samples drawn")
    p.add_argument("--m", type=int, default=20, help="examples whose likelihood is computed")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = mixture16()
    print(f"## PF-ODE cost by variable: dopri5 at 1e-5, 16-D mixture, n={args.n}, m={args.m}, float64\n")
    print("| process | variable | sample NFE | sample s | nll NFE | nll s | nll error (nats/dim) |")
    print("|---|---|---|---|---|---|---|")
    for name, make in PROCESSES.items():
        process = make()
        model = data.model(process)
        noise = process.prior_std() * torch.randn(args.n, 16, generator=torch.Generator().manual_seed(0), **F64)
        x0 = data.sample(args.m, generator=torch.Generator().manual_seed(1))
        truth = data.marginal_log_prob(process, x0, torch.full((args.m,), process.t_min, **F64))
        for vp in (False, True):
            chart = ode.Chart(process, vp=vp)
            net = CountingModel(model, process, {})
            start = time.perf_counter()
            ode.solve(net.denoise, process, noise, to_noise=False, method="dopri5", steps=1, rtol=1e-5, atol=1e-5,
                      chart=chart)
            sample_s, sample_nfe = time.perf_counter() - start, net.nfe
            net = CountingModel(model, process, {})
            start = time.perf_counter()
            end, delta = ode.log_density_change(net.denoise, process, x0, chart=chart)
            nll_s = time.perf_counter() - start
            error = ((process.prior_log_prob(end) + delta - truth).abs().max() / 16).item()
            chosen = " (chosen)" if ode.Chart.of(process) == chart else ""
            print(f"| {name} | {'VP time' if vp else 'own time'}{chosen} | {sample_nfe} | {sample_s:.2f} | {net.nfe} "
                  f"| {nll_s:.2f} | {error:.1e} |", flush=True)


if __name__ == "__main__":
    main()
