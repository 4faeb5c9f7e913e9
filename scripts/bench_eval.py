"""Distributed sampling and FD at scale: genflow-sample's samples per second at world size 1 and 2
(CPU, Gloo, real torchrun) for DDIM-20 on the digits UNet, and the time of FD on 10,000 features.

The net is the default digits config (``unet_digits``, DDPM T = 1000) after ONE training step: its
weights are close to the random init, which costs the same per network evaluation as a trained one
(sampling speed does not depend on the weights). ``--ckpt`` reuses a checkpoint of that config.
Each world size runs the same command; a rank gets ``--threads`` / world CPU threads, so the rows
compare the same machine split over ranks. ``samples/s`` divides --num by rank 0's ``wall_s`` in
info.json (loading, drawing, the merge; not the interpreter's start), ``command s`` is the whole
launch. The samples of every world size are checked to be bit-identical.

    python scripts/bench_eval.py                        # 2,000 samples per world size, FD on 10,000 x 2048
    python scripts/bench_eval.py --quick                # 200 samples in batches of 50, FD on 10,000 x 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fd import bench_fd  # noqa: E402  (one copy of the FD timing)

ROOT = Path(__file__).resolve().parents[1]


def checkpoint(run_dir: Path) -> Path:
    from genflow.training import Trainer, compose

    cfg = compose([f"run_dir={run_dir}", "trainer.steps=1", "trainer.ckpt_every=1", "trainer.device=cpu",
                   "trainer.sample_every=0", "trainer.progress=false"])
    Trainer(cfg).fit()
    return run_dir / "checkpoints" / "last.pt"


def sample(ckpt: Path, out: Path, world: int, num: int, batch: int, threads: int) -> dict:
    """One genflow-sample run at ``world`` ranks; its info.json and the command's wall time."""
    flags = ["--ckpt", str(ckpt), "--out", str(out), "--sampler", "ddim", "--steps", "20", "--num-samples", str(num),
             "--batch-size", str(batch), "--device", "cpu", "--no-progress"]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"] if world > 1 else []
    per_rank = str(max(1, threads // world))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": per_rank, "MKL_NUM_THREADS": per_rank}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *launcher, "-m", "genflow.cli.sample", *flags], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"world {world} failed: {done.stderr[-2000:]}")
    info = json.loads((out / "info.json").read_text())
    return {**info, "command_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="a checkpoint of the default digits config")
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads in all, split over ranks")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--fd-dim", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="200 samples and FD on 256-D features")
    args = parser.parse_args()
    num, dim = (200, 256) if args.quick else (args.num, args.fd_dim)
    batch = 50 if args.quick else args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or checkpoint(Path(tmp) / "run")
        print(f"DDIM-20 on the digits UNet ({'1 training step' if args.ckpt is None else ckpt}), {num} samples, "
              f"batch {batch}, {args.threads} threads in all, torch {torch.__version__}")
        print("world | samples/s | sampling s | command s")
        first = None
        for world in args.worlds:
            out = Path(tmp) / f"w{world}"
            info = sample(ckpt, out, world, num, batch, args.threads)
            print(f"{world:5d} | {num / info['wall_s']:9.1f} | {info['wall_s']:10.2f} | {info['command_s']:9.2f}")
            x = np.load(out / "samples.npz")["samples"]
            first = x if first is None else first
            assert np.array_equal(x, first), f"world {world} drew other samples than world {args.worlds[0]}"
    print(f"Fréchet distance on 10,000 x {dim} features (scripts/bench_fd.py's phases, best of 1):")
    for phase, seconds in bench_fd(10_000, dim):
        print(f"  {phase}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
