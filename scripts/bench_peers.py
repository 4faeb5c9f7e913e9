"""Side by side with the peers: k-diffusion's and diffusers' samplers and genflow's on one exact denoiser.

The data are bench_samplers.py's exact Gaussian mixtures (ring-2d, mix-16d) under DDPM(T=1000)
and VPSDE; every sampler sees the same closed-form denoiser (genflow.testing.GaussianMixture)
and starts from the same x_T = sigma(t_max) z, so what differs is the solver and its grid alone.
Metrics as in bench_samplers.py: nll_gap (mean -log p_data minus the data entropy), sw (sliced
W2 to a fresh true set) and its floor, mean over seeds. "best" at a budget is the setting with
the smallest |nll_gap| among those whose sw is within 1.5x the floor (the issue's rule); the
summary's "paired" column is genflow's best minus the peer's best in |nll_gap| seed by seed (the same
x_T on both sides), mean ± sd over the seeds: the comparison's own noise, usually below either gap's
spread (not where a gap's seeds straddle 0). genflow's logsnr and
karras grids run twice, from EDM's 80 (the default) and over the whole path (``-full``), as the
peers' exp80/karras80 and exp/karras: both sides choose from the same grids.

Conventions (checked in tests/test_bench_peers.py):

  k-diffusion  D(x, sigma) with x = x_vp / alpha and sigma = s = sigma_vp / alpha (VP as a scaled
               VE, Karras et al. 2022, sec. 2): alpha = 1/sqrt(1 + s^2) on a VP path. Grids of s
               from s(t_max) (where x_T sits) down to s(t_min), then 0; ``karras``/``exp`` span
               the whole path, ``karras80``/``exp80`` jump from s(t_max) to EDM's 80 first (as
               genflow's grids do). dpm_fast steps uniformly in log s and stops at s(t_min).
  diffusers    an eps-model at integer timesteps n of a T = 1000 table of betas. DDPM: the same
               linear betas (diffusers keeps them in float32 and steps in float32). VPSDE: the
               betas whose alpha-bar is alpha(t_n)^2 at t_n = t_min + n (1 - t_min)/999, so its
               1000 levels lie on the continuous path; the oracle is evaluated at t_n.

Peers are for this benchmark only (``pip install genflow[bench]``, or into an existing venv
without touching torch: ``pip install --no-deps k-diffusion diffusers torchsde trampoline`` plus
diffusers' small imports: huggingface_hub and its httpx2/anyio/idna, regex, requests,
importlib_metadata). k-diffusion's package __init__ imports its training and evaluation code
(kornia, skimage, clip, wandb, ...): only ``k_diffusion/sampling.py`` (and its ``utils``) is
loaded, under a stub parent package (``load_k_sampling``).

    python scripts/bench_peers.py                         # n=2000, 3 seeds, NFE 5 6 8 10 15 20
    python scripts/bench_peers.py --n 1000 --seeds 1 --nfe 5 10 20   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import math
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from genflow.metrics import sliced_wasserstein
from genflow.processes import DDPM, VPSDE
from genflow.samplers import SAMPLERS, run
from genflow.samplers.solvers import scaled_sigma
from genflow.testing import GaussianMixture
from genflow.utils import append_dims

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_samplers import HELD_OUT, LEARN_SEED, TARGETS  # noqa: E402  (the same mixtures)

F64 = torch.float64
T = 1000
PROCESSES = {"ddpm-1000": lambda: DDPM(timesteps=T), "vpsde": lambda: VPSDE()}
#: genflow's deterministic few-step samplers; dpm_solver is picked up once it is registered
GENFLOW = ("dpmpp_2m", "dpmpp_3m", "lms", "ipndm", "unipc", "dpm_solver")
SCHEDULES = ("logsnr", "karras", "time")
FULL = ("logsnr", "karras")  # also over the path's whole range, as the peers' exp and karras


# ----------------------------------------------------------------- the peers' conventions
def load_k_sampling():
    """``k_diffusion.sampling`` without the package's __init__ (a stub parent); None if absent."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.origin is None:
        return None
    stub = types.ModuleType("k_diffusion")
    stub.__path__ = [str(Path(spec.origin).parent)]
    # a spec of its own, so that importlib.util.find_spec("k_diffusion") still answers once it is loaded
    stub.__spec__ = importlib.machinery.ModuleSpec("k_diffusion", None, is_package=True)
    stub.__spec__.submodule_search_locations = stub.__path__
    sys.modules["k_diffusion"] = stub
    return importlib.import_module("k_diffusion.sampling")


def vp_coefficients(s: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, sigma) of a VP path (alpha^2 + sigma^2 = 1) at the level s = sigma/alpha."""
    alpha = torch.rsqrt(1 + s**2)
    return alpha, s * alpha


def k_denoiser(target: GaussianMixture) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact D(x, sigma) in k-diffusion's variables: x_vp = alpha x, sigma_vp = alpha s."""

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        alpha, sig = vp_coefficients(sigma.to(F64).expand(x.shape[0]))
        return target.denoise_at(x * append_dims(alpha, x.ndim).to(x), alpha, sig).x0

    return denoise


def discrete_times(process) -> Tensor:
    """The process time of diffusers' timestep n = 0..T-1 (DDPM: n; VPSDE: t_n)."""
    n = torch.arange(T, dtype=F64)
    return n if process.discrete else process.t_min + n * (process.t_max - process.t_min) / (T - 1)


def discrete_betas(process) -> Tensor:
    """The betas whose alpha-bar is the process's alpha^2 at its diffusers timesteps."""
    abar = process.coefficients(discrete_times(process)).alpha ** 2
    return 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])


def eps_model(target: GaussianMixture, process) -> Callable[[Tensor, Tensor], Tensor]:
    """diffusers' eps-prediction model at integer timestep ``n``: the oracle at its process time."""
    times = discrete_times(process)

    def model(x: Tensor, n) -> Tensor:
        c = process.coefficients(times[int(n)].reshape(1).expand(x.shape[0]))
        return target.denoise_at(x, c.alpha, c.sigma).eps

    return model


# ----------------------------------------------------------------- one setting each
class Problem(NamedTuple):
    """One target under one process, and its exact network for genflow's samplers."""

    name: str
    target: GaussianMixture
    process: object
    model: Callable

    @classmethod
    def of(cls, name: str, target: GaussianMixture, process) -> Problem:
        return cls(name, target, process, target.model(process))


class Counted:
    """A callable that counts its calls (the NFE of a peer's loop)."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def k_sigmas(k, kind: str, nfe: int, process) -> Tensor:
    """A k-diffusion grid of ``nfe`` levels (then 0) from s(t_max), where x_T sits."""
    top, low = scaled_sigma(process, process.t_max), scaled_sigma(process, process.t_min)
    if kind.endswith("80"):  # a jump from s(t_max) to 80, as genflow's default grids
        make = k.get_sigmas_karras if kind.startswith("karras") else k.get_sigmas_exponential
        rest = make(nfe - 1, low, 80.0)
        return torch.cat([torch.tensor([top], dtype=F64), rest.to(F64)])
    return (k.get_sigmas_karras if kind == "karras" else k.get_sigmas_exponential)(nfe, low, top).to(F64)


def k_settings(k) -> dict[str, Callable]:
    """name -> (denoiser, x in VE variables, process, nfe) -> samples."""
    zero = lambda sigma, sigma_next: 0.0  # noqa: E731  (eta = 0: the SDE's noise is multiplied by 0)
    sets = {}
    for kind in ("karras", "exp", "karras80", "exp80"):
        sets[f"kd lms {kind}"] = lambda d, x, p, n, kind=kind: k.sample_lms(d, x, k_sigmas(k, kind, n, p), disable=True)
        sets[f"kd dpmpp_2m {kind}"] = lambda d, x, p, n, kind=kind: k.sample_dpmpp_2m(d, x, k_sigmas(k, kind, n, p),
                                                                                      disable=True)
        sets[f"kd dpmpp_3m_sde(eta 0) {kind}"] = lambda d, x, p, n, kind=kind: k.sample_dpmpp_3m_sde(
            d, x, k_sigmas(k, kind, n, p), eta=0.0, noise_sampler=zero, disable=True)
    sets["kd dpm_fast"] = lambda d, x, p, n: k.sample_dpm_fast(
        d, x, scaled_sigma(p, p.t_min), scaled_sigma(p, p.t_max), n, disable=True)
    return sets


def run_k(setting: Callable, problem: Problem, x_t: Tensor, nfe: int) -> tuple[Tensor, int]:
    process, d = problem.process, Counted(k_denoiser(problem.target))
    alpha_top = float(process.coefficients(torch.tensor([process.t_max], dtype=F64)).alpha)
    torch.set_default_dtype(F64)  # k-diffusion builds its grids (and dpm_fast its times) in the default dtype
    try:
        out = setting(d, x_t / alpha_top, process, nfe)
    finally:
        torch.set_default_dtype(torch.float32)
    return out, d.calls  # at s = 0 (dpm_fast: at s(t_min), x_vp = alpha x = x to 5e-5)


def diffusers_settings() -> dict[str, tuple[type, dict]]:
    import diffusers

    sets = {}
    for order in (2, 3):
        for name, extra in (("", {}), (" karras", {"use_karras_sigmas": True})):
            sets[f"df DPMSolverMultistep o{order}{name}"] = (diffusers.DPMSolverMultistepScheduler,
                                                             {"solver_order": order, **extra})
            sets[f"df UniPCMultistep o{order}{name}"] = (diffusers.UniPCMultistepScheduler,
                                                         {"solver_order": order, **extra})
            sets[f"df DEISMultistep o{order}{name}"] = (diffusers.DEISMultistepScheduler,
                                                        {"solver_order": order, **extra})
        sets[f"df DPMSolverMultistep o{order} lu_lambdas"] = (diffusers.DPMSolverMultistepScheduler,
                                                              {"solver_order": order, "use_lu_lambdas": True})
    return sets


def run_diffusers(setting: tuple[type, dict], problem: Problem, x_t: Tensor, nfe: int) -> tuple[Tensor, int]:
    (cls, options), process = setting, problem.process
    scheduler = cls(num_train_timesteps=T, trained_betas=discrete_betas(process).tolist(),
                    prediction_type="epsilon", **options)
    scheduler.set_timesteps(nfe)
    model = Counted(eps_model(problem.target, process))
    x = x_t * scheduler.init_noise_sigma
    for n in scheduler.timesteps:
        x = scheduler.step(model(x, n), n, x).prev_sample
    return x.to(F64), model.calls


def genflow_settings() -> dict[str, tuple[str, dict]]:
    """Each registered few-step sampler on each schedule (one default row for one without schedules);
    logsnr and karras also over the path's whole range (``-full``: from s(t_max), as the peers'
    ``exp`` and ``karras`` grids, beside their ``exp80`` and ``karras80``), so both sides choose
    from the same grids."""
    sets = {}
    for name in (s for s in GENFLOW if s in SAMPLERS):
        if "schedule" in {f.name for f in dataclasses.fields(SAMPLERS[name])}:
            sets.update({f"gf {name} {sch}": (name, {"schedule": sch}) for sch in SCHEDULES})
            sets.update({f"gf {name} {sch}-full": (name, {"schedule": sch, "full": True}) for sch in FULL})
        else:
            sets[f"gf {name}"] = (name, {})
    return sets


def run_genflow(setting: tuple[str, dict], problem: Problem, x_t: Tensor, nfe: int) -> tuple[Tensor, int]:
    sampler, options = setting[0], dict(setting[1])
    if options.pop("full", False):
        options["sigma_max"] = scaled_sigma(problem.process, problem.process.t_max)
    out = run(problem.model, problem.process, sampler=sampler, steps=nfe, noise=x_t, **options)
    return out.samples, out.nfe


def learned_settings(specs: list[str]) -> dict[str, tuple[str, str]]:
    """``--learned``: each ``SAMPLER`` or ``SAMPLER:OBJECTIVE`` on a grid learned for the problem and
    budget at hand (the objective ``mse`` unless named: ``gf lms learned``, ``gf lms learned-trimmed``)."""
    from genflow.samplers.learn import OBJECTIVES, grid_samplers

    sets = {}
    for spec in specs:
        name, _, objective = spec.partition(":")
        if name not in grid_samplers() or (objective and objective not in OBJECTIVES):
            raise SystemExit(f"--learned takes SAMPLER or SAMPLER:OBJECTIVE with a sampler among "
                             f"{', '.join(grid_samplers())} and an objective among {', '.join(OBJECTIVES)}; "
                             f"got {spec!r}")
        sets[f"gf {name} learned{f'-{objective}' if objective else ''}"] = (name, objective or "mse")
    return sets


def is_learned(label: str) -> bool:
    return label.startswith("gf ") and " learned" in label


LEARNED_GRIDS: dict[tuple, tuple] = {}  # (target, process, sampler, objective, nfe) -> (LearnedSchedule, seconds)


def run_learned(setting: tuple[str, str], problem: Problem, x_t: Tensor, nfe: int) -> tuple[Tensor, int]:
    """The sampler on a grid ``learn_schedule`` fitted for this model and budget, with its default
    settings, on draws of seed LEARN_SEED (not the eval seeds), once per problem and budget: data-free,
    from the model alone, as a user would learn one (genflow-learn-schedule)."""
    from genflow.samplers import learn_schedule

    sampler, objective = setting
    key = (problem.name, repr(problem.process), sampler, objective, nfe)
    if key not in LEARNED_GRIDS:
        start = time.perf_counter()
        grid = learn_schedule(problem.model, problem.process, sampler=sampler, nfe=nfe, shape=(problem.target.dim,),
                              seed=LEARN_SEED, objective=objective, dtype=F64, progress=False)
        LEARNED_GRIDS[key] = (grid, time.perf_counter() - start)
    learned = LEARNED_GRIDS[key][0]
    out = run(problem.model, problem.process, sampler=sampler, steps=learned.steps, noise=x_t, sigmas=learned.sigmas)
    return out.samples, out.nfe


# ----------------------------------------------------------------- the table
def spread(values: list[float], sign: str = "+") -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:{sign}.3f} ± {sd:.3f}"


def bench(n: int, seeds: int, budgets: list[int], only: str | None, learned: list[str]) -> list[dict]:
    k = load_k_sampling()
    try:
        peers = {**({f: (run_k, s) for f, s in k_settings(k).items()} if k else {}),
                 **{f: (run_diffusers, s) for f, s in diffusers_settings().items()}}
    except ImportError:
        peers = {f: (run_k, s) for f, s in k_settings(k).items()} if k else {}
    if not peers:
        print("neither k-diffusion nor diffusers is installed: genflow's rows alone (pip install genflow[bench])")
    settings = {**{f: (run_genflow, s) for f, s in genflow_settings().items()},
                **{f: (run_learned, s) for f, s in learned_settings(learned).items()}, **peers}
    rows = []
    print("| target | process | NFE | setting | nll_gap | sw | floor |\n|---|---|---|---|---|---|---|")
    for tname, make_target in ({only: {**TARGETS, **HELD_OUT}[only]} if only else TARGETS).items():
        target = make_target()
        big = target.sample(200_000, generator=torch.Generator().manual_seed(10**6))
        entropy = -target.log_prob(big).mean().item()
        true_sets = [target.sample(n, generator=torch.Generator().manual_seed(1000 + s)) for s in range(2 * seeds)]
        g = torch.Generator().manual_seed(7)
        floor = statistics.fmean(sliced_wasserstein(true_sets[2 * s], true_sets[2 * s + 1], generator=g)
                                 for s in range(seeds))
        for pname, make_process in PROCESSES.items():
            process = make_process()
            problem = Problem.of(tname, target, process)
            starts = [process.prior_std() * torch.randn(n, target.dim, generator=torch.Generator().manual_seed(s),
                                                         dtype=F64) for s in range(seeds)]
            for nfe in budgets:
                for label, (runner, setting) in settings.items():
                    gaps, sws, used = [], [], 0
                    try:
                        for s in range(seeds):
                            out, used = runner(setting, problem, starts[s].clone(), nfe)
                            gaps.append(-target.log_prob(out).mean().item() - entropy)
                            sws.append(sliced_wasserstein(out, true_sets[2 * s], generator=g))
                    except (ValueError, RuntimeError) as err:  # a setting that refuses this budget
                        print(f"<!-- {tname} {pname} {nfe} {label}: {str(err).splitlines()[0][:120]} -->")
                        continue
                    if not all(math.isfinite(v) for v in gaps + sws):
                        continue
                    row = dict(target=tname, process=pname, nfe=nfe, used=used, setting=label,
                               gap=statistics.fmean(gaps), gaps=gaps, sw=statistics.fmean(sws), floor=floor,
                               text=(spread(gaps), spread(sws, "")))
                    rows.append(row)
                    print(f"| {tname} | {pname} | {nfe}{'' if used == nfe else f' ({used})'} | {label} "
                          f"| {row['text'][0]} | {row['text'][1]} | {floor:.3f} |", flush=True)
    return rows


def best(rows: list[dict], peer: bool, learned: bool = True) -> dict | None:
    """The smallest |nll_gap| among the rows whose sw is within 1.5x the floor (NFE within budget);
    genflow's with or without its learned grids."""
    ok = [r for r in rows if r["setting"].startswith(("kd", "df")) == peer and r["sw"] <= 1.5 * r["floor"]
          and r["used"] <= r["nfe"] and (learned or not is_learned(r["setting"]))]
    return min(ok, key=lambda r: abs(r["gap"])) if ok else None


def summary(rows: list[dict], budgets: list[int]) -> None:
    """Best per budget: genflow on its fixed grids, and (with ``--learned`` rows) with its learned
    grids too, against the best peer setting."""
    learned = any(is_learned(r["setting"]) for r in rows)
    print("\n## Best at each budget (|nll_gap| among settings with sw <= 1.5 x floor)\n")
    cols = ["genflow best (fixed grids)", "gap / sw"] + ["genflow best (learned grids too)", "gap / sw"] * learned
    cols += ["peer best", "gap / sw", "genflow wins", "paired gf - peer (abs gap)"]
    cols += ["wins with learned grids", "paired, learned grids too"] * learned
    print(f"| target | process | NFE | {' | '.join(cols)} |\n|{'---|' * (3 + len(cols))}")
    names = [*TARGETS, *HELD_OUT]
    keys = sorted({(r["target"], r["process"]) for r in rows}, key=lambda k: (names.index(k[0]), k[1]))

    def cell(r: dict | None) -> list[str]:
        return ["none", "-"] if r is None else [r["setting"], f"{r['gap']:+.3f} / {r['sw']:.3f}"]

    def wins(g: dict | None, p: dict | None) -> str:
        return "-" if g is None or p is None else ("yes" if abs(g["gap"]) <= abs(p["gap"]) else "no")

    def paired(g: dict | None, p: dict | None) -> str:
        """Per seed (the same x_T on both sides) |gap| of genflow's best minus the peer's, mean ±
        sd: the comparison's own noise, usually below either gap's spread."""
        if g is None or p is None:
            return "-"
        return spread([abs(a) - abs(b) for a, b in zip(g["gaps"], p["gaps"], strict=True)])

    for tname, pname in keys:
        for nfe in budgets:
            mine = [r for r in rows if (r["target"], r["process"], r["nfe"]) == (tname, pname, nfe)]
            fixed, every, peer = best(mine, False, learned=False), best(mine, False), best(mine, True)
            line = cell(fixed) + cell(every) * learned + cell(peer) + [wins(fixed, peer), paired(fixed, peer)]
            line += [wins(every, peer), paired(every, peer)] * learned
            print(f"| {tname} | {pname} | {nfe} | {' | '.join(line)} |")
    for (tname, process, sampler, objective, nfe), (grid, took) in LEARNED_GRIDS.items():
        print(f"<!-- learned {sampler} ({objective}) {nfe} NFE, {tname}, {process}: sigmas {[round(v, 4) for v in grid.sigmas]}, "
              f"{took:.1f} s -->")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 6, 8, 10, 15, 20], help="NFE budgets")
    parser.add_argument("--only", choices=(*TARGETS, *HELD_OUT), default=None,
                        help="one target only (the held-out ones, never used to choose a default, by name only)")
    parser.add_argument("--learned", nargs="*", default=[], metavar="SAMPLER",
                        help="also these genflow samplers on grids learned for each problem and budget "
                             "(learn_schedule's defaults, draws of another seed; SAMPLER:OBJECTIVE for another "
                             "objective; e.g. --learned lms lms:trimmed ipndm)")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"genflow bench_peers — torch {torch.__version__}, n={args.n}, {args.seeds} seeds, float64 oracle\n")
    rows = bench(args.n, args.seeds, args.nfe, args.only, args.learned)
    summary(rows, args.nfe)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
