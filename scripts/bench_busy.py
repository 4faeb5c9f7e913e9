"""Training speed on a quiet and on a busy CPU, by thread count and OpenMP wait policy.

The cause of the slowdown on a loaded machine: OpenMP threads that spin-wait at every parallel
region's barrier for peers the kernel has descheduled. Each setting runs the bare training step
of ``scripts/bench_train.py`` (unet_digits, DDPM, AdamW) in its own process, since OpenMP reads
its environment once, when torch is imported; the settings are interleaved within each repeat,
first beside ``--burners`` CPU burners (``python -c "while True: pass"``), then without them.
Reported per setting: wall seconds per step and CPU seconds per step (user + system of the
process: spinning shows up as CPU time that does no work).

    python scripts/bench_busy.py [--steps 20] [--repeats 2] [--burners 3] [--loads busy,quiet]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time

# name -> (torch threads, or 0 for torch's default; environment set before torch is imported)
SETTINGS = {
    "default (2 threads, OpenMP default wait)": (0, {}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": (0, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 threads, GOMP_SPINCOUNT=10000": (0, {"GOMP_SPINCOUNT": "10000"}),
    "1 thread": (1, {}),
    "1 thread, OMP_WAIT_POLICY=PASSIVE": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
}
WARMUP = 2


def child(steps: int, batch: int, threads: int) -> None:
    """One setting: the bare step's wall and CPU seconds per step after a warm-up."""
    import torch
    from omegaconf import OmegaConf

    from genflow import nets
    from genflow.data import digits
    from genflow.processes import DDPM

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    process = DDPM()
    net = nets.build(OmegaConf.load(os.path.join(os.path.dirname(__file__), "../configs/model/unet_digits.yaml")),
                     process=process)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = digits("train").tensors[0][:batch]
    for i in range(WARMUP + steps):
        if i == WARMUP:
            wall, cpu = time.perf_counter(), _cpu()
        opt.zero_grad(set_to_none=True)
        process.loss(net, x).backward()
        opt.step()
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    print(json.dumps({"threads": torch.get_num_threads(), "wall_per_step": wall / steps, "cpu_per_step": cpu / steps}))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_setting(name: str, steps: int, batch: int) -> dict:
    threads, env = SETTINGS[name]
    out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps), "--batch", str(batch),
                          "--threads", str(threads)], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--burners", type=int, default=3)
    parser.add_argument("--loads", default="busy,quiet", help="which cases to run, in this order")
    parser.add_argument("--settings", default="", help="a comma list of setting numbers (from 0) to run; all by default")
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.batch, args.threads)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout still ends the burners (finally)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        os.environ.pop(key, None)  # each setting says its own
    chosen = [n for i, n in enumerate(SETTINGS) if not args.settings or str(i) in args.settings.split(",")]
    rows: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for load in args.loads.split(","):
            procs = burners(args.burners) if load == "busy" else []
            try:
                for name in chosen:
                    rows.setdefault((load, name), []).append(run_setting(name, args.steps, args.batch))
                    print(load, name, rows[load, name][-1], file=sys.stderr, flush=True)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    print(f"genflow bench_busy — {os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}), "
          f"load before start {os.getloadavg()[0]:.1f}; unet_digits DDPM step, batch {args.batch}, {args.steps} "
          f"timed steps after {WARMUP}; busy = {args.burners} burners; {args.repeats} interleaved repeats\n")
    print("| load | setting | wall s / step (mean, min-max) | CPU s / step |")
    print("|---|---|---|---|")
    for (load, name), got in rows.items():
        wall = [r["wall_per_step"] for r in got]
        cpu = statistics.fmean(r["cpu_per_step"] for r in got)
        print(f"| {load} | {name} | {statistics.fmean(wall):.3f} ({min(wall):.3f}-{max(wall):.3f}) | {cpu:.3f} |")


if __name__ == "__main__":
    main()
