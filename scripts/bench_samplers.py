"""Sample quality against steps on exact scores, and the samplers' own overhead.

Part 1 — quality. The data are Gaussian mixtures whose score is known at every noise level
(genflow.testing.GaussianMixture): a 2-D ring of 8 modes and a 16-D mixture of 6. Every sampler
runs on the exact model, so what differs is the sampler's discretisation alone. Columns:

  nll_gap   mean -log p_data(samples) minus the data entropy (estimated from 200k true samples).
            > 0: samples spill into low-density regions (over-dispersed); < 0: they crowd the modes.
  sw        sliced Wasserstein-2 between the samples and a fresh true set of the same size.
  floor     the same for two true sets: no sampler can beat it at this sample size.

Every figure is mean ± standard deviation over --seeds seeds.

Part 2 — overhead. Wall time of a sampling loop divided by NFE × the time of one forward of the
same small UNet at batch 16 (CPU): what the sampler adds on top of the network. The two timings
alternate and the best of each is kept, but a shared CPU still moves them by a few per cent; the
last column is steadier: the sampler's own time per step, measured with a model that costs
nothing, over the forward's time.

Part 3 — learned grids (``--learned``): for the best few-step samplers at 5 and 10 NFE, a grid
learned by ``genflow.samplers.learn_schedule`` on draws of one seed, against the fixed schedules at
the same steps, on the held-out eval seeds; ``dist`` is the mean squared distance to the teacher's
samples (dpmpp_2m, 200 steps) from the same prior draws, the objective the grid was fitted to.

Part 4 — learn_schedule's objectives (``--objectives TARGET...``): lms at 5, 10 and 20 NFE on grids
learned by each objective (mse, trimmed) beside logsnr and karras, on the project's and the held-out
problems; with the distance to the teacher and the share of it the farthest 1 % of draws carry.

    python scripts/bench_samplers.py            # full table (a few minutes on 2 cores)
    python scripts/bench_samplers.py --learned  # the learned-schedule table only
    python scripts/bench_samplers.py --objectives ring-2d mix-16d grid-2d cov-12d   # mse against trimmed
    python scripts/bench_samplers.py --quick    # fewer rows and seeds
    python scripts/bench_samplers.py --few-steps --n 2000 --seeds 3   # 5-20 NFE settings (issue 15)
    python scripts/bench_samplers.py --basis --n 2000 --seeds 3       # lms in s against log s (DEIS)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from genflow.metrics import sliced_wasserstein
from genflow.nets import UNet
from genflow.processes import DDPM, VPSDE
from genflow.samplers import run
from genflow.testing import GaussianMixture

F64 = torch.float64


def ring() -> GaussianMixture:
    angles = [2 * math.pi * k / 8 for k in range(8)]
    return GaussianMixture.isotropic([[2 * math.cos(a), 2 * math.sin(a)] for a in angles], [0.15] * 8)


def mixture16() -> GaussianMixture:
    g = torch.Generator().manual_seed(16)
    means = 1.5 * torch.randn(6, 16, generator=g, dtype=F64)
    stds = 0.3 + 0.4 * torch.rand(6, generator=g, dtype=F64)
    return GaussianMixture.isotropic(means.tolist(), stds.tolist(), weights=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1])


def grid2d() -> GaussianMixture:
    """A held-out problem (not used to choose any default): 16 sharp modes (std 0.08) on a 4 x 4
    grid of spacing 1.2, weights from 1 to 4 (narrower and more numerous than the ring's)."""
    centres = [[1.2 * (i - 1.5), 1.2 * (j - 1.5)] for i in range(4) for j in range(4)]
    return GaussianMixture.isotropic(centres, [0.08] * 16, weights=[1 + (i * 7) % 4 for i in range(16)])


def covariance12() -> GaussianMixture:
    """A held-out problem: 5 full-covariance components in 12-D (condition numbers ~10-100, a
    dominant and a rare component), none of them isotropic as mix-16d's."""
    g = torch.Generator().manual_seed(12)
    means = 1.2 * torch.randn(5, 12, generator=g, dtype=F64)
    a = torch.randn(5, 12, 12, generator=g, dtype=F64) / 12**0.5
    scales = torch.logspace(-1.0, 0.0, 12, dtype=F64)  # 0.1 to 1 along each component's own axes
    covs = 0.25 * (a * scales) @ (a * scales).transpose(1, 2) + 0.005 * torch.eye(12, dtype=F64)
    return GaussianMixture(means, covs, weights=[0.4, 0.25, 0.15, 0.15, 0.05])


TARGETS = {"ring-2d": ring, "mix-16d": mixture16}
#: Problems the project's defaults were never chosen on (the issue's "problems the project has not
#: seen"): bench_peers.py --only grid-2d / cov-12d.
HELD_OUT = {"grid-2d": grid2d, "cov-12d": covariance12}
PROCESSES = {"ddpm-1000": lambda: DDPM(timesteps=1000), "vpsde": lambda: VPSDE()}

# (sampler, steps, options); rows a process refuses (ddpm on VPSDE) are skipped.
ROWS = [
    ("ddpm", 1000, {}),
    ("ddpm", 100, {}),
    ("ddim", 10, {}),
    ("ddim", 20, {}),
    ("ddim", 50, {}),
    ("ddim", 100, {}),
    ("ddim", 1000, {"eta": 1.0}),
    ("euler_maruyama", 100, {}),
    ("euler_maruyama", 1000, {}),
    ("pc", 100, {}),
    ("pc", 500, {}),
    ("ode", 1, {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}),
    ("ode", 50, {"method": "rk4"}),
    ("dpmpp_2m", 5, {}),
    ("dpmpp_2m", 10, {}),
    ("dpmpp_2m", 20, {}),
    ("dpmpp_2m", 30, {}),
    ("dpmpp_2m", 40, {}),
    ("dpmpp_2m", 20, {"denoise": False}),
    ("dpmpp_2m", 20, {"sigma_min": 0.3}),
    ("dpmpp_2m", 20, {"schedule": "karras"}),
    ("dpmpp_2m", 20, {"schedule": "time"}),
    ("dpmpp_2m", 10, {"sigma_max": 5.0, "sigma_min": 0.03}),
    ("dpmpp_2m", 20, {"sigma_max": 5.0, "sigma_min": 0.03}),
    ("dpmpp_3m", 5, {}),
    ("dpmpp_3m", 10, {}),
    ("dpmpp_3m", 20, {}),
    ("dpmpp_3m", 30, {}),
    ("lms", 5, {}),
    ("lms", 10, {}),
    ("lms", 20, {}),
    ("lms", 20, {"schedule": "karras"}),
    ("unipc", 5, {}),
    ("unipc", 10, {}),
    ("unipc", 10, {"variant": "bh1"}),
    ("unipc", 20, {}),
    ("ipndm", 5, {}),
    ("ipndm", 10, {}),
    ("ipndm", 10, {"order": 4}),
    ("ipndm", 20, {}),
    ("heun", 5, {}),
    ("heun", 10, {}),
    ("heun", 10, {"schedule": "time"}),
    ("heun", 10, {"sigma_max": 5.0, "sigma_min": 0.03}),
    ("heun", 18, {}),
]
#: The few-step budgets (issue 15) and, at each, every multistep / singlestep solver with the settings
#: that decide few-step quality: the final steps' order, the 3M x0'' weight, dpm_solver's jump and form.
BUDGETS = (5, 6, 8, 10, 15, 20)
FEW_STEP_SETTINGS = [
    ("dpmpp_2m", {}), ("dpmpp_2m", {"lower_order_final": True}),
    ("dpmpp_3m", {}), ("dpmpp_3m", {"lower_order_final": True}), ("dpmpp_3m", {"second_derivative": "half"}),
    ("dpmpp_3m", {"second_derivative": "half", "lower_order_final": True}),
    ("lms", {}), ("lms", {"lower_order_final": False}),
    ("ipndm", {}), ("ipndm", {"lower_order_final": True}), ("ipndm", {"order": 4}),
    ("unipc", {}), ("unipc", {"lower_order_final": False}),
    ("dpm_solver", {}), ("dpm_solver", {"jump_ddim": False}), ("dpm_solver", {"prediction": "noise"}),
]
FEW_STEP_ROWS = [(sampler, nfe, options) for nfe in BUDGETS for sampler, options in FEW_STEP_SETTINGS]
ROWS += [(sampler, nfe, {}) for nfe in BUDGETS for sampler in ("dpmpp_2m", "dpmpp_3m", "lms", "ipndm", "unipc",
                                                               "dpm_solver") if (sampler, nfe, {}) not in ROWS]
#: lms's interpolation variable (issue 15, DEIS's rho-AB): s against log s at orders 2-4 on two grids.
BASIS_ROWS = [("lms", nfe, {"basis": basis, "order": order, "schedule": schedule}) for nfe in (5, 10, 20)
              for schedule in ("logsnr", "karras") for order in (2, 3, 4) for basis in ("s", "log_s")]
QUICK_ROWS = [r for r in ROWS if (r[0], r[1]) in {("ddpm", 1000), ("ddim", 20), ("ddim", 100), ("pc", 100), ("ode", 50),
                                                  ("dpmpp_2m", 20), ("lms", 20), ("ipndm", 20),
                                                  ("heun", 18)}]


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.4f} ± {sd:.4f}" if mean < 0 else f"{mean:.4f} ± {sd:.4f}"


def quality_table(n: int, seeds: int, rows) -> None:
    print(f"## Quality on exact scores: n={n} samples, {seeds} seeds, float64\n")
    print("| target | process | sampler | steps | NFE | nll_gap (nats) | sw | floor | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tname, target, (entropy, true_sets, floor, g), pname, process, model in problems(n, seeds):
        for sampler, steps, options in rows:
            if sampler == "ddpm" and not process.discrete:
                continue  # ancestral DDPM needs discrete steps
            m = measure(model, process, target, entropy, true_sets, g, n, seeds, sampler, steps, options)
            label = sampler + "".join(f" {k}={v}" for k, v in options.items() if k not in ("rtol", "atol"))
            print(f"| {tname} | {pname} | {label} | {steps} | {m['nfe']} | {spread(m['gaps'])} | "
                  f"{spread(m['sws'])} | {spread(floor)} | {statistics.fmean(m['walls']):.2f} |", flush=True)


def problems(n: int, seeds: int, targets: dict | None = None):
    """Every (target name, target, its truth(), process name, process, the exact model) of the table
    (``targets``: name -> maker, by default TARGETS)."""
    for tname, make_target in (TARGETS if targets is None else targets).items():
        target = make_target()
        known = truth(target, n, seeds)
        for pname, make_process in PROCESSES.items():
            process = make_process()
            yield tname, target, known, pname, process, target.model(process)


def measure(model, process, target, entropy, true_sets, g, n, seeds, sampler, steps, options, teacher=None) -> dict:
    """nll_gaps, sws and walls over the seeds (seed s: prior draws and true set 2s); with
    ``teacher`` (its samples per seed) also the mean squared distance to them and the share of it
    that the 1 % of draws farthest from the teacher carry."""
    found = {"gaps": [], "sws": [], "walls": [], "dists": [], "top": [], "nfe": 0}
    for s in range(seeds):
        start = time.perf_counter()
        out = run(model, process, sampler=sampler, steps=steps, shape=(n, target.dim),
                  generator=torch.Generator().manual_seed(s), dtype=F64, **options)
        found["walls"].append(time.perf_counter() - start)
        found["nfe"] = out.nfe
        found["gaps"].append(-target.log_prob(out.samples).mean().item() - entropy)
        found["sws"].append(sliced_wasserstein(out.samples, true_sets[2 * s], generator=g))
        if teacher is not None:
            per_draw = ((out.samples - teacher[s]) ** 2).flatten(1).mean(1).sort(descending=True).values
            found["dists"].append(float(per_draw.mean()))
            found["top"].append(float(per_draw[:max(1, len(per_draw) // 100)].sum() / per_draw.sum()))
    return found


def teacher_samples(model, process, target, n: int, seeds: int) -> list:
    """learn_schedule's default teacher's samples from each eval seed's prior draws."""
    from genflow.samplers.learn import DEFAULT_TEACHER

    return [run(model, process, sampler=DEFAULT_TEACHER["sampler"], steps=DEFAULT_TEACHER["steps"],
                shape=(n, target.dim), generator=torch.Generator().manual_seed(s), dtype=F64).samples
            for s in range(seeds)]


def truth(target, n: int, seeds: int):
    """A target's entropy, true sets (two per seed), sliced-W2 floors and the SW generator."""
    big = target.sample(200_000, generator=torch.Generator().manual_seed(10**6))
    entropy = -target.log_prob(big).mean().item()
    true_sets = [target.sample(n, generator=torch.Generator().manual_seed(1000 + s)) for s in range(2 * seeds)]
    g = torch.Generator().manual_seed(7)
    floor = [sliced_wasserstein(true_sets[2 * s], true_sets[2 * s + 1], generator=g) for s in range(seeds)]
    return entropy, true_sets, floor, g


# Learned grids (samplers/learn.py): learned on one seed's draws, rows on the held-out eval seeds.
LEARNED_SAMPLERS, LEARNED_NFE, LEARN_SEED = ("dpmpp_2m", "ipndm", "unipc"), (5, 10), 10_000


def learned_table(n: int, seeds: int, draws: int, iterations: int) -> None:
    from genflow.samplers import SCHEDULES, learn_schedule

    print(f"\n## Learned schedules against the fixed ones: learned on {draws} draws (seed {LEARN_SEED}, "
          f"{iterations} evaluations at most), rows on n={n} held-out samples, {seeds} seeds, float64\n")
    print("| target | process | sampler | NFE | schedule | nll_gap (nats) | sw | floor | dist to teacher | learn (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tname, target, (entropy, true_sets, floor, g), pname, process, model in problems(n, seeds):
        teacher = teacher_samples(model, process, target, n, seeds)
        for sampler, nfe in [(a, b) for b in LEARNED_NFE for a in LEARNED_SAMPLERS]:
            start = time.perf_counter()
            learned = learn_schedule(model, process, sampler=sampler, nfe=nfe, shape=(target.dim,), draws=draws,
                                     seed=LEARN_SEED, iterations=iterations, dtype=F64, progress=False)
            took = time.perf_counter() - start
            for name in (*SCHEDULES, "learned"):
                options = {"sigmas": learned.sigmas} if name == "learned" else {"schedule": name}
                m = measure(model, process, target, entropy, true_sets, g, n, seeds, sampler, learned.steps,
                            options, teacher)
                print(f"| {tname} | {pname} | {sampler} | {m['nfe']} | {name} | {spread(m['gaps'])} | "
                      f"{spread(m['sws'])} | {spread(floor)} | {spread(m['dists'])} | "
                      f"{took if name == 'learned' else 0:.1f} |", flush=True)


def objective_table(n: int, seeds: int, draws: int, iterations: int, names: list[str]) -> None:
    """lms at 5, 10 and 20 NFE on grids learned by each of learn_schedule's objectives, beside logsnr
    and karras, on the project's problems and the held-out ones."""
    from genflow.samplers import learn_schedule
    from genflow.samplers.learn import OBJECTIVES

    print(f"\n## learn_schedule's objectives: lms, learned on {draws} draws (seed {LEARN_SEED}), rows on "
          f"n={n} held-out samples, {seeds} seeds, float64\n")
    print("| target | process | NFE | grid | nll_gap (nats) | sw | floor | dist to teacher | its share in the "
          "farthest 1 % | learn (s) |\n|---|---|---|---|---|---|---|---|---|---|")
    targets = {name: {**TARGETS, **HELD_OUT}[name] for name in names}
    for tname, target, (entropy, true_sets, floor, g), pname, process, model in problems(n, seeds, targets):
        teacher = teacher_samples(model, process, target, n, seeds)
        for nfe in (5, 10, 20):
            grids = {name: (nfe, {"schedule": name}, 0.0) for name in ("logsnr", "karras")}
            for objective in OBJECTIVES:
                start = time.perf_counter()
                learned = learn_schedule(model, process, sampler="lms", nfe=nfe, shape=(target.dim,), draws=draws,
                                         seed=LEARN_SEED, iterations=iterations, objective=objective, dtype=F64,
                                         progress=False)
                grids[f"learned {objective}"] = (learned.steps, {"sigmas": learned.sigmas}, time.perf_counter() - start)
            for name, (steps, options, took) in grids.items():
                m = measure(model, process, target, entropy, true_sets, g, n, seeds, "lms", steps, options, teacher)
                print(f"| {tname} | {pname} | {m['nfe']} | {name} | {spread(m['gaps'])} | {spread(m['sws'])} | "
                      f"{spread(floor)} | {spread(m['dists'])} | {spread(m['top'])} | {took:.1f} |", flush=True)


def overhead_table(repeats: int) -> None:
    torch.manual_seed(0)
    net = UNet(image_size=16, in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(8,)).eval()
    shape = (16, 1, 16, 16)
    x, t = torch.randn(shape), torch.full((16,), 500.0)

    def forwards(n: int) -> float:
        """n bare forwards under no_grad, as the samplers run them."""
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                net(x, t)
        return time.perf_counter() - start

    forwards(10)  # warm-up
    print(f"\n## Sampler overhead: small UNet ({sum(p.numel() for p in net.parameters()):,} params), "
          f"batch 16, 1x16x16, CPU, best of {repeats} alternating repeats\n")
    print("| sampler | process | steps | NFE | sampler wall (s) | NFE bare forwards (s) | ratio "
          "| sampler alone (us / NFE) | 1 + alone / forward |")
    print("|---|---|---|---|---|---|---|---|---|")
    ddpm, vp = DDPM(timesteps=1000), VPSDE()
    for sampler, process, steps, options in [("ddim", ddpm, 50, {}), ("ddpm", ddpm, 50, {}),
                                             ("euler_maruyama", vp, 50, {}), ("pc", vp, 25, {}),
                                             ("ode", vp, 25, {"method": "rk4"}), ("dpmpp_2m", vp, 50, {}),
                                             ("heun", vp, 25, {})]:
        walls, bare, alone = [], [], []
        for s in range(repeats):  # alternate the two measurements so drift hits both alike
            start = time.perf_counter()
            out = run(net, process, sampler=sampler, steps=steps, shape=shape,
                      generator=torch.Generator().manual_seed(s), **options)
            walls.append(time.perf_counter() - start)
            bare.append(forwards(out.nfe))
            start = time.perf_counter()  # the sampler alone: a model that costs nothing
            run(lambda x, t: x, process, sampler=sampler, steps=steps, shape=shape,
                generator=torch.Generator().manual_seed(s), **options)
            alone.append((time.perf_counter() - start) / out.nfe)
        wall, ref, own = min(walls), min(bare), min(alone)
        print(f"| {sampler} | {type(process).__name__} | {steps} | {out.nfe} | {wall:.3f} | {ref:.3f} "
              f"| {wall / ref:.3f} | {1e6 * own:.0f} | {1 + own * out.nfe / ref:.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer rows, 2 seeds, n=1000")
    parser.add_argument("--few-steps", action="store_true",
                        help="the few-step rows instead (5-20 NFE, final-step and 3M-weight settings; "
                             "no overhead table)")
    parser.add_argument("--basis", action="store_true",
                        help="lms basis=s against basis=log_s rows instead (5, 10, 20 NFE; no overhead table)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--only", nargs="+", default=None, metavar="SAMPLER",
                        help="quality rows of these samplers only (e.g. --only dpmpp_2m heun)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats for the overhead table")
    parser.add_argument("--learned", action="store_true",
                        help="only the learned-schedule table (learned grids against logsnr, karras, time)")
    parser.add_argument("--objectives", nargs="+", default=None, metavar="TARGET",
                        choices=(*TARGETS, *HELD_OUT),
                        help="only the table of learn_schedule's objectives (lms, 5/10/20 NFE) on these "
                             f"targets ({', '.join((*TARGETS, *HELD_OUT))})")
    parser.add_argument("--draws", type=int, default=256, help="draws a learned grid is fitted on")
    parser.add_argument("--iterations", type=int, default=300, help="objective evaluations per learned grid")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"genflow bench_samplers — torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if args.learned:
        learned_table(args.n, args.seeds, args.draws, args.iterations)
        return
    if args.objectives:
        objective_table(args.n, args.seeds, args.draws, args.iterations, args.objectives)
        return
    if not args.skip_quality:
        rows = BASIS_ROWS if args.basis else FEW_STEP_ROWS if args.few_steps else QUICK_ROWS if args.quick else ROWS
        rows = [r for r in rows if args.only is None or r[0] in args.only]
        if args.quick:
            quality_table(1000, 2, rows)
        else:
            quality_table(args.n, args.seeds, rows)
    if not (args.few_steps or args.basis):
        overhead_table(args.repeats)


if __name__ == "__main__":
    main()
