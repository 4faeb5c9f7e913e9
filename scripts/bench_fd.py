"""Time of the Fréchet distance on N features of dimension D (FID: 2048), by phase, as a table.

The phases genflow-eval fd runs once the features exist: the samples' mean and covariance
(``gaussian_statistics``, float64), then the distance to reference statistics
(``frechet_distance_to_statistics``: two symmetric eigendecompositions of D x D matrices; with
N - 1 < D one of N x N instead). Random features stand in for Inception's (the time does not
depend on the values). scripts/bench_eval.py prints the same phases after its sampling rows.

    python scripts/bench_fd.py [--num 10000] [--dims 2048] [--repeats 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch


def bench_fd(num: int = 10_000, dims: int = 2048, repeats: int = 1) -> list[tuple[str, float]]:
    """(phase, best seconds over ``repeats``) for FD on ``num`` random ``dims``-d features."""
    from genflow.metrics import frechet_distance_to_statistics, gaussian_statistics

    g = torch.Generator().manual_seed(0)
    features = torch.randn(num, dims, generator=g)
    mu, sigma = gaussian_statistics(torch.randn(num, dims, generator=g))
    phases = {"statistics (mean, covariance; float64)": lambda: gaussian_statistics(features),
              "distance to reference statistics": lambda: frechet_distance_to_statistics(features, mu, sigma)}
    rows = []
    for name, work in phases.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        rows.append((name, min(times)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=10_000)
    p.add_argument("--dims", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = bench_fd(args.num, args.dims, args.repeats)
    print(f"FD on {args.num} features of {args.dims} dims, {args.threads} thread(s), best of {args.repeats}")
    print(f"| {'phase':<40} | seconds |\n| {'-' * 40} | ------- |")
    for name, seconds in rows:
        print(f"| {name:<40} | {seconds:7.2f} |")
    print(f"| {'total (genflow-eval fd, features given)':<40} | {sum(s for _, s in rows):7.2f} |")


if __name__ == "__main__":
    main()
