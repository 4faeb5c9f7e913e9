"""Sampler overhead per step beyond the network: genflow against diffusers' scheduler loops, one run.

Two nets, each driven by both libraries in the same process, interleaved repeat by repeat (best
of ``--repeats`` kept): a small UNet at batch 16 (1x16x16) and a tiny MLP at batch 4096 (2-D).
Per sampler pair (genflow ``ddim`` / diffusers ``DDIMScheduler``, ``dpmpp_2m`` /
``DPMSolverMultistepScheduler``, ``lms`` / ``DEISMultistepScheduler``, ``unipc`` /
``UniPCMultistepScheduler``, ``dpm_solver`` / ``DPMSolverSinglestepScheduler``, order 3 on both
sides for the last three), on DDPM(T=1000), 50 steps, from the same x_T:

  loop - net   (wall time of the sampling loop - NFE x one bare forward) / NFE
  alone        the loop's time per step with a network that costs nothing (x -> x): steadier

diffusers' loop is its pipelines' (``set_timesteps``, then ``step(model(x, t), t, x)``); genflow's
is ``genflow.samplers.run`` with the starting noise given. Timing needs a quiet machine: on a
shared one the loop - net column moves by more than the overhead itself.

A second table: the per-sample noise (``NoiseSource``) of the stochastic samplers at batch 4096
(2-D) and 256 x 3x32x32: a draw per step from a fresh source (``steps + 1`` draws, its generators
made included) against one plain ``torch.randn`` of the batch (which is not batch-independent),
and each sampler's time per step with a network that costs nothing.

    pip install --no-deps diffusers   # plus its small imports, see bench_peers.py
    python scripts/bench_overhead.py --repeats 7
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from genflow.nets import UNet
from genflow.processes import DDPM, VPSDE
from genflow.samplers import NoiseSource, run

STEPS = 50


def tiny_mlp() -> Callable:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                              torch.nn.Linear(64, 2)).eval()
    return lambda x, t: mlp(torch.cat([x, t.to(x)[:, None] / 1000], 1))


def small_unet() -> Callable:
    torch.manual_seed(0)
    return UNet(image_size=16, in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,)).eval()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def diffusers_loop(scheduler_cls, net, x_t: torch.Tensor, **options) -> int:
    """A diffusers pipeline's denoising loop; returns the NFE."""
    scheduler = scheduler_cls(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", **options)
    scheduler.set_timesteps(STEPS)
    x, batch = x_t * scheduler.init_noise_sigma, x_t.shape[0]
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t.expand(batch)), t, x).prev_sample
    return len(scheduler.timesteps)


def pairs():
    """(genflow sampler, its options, the diffusers scheduler of the same algorithm, its options)."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # DPMSolverSinglestep's note on its own lower_order_final
    return [("ddim", {"denoise": False}, diffusers.DDIMScheduler, {}),
            ("dpmpp_2m", {}, diffusers.DPMSolverMultistepScheduler, {}),
            ("lms", {}, diffusers.DEISMultistepScheduler, {"solver_order": 3}),  # lms in log s: DEIS's rho-AB
            ("unipc", {}, diffusers.UniPCMultistepScheduler, {"solver_order": 3}),
            ("dpm_solver", {}, diffusers.DPMSolverSinglestepScheduler, {"solver_order": 3})]


def table(repeats: int) -> None:
    process = DDPM(timesteps=1000)
    free = lambda x, t: x  # noqa: E731  (a network that costs nothing)
    print("| net | batch | genflow / diffusers | NFE | genflow loop - net (ms/step) | diffusers loop - net "
          "| genflow alone (ms/step) | diffusers alone |")
    print("|---|---|---|---|---|---|---|---|")
    for label, net, shape in (("small UNet", small_unet(), (16, 1, 16, 16)), ("tiny MLP", tiny_mlp(), (4096, 2))):
        x_t = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        t = torch.full((shape[0],), 500.0)
        for sampler, options, scheduler_cls, df_options in pairs():
            best = {key: float("inf") for key in ("gf", "df", "bare", "gf0", "df0")}
            nfe = {}
            for r in range(repeats):  # interleaved: drift hits every column alike
                gen = lambda: run(net, process, sampler=sampler, steps=STEPS, noise=x_t, **options)  # noqa: E731
                best["gf"] = min(best["gf"], timed(lambda: nfe.__setitem__("gf", gen().nfe)))
                best["df"] = min(best["df"], timed(lambda: nfe.__setitem__(
                    "df", diffusers_loop(scheduler_cls, net, x_t, **df_options))))
                best["bare"] = min(best["bare"], timed(lambda: net(x_t, t)))
                best["gf0"] = min(best["gf0"], timed(lambda: run(free, process, sampler=sampler, steps=STEPS, noise=x_t,
                                                                 **options)))
                best["df0"] = min(best["df0"], timed(lambda: diffusers_loop(scheduler_cls, free, x_t, **df_options)))
            over = {k: 1e3 * (best[k] - nfe[k] * best["bare"]) / nfe[k] for k in ("gf", "df")}
            alone = {k: 1e3 * best[k + "0"] / nfe[k] for k in ("gf", "df")}
            print(f"| {label} | {shape[0]} | {sampler} / {scheduler_cls.__name__} | {nfe['gf']} / {nfe['df']} "
                  f"| {over['gf']:.3f} | {over['df']:.3f} | {alone['gf']:.3f} | {alone['df']:.3f} |", flush=True)


def noise_table(repeats: int) -> None:
    print("\n| batch x example | per-sample draw (ms/step) | plain randn (ms/step) | ddpm alone | euler_maruyama alone "
          "| pc alone (ms/NFE) |")
    print("|---|---|---|---|---|---|")
    free = lambda x, t: x  # noqa: E731
    for shape in ((4096, 2), (256, 3, 32, 32)):
        best = {key: float("inf") for key in ("source", "plain", "ddpm", "euler_maruyama", "pc")}
        for r in range(repeats):
            def draws():
                source = NoiseSource(shape[0], r, torch.device("cpu"), torch.float32)
                for _ in range(STEPS + 1):
                    source.randn(shape[1:])

            best["source"] = min(best["source"], timed(draws) / (STEPS + 1))
            best["plain"] = min(best["plain"], timed(lambda: [torch.randn(shape) for _ in range(STEPS + 1)]) / (STEPS + 1))
            for sampler, process in (("ddpm", DDPM(timesteps=1000)), ("euler_maruyama", VPSDE()), ("pc", VPSDE())):
                steps = STEPS // 2 if sampler == "pc" else STEPS
                nfe = 2 * steps + 1 if sampler == "pc" else steps + (sampler != "ddpm")
                best[sampler] = min(best[sampler], timed(lambda: run(free, process, sampler=sampler, steps=steps,
                                                                     shape=shape)) / nfe)
        print(f"| {shape[0]} x {'x'.join(map(str, shape[1:]))} | " + " | ".join(f"{1e3 * best[k]:.3f}" for k in best) + " |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (best of each kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"genflow bench_overhead — torch {torch.__version__}, {args.threads} thread(s), "
          f"{STEPS} steps, DDPM(T=1000), best of {args.repeats}\n")
    table(args.repeats)
    noise_table(args.repeats)


if __name__ == "__main__":
    main()
