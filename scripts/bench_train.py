"""What the training engine costs: genflow's Trainer against a bare PyTorch loop on the CPU.

Same model (configs/model/unet_digits.yaml), data (digits), process (DDPM), optimizer (AdamW,
same lr) and global batch. The bare loop is zero_grad / loss / backward / step and nothing else;
the trainer adds its per-step draws, gradient clipping, the NaN guard, EMA, the progress bar and
JSON logging (checkpoints and sample grids are pushed past the measured steps). Each variant
runs in its own process, alternating, several times; throughput is taken over steady-state
windows (after warm-up), and peak memory is the process's maximum resident set size.

    python scripts/bench_train.py [--steps 200] [--repeats 3] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 20


def bare(steps: int, batch: int) -> float:
    """Steady-state steps per second of the plainest loop."""
    import torch
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from genflow import nets
    from genflow.data import digits
    from genflow.processes import DDPM

    torch.manual_seed(0)
    process = DDPM()
    net = nets.build(OmegaConf.load(Path(__file__).parents[1] / "configs/model/unet_digits.yaml"), process=process)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loader = DataLoader(digits("train"), batch_size=batch, shuffle=True, drop_last=True)
    done, start = 0, None
    while done < steps + WARMUP:
        for x, _ in loader:
            if done == WARMUP:
                start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            process.loss(net, x).backward()
            opt.step()
            done += 1
            if done == steps + WARMUP:
                break
    return steps / (time.perf_counter() - start)


def engine(steps: int, batch: int) -> float:
    """Steady-state steps per second of genflow's Trainer, from its own JSON-lines windows."""
    from genflow.training import Trainer, compose

    with tempfile.TemporaryDirectory() as run_dir:
        window = steps // 4
        cfg = compose([f"run_dir={run_dir}", f"trainer.steps={WARMUP + steps}", f"trainer.batch_size={batch}",
                       f"trainer.log_every={window}", "trainer.ckpt_every=1000000", "trainer.sample_every=0",
                       "trainer.device=cpu", "trainer.num_samples=1", "sampler.steps=1", f"trainer.warmup={WARMUP}"])
        trainer = Trainer(cfg)
        # Log windows start at step 0: skip the first (warm-up and start-up), keep full windows.
        trainer.fit()
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        rates = [r["examples_per_sec"] / batch for r in rows if "examples_per_sec" in r and r["step"] > window]
    return statistics.fmean(rates)


def child(variant: str, steps: int, batch: int) -> None:
    import torch

    torch.set_num_threads(torch.get_num_threads())
    rate = (bare if variant == "bare" else engine)(steps, batch)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "steps_per_sec": rate, "peak_rss_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["bare", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.batch)
        return
    results: dict[str, list[dict]] = {"bare": [], "trainer": []}
    for _ in range(args.repeats):
        for variant in results:
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                                  "--batch", str(args.batch)], capture_output=True, text=True, check=True)
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    print(f"genflow bench_train — torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
          f"unet_digits, DDPM, batch {args.batch}, {args.steps} timed steps after {WARMUP} warm-up, "
          f"{args.repeats} alternating repeats\n")
    print("| loop | steps / s (mean ± sd) | peak RSS (MiB) |")
    print("|---|---|---|")
    for variant, rows in results.items():
        rates = [r["steps_per_sec"] for r in rows]
        sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
        print(f"| {variant} | {statistics.fmean(rates):.2f} ± {sd:.2f} | {max(r['peak_rss_mib'] for r in rows):.0f} |")
    ratio = statistics.fmean(r["steps_per_sec"] for r in results["bare"]) / statistics.fmean(
        r["steps_per_sec"] for r in results["trainer"])
    print(f"\ntrainer overhead: {100 * (ratio - 1):+.1f}% time per step (goal: under 5%)")


if __name__ == "__main__":
    main()
