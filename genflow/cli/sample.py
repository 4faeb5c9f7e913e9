"""genflow-sample: samples from a checkpoint, rebuilt from the config stored in it.

    genflow-sample --ckpt runs/digits-ddpm-unet/checkpoints/last.pt --sampler ddim --steps 50 --out samples/

Writes OUT/grid.png (images) or OUT/points.png (2-D data), OUT/samples.npz and OUT/info.json.
Exit status 2 for bad input (one line on stderr), 1 when a checkpoint cannot be used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genflow.cli import Parser, UsageError, guarded

SAMPLER_FLAGS = {  # option: (type, what it does and its allowed values)
    "eta": (float, "DDIM noise, >= 0: 0 deterministic, 1 DDPM's posterior variance"),
    "spacing": (str, "time grid: leading, trailing, linspace or quadratic (continuous processes: linspace or "
                     "quadratic)"),
    "variance": (str, "ancestral step variance: beta_tilde (posterior) or beta"),
    "method": (str, "torchdiffeq method: dopri5, rk4, euler, ..."),
    "rtol": (float, "relative tolerance of an adaptive method"),
    "atol": (float, "absolute tolerance of an adaptive method"),
    "snr": (float, "Langevin corrector signal-to-noise ratio, > 0"),
    "corrector_steps": (int, "Langevin moves per step, >= 0"),
    "predictor": (str, "predictor step: reverse_diffusion or euler_maruyama"),
}


def parser() -> argparse.ArgumentParser:
    from dataclasses import fields

    from genflow.samplers import SAMPLERS

    p = Parser(prog="genflow-sample", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, type=Path, help="a genflow checkpoint (e.g. RUN/checkpoints/last.pt)")
    p.add_argument("--sampler", default=None, help=f"{', '.join(SAMPLERS)} (default: the run's sampler config)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps, >= 1; on DDPM at most its timesteps (default: the run's sampler config, "
                        "or another sampler's own default)")
    for flag, (kind, text) in SAMPLER_FLAGS.items():
        takers = [name for name, cls in SAMPLERS.items() if flag in {f.name for f in fields(cls)}]
        p.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=None,
                       help=f"{text} (sampler {' or '.join(takers)} only)")
    p.add_argument("--num", type=int, default=64, help="number of samples, >= 1")
    p.add_argument("--batch-size", type=int, default=256,
                   help="samples per batch (fixed-step samplers: does not change the samples; an adaptive ODE "
                        "solver's steps depend on the batch at the level of its tolerance)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample noise (sample i uses its own stream)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=Path("samples"),
                   help="output folder for grid.png or points.png, samples.npz and info.json")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def sampler_settings(args, stored: dict) -> dict:
    """The stored sampler config, or the chosen sampler's defaults, overridden by flags."""
    from genflow import samplers

    name = args.sampler or stored["name"]
    if name not in samplers.SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; valid names: {', '.join(samplers.SAMPLERS)}")
    settings = {k: v for k, v in stored.items() if k != "name"} if name == stored["name"] else {}
    settings.setdefault("steps", samplers.SAMPLERS[name].steps)  # the sampler's own default
    if args.steps is not None:
        settings["steps"] = args.steps
    settings.update({k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k) is not None})
    return {"name": name, **settings}


def run(args) -> Path:
    from torchvision.utils import save_image

    from genflow import samplers
    from genflow.cli import rebuild
    from genflow.data import render_points
    from genflow.training.checkpoint import CheckpointError, load

    if args.num < 1 or args.batch_size < 1:
        raise UsageError("--num and --batch-size must be >= 1")
    state = load(args.ckpt, map_location=args.device)
    process, net = rebuild(state, args.ckpt, ema=not args.no_ema, device=args.device)
    settings = sampler_settings(args, state["config"]["sampler"])
    options = {k: v for k, v in settings.items() if k not in ("name", "steps")}
    algo = samplers.make(settings["name"], settings["steps"], **options)
    algo.check(process)
    if "data_shape" not in state:
        raise CheckpointError(f"{args.ckpt} does not record the shape of its data (data_shape); it was not "
                              "written by genflow-train")
    shape = tuple(state["data_shape"])
    start, batches, nfe = time.perf_counter(), [], 0
    for offset in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - offset)
        result = samplers.run(net, process, sampler=settings["name"], steps=settings["steps"],
                              shape=(n, *shape), generator=torch.Generator().manual_seed(args.seed),
                              seed_offset=offset, device=args.device, progress=not args.no_progress, **options)
        batches.append(result.samples.float().cpu())
        nfe = result.nfe
    wall = time.perf_counter() - start
    x = torch.cat(batches)
    args.out.mkdir(parents=True, exist_ok=True)
    if x.ndim == 4:
        picture = args.out / "grid.png"
        save_image((x.clamp(-1, 1) + 1) / 2, picture, nrow=max(1, int(math.sqrt(len(x)))))
    else:
        picture = render_points(x.reshape(len(x), -1)[:, :2], args.out / "points.png")
    np.savez_compressed(args.out / "samples.npz", samples=x.numpy())
    info = {"checkpoint": str(args.ckpt), "step": state["step"], "sampler": settings, "num": args.num,
            "seed": args.seed, "ema": not args.no_ema, "nfe_per_sample": nfe, "wall_s": round(wall, 3)}
    (args.out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return picture


def main(argv: list[str] | None = None) -> int:
    return guarded("genflow-sample", lambda: f"genflow-sample: wrote {run(parser().parse_args(argv))}")


if __name__ == "__main__":
    sys.exit(main())
