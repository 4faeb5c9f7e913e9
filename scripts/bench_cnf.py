"""Maximum likelihood against flow matching for the same CNF, on the same wall-time budget (CPU).

On 2-D toys (8gaussians, checkerboard) the same velocity network (an MLP) is trained as
(a) a maximum-likelihood CNF (FFJORD: rk4 through the ODE, Hutchinson trace, RNODE regularizers),
(b) flow matching with independent coupling, (c) flow matching with exact minibatch-OT coupling,
each for --budget seconds. Then: test NLL in nats (genflow.log_likelihood: dopri5 at 1e-5, exact
trace), the NFE of a dopri5 sample at rtol = atol = 1e-5, and one PNG per method (samples | density).

    python scripts/bench_cnf.py [--budget 30] [--out runs/bench_cnf]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

import genflow
from genflow.data import render_density, render_points, toy_sample
from genflow.nets import MLP
from genflow.processes import CNF, FlowMatching
from genflow.samplers import run

METHODS = {
    "cnf-mle": lambda: CNF(steps=8),
    "fm-independent": lambda: FlowMatching(coupling="independent"),
    "fm-ot": lambda: FlowMatching(coupling="ot"),
}


def train(process, data: torch.Tensor, budget: float, seed: int) -> tuple[MLP, int]:
    """Adam at 1e-3, batch 256, until the budget is spent; the net and the steps taken."""
    torch.manual_seed(seed)
    net = MLP(dim=2, hidden=64, depth=2, time_scale=1000.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        loss = process.loss(net, data[torch.randint(len(data), (256,), generator=g)], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), steps


def picture(net, process, samples: torch.Tensor, path: Path) -> None:
    """Samples and the learned density side by side in one PNG."""
    left = render_points(samples, path.with_suffix(".samples.png"), bins=150)

    def log_density(points: torch.Tensor) -> torch.Tensor:
        return genflow.log_likelihood(net, process, points, exact_divergence=True, rtol=1e-4, atol=1e-4)

    right = render_density(log_density, path.with_suffix(".density.png"), bins=100)
    a, b = Image.open(left), Image.open(right).resize(Image.open(left).size, Image.NEAREST)
    both = Image.new(a.mode, (a.width + b.width + 4, a.height), "white")
    both.paste(a, (0, 0))
    both.paste(b, (a.width + 4, 0))
    both.save(path)
    left.unlink()
    right.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=30.0, help="training seconds per method")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cnf"))
    parser.add_argument("--test", type=int, default=2000, help="test points for the NLL")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"genflow bench_cnf — torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.budget:.0f} s of training per method, MLP 2x64\n")
    print("| data | method | train steps | test NLL (nats) | prior NLL | dopri5 sample NFE | PNG |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("8gaussians", "checkerboard"):
        data, test = toy_sample(kind, 50_000, seed=0), toy_sample(kind, args.test, seed=1)
        for name, make in METHODS.items():
            process = make()
            net, steps = train(process, data, args.budget, seed=0)
            nll = -genflow.log_likelihood(net, process, test, exact_divergence=True).mean().item()
            prior = -process.prior_log_prob(test).mean().item()
            with torch.no_grad():
                out = run(net, process, sampler="ode", method="dopri5", rtol=1e-5, atol=1e-5, shape=(2000, 2),
                          generator=torch.Generator().manual_seed(0), denoise=False)
            path = args.out / f"{kind}_{name}.png"
            picture(net, process, out.samples, path)
            print(f"| {kind} | {name} | {steps} | {nll:.3f} | {prior:.3f} | {out.nfe} | {path} |", flush=True)


if __name__ == "__main__":
    main()
