"""genflow-sample: samples from a checkpoint, rebuilt from the config stored in it.

    genflow-sample --ckpt runs/digits-ddpm-unet/checkpoints/last.pt --sampler ddim --steps 50 --out samples/
    genflow-sample --ckpt ... --device cuda --precision bf16 --cuda-graph      # the GPU fast path

Writes OUT/grid.png (images) or OUT/points.png (2-D data), OUT/samples.npz and OUT/info.json.
A class-conditional checkpoint samples classes ``--class`` (default: sample i gets class i % num_classes)
with classifier-free guidance weight ``--guidance`` w (Ho & Salimans: (1 + w) cond - w uncond; 0 is
the conditional model; w > 0 runs each network evaluation on a doubled batch).
Exit status 2 for bad input (one line on stderr), 1 when a checkpoint cannot be used, --out cannot be
written or the samples are not finite (then nothing is written).
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

from genflow.accel import PRECISIONS
from genflow.cli import FailedRun, Parser, UsageError, check_device, check_seed, guarded
from genflow.utils import check_writable_folder

def sampler_options() -> dict:
    """Every option of the registered samplers: its first declaration and the samplers that take it."""
    from genflow.samplers import SAMPLERS

    found: dict = {}
    for name, cls in SAMPLERS.items():
        for key, spec in cls.options().items():
            found.setdefault(key, (spec, []))[1].append(name)
    return found


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    """One flag per sampler option, its help read off the option's declaration."""
    from genflow.samplers import allowed

    for key, (spec, takers) in sampler_options().items():
        doc, only = spec.metadata["doc"].replace("%", "%%"), f"(sampler {' or '.join(takers)} only)"
        if spec.metadata["kind"] is bool:
            flag = f"--no-{key}" if spec.default else f"--{key}"
            p.add_argument(flag.replace("_", "-"), dest=key, default=None,
                           action="store_false" if spec.default else "store_true",
                           help=f"sets {key} to {not spec.default} (default {spec.default}: {doc}) {only}")
        else:
            p.add_argument(f"--{key.replace('_', '-')}", type=spec.metadata["kind"], default=None,
                           help=f"{doc}; {allowed(spec)} {only}")


def parser() -> argparse.ArgumentParser:
    from genflow.samplers import SAMPLERS

    p = Parser(prog="genflow-sample", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, type=Path, help="a genflow checkpoint (e.g. RUN/checkpoints/last.pt)")
    p.add_argument("--sampler", default=None, help=f"{', '.join(SAMPLERS)} (default: the run's sampler config)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (dpm_solver: its NFE budget), >= 1; on DDPM at most its timesteps "
                        "(default: the run's sampler config, or another sampler's own default)")
    add_sampler_flags(p)
    p.add_argument("--num", type=int, default=64, help="number of samples, >= 1")
    p.add_argument("--batch-size", type=int, default=256,
                   help="samples per batch (fixed-step samplers: does not change the samples; an adaptive ODE "
                        "solver's steps depend on the batch at the level of its tolerance)")
    p.add_argument("--class", dest="classes", default=None,
                   help="class-conditional checkpoints: a class index, or a comma list cycled over the samples "
                        "(default: sample i gets class i %% num_classes)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight w >= 0: (1 + w) cond - w uncond (default 0: conditional)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the per-sample noise, >= 0 (sample i uses its own stream)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (a visible GPU)")
    p.add_argument("--out", type=Path, default=Path("samples"),
                   help="output folder for grid.png or points.png, samples.npz and info.json")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the network's autocast precision (the sampler's own arithmetic stays in fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (eager where it cannot)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (images)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the per-step network call in a CUDA graph (fixed-step samplers, --device cuda)")
    p.add_argument("--no-tf32", action="store_true", help="full-precision float32 matmuls on CUDA (TF32 is on)")
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
    settings.update({k: getattr(args, k) for k in sampler_options() if getattr(args, k) is not None})
    return {"name": name, **settings}


def class_settings(args, classes: int | None) -> tuple[list[int] | None, float]:
    """The classes cycled over the samples (None: unconditional) and the guidance weight."""
    if classes is None:
        if args.classes is not None or args.guidance is not None:
            raise UsageError("--class and --guidance need a class-conditional checkpoint (model.num_classes); "
                             "this one is unconditional")
        return None, 0.0
    from genflow.samplers.guidance import check_guidance

    guidance = 0.0 if args.guidance is None else args.guidance
    check_guidance(guidance, "--guidance")
    if args.classes is None:
        return list(range(classes)), guidance
    try:
        chosen = [int(c) for c in args.classes.split(",")]
    except ValueError:
        chosen = []
    if not chosen or any(not 0 <= c < classes for c in chosen):
        raise UsageError(f"--class takes class indices in [0, {classes}), one or a comma list (e.g. 3 or 0,2); "
                         f"got {args.classes!r}")
    return chosen, guidance


def strict_json(value):
    """``value`` with non-finite floats as strings ("inf"), which strict JSON readers accept."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def network(net: torch.nn.Module, args, algo):
    """The net with the fast-path flags applied (precision, channels-last, compile, CUDA graph)."""
    from genflow import accel, samplers

    if args.cuda_graph:
        samplers.check_graphable(algo, args.device)
    if torch.device(args.device).type == "cuda":
        accel.set_tf32(not args.no_tf32)
    net.requires_grad_(False)
    model = accel.fast_model(net, precision=args.precision, channels_last_format=args.channels_last,
                             compile=args.compile)
    return samplers.CUDAGraphModel(model) if args.cuda_graph else model


def run(args) -> Path:
    from torchvision.utils import save_image

    from genflow import samplers
    from genflow.cli import rebuild
    from genflow.data import render_points
    from genflow.samplers.guidance import null_condition
    from genflow.training.checkpoint import CheckpointError, load

    if args.num < 1 or args.batch_size < 1:
        raise UsageError("--num and --batch-size must be >= 1")
    check_seed(args.seed)
    check_device(args.device)
    check_writable_folder(args.out, "--out")  # before any work, not after all the sampling
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
    cfg = state["config"]
    classes = cfg["model"].get("num_classes")
    chosen, guidance = class_settings(args, classes)
    if guidance and not cfg.get("trainer", {}).get("cond_drop_prob"):
        print("genflow-sample: warning: guidance on a model trained with trainer.cond_drop_prob=0: its null "
              "class (the unconditional model) was never trained", file=sys.stderr)

    def class_labels(start: int, stop: int) -> torch.Tensor:  # the chosen classes cycled over samples start..stop-1
        return torch.tensor(chosen)[torch.arange(start, stop) % len(chosen)]

    labels = class_labels(0, args.num) if chosen else None
    model = network(net, args, algo)
    # A compiled or graphed net is specialised to its input shapes: with a fixed-step sampler the
    # last, partial batch is drawn at full size and cut (its samples are the same, up to rounding),
    # not compiled or captured again. An adaptive solver's steps depend on the whole batch: not padded.
    padded = (args.compile or args.cuda_graph) and algo.fixed_step
    fixed = min(args.batch_size, args.num) if padded else None
    start, batches, nfe, factor = time.perf_counter(), [], 0, 1
    for offset in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - offset)
        size = fixed or n
        cond = {"y": class_labels(offset, offset + size).to(args.device)} if chosen else {}
        result = samplers.run(model, process, sampler=settings["name"], steps=settings["steps"],
                              shape=(size, *shape), generator=torch.Generator().manual_seed(args.seed),
                              seed_offset=offset, device=args.device, progress=not args.no_progress,
                              cond=cond, guidance=guidance, **options,
                              # the null class of the checkpoint's config, named explicitly
                              uncond=null_condition(cond, classes) if guidance else None)
        batches.append(result.samples[:n].float().cpu())
        nfe, factor = result.nfe, result.forward_batch_factor
    wall = time.perf_counter() - start
    x = torch.cat(batches)
    bad = int((~torch.isfinite(x.reshape(len(x), -1)).all(1)).sum())
    if bad:
        raise FailedRun(f"{bad} of {len(x)} samples hold NaN or inf (sampler {settings['name']}, options "
                        f"{options or 'default'}); nothing written to {args.out}")
    args.out.mkdir(parents=True, exist_ok=True)
    if x.ndim == 4:
        picture = args.out / "grid.png"
        columns = len(chosen) if chosen and len(chosen) > 1 else max(1, int(math.sqrt(len(x))))  # a class per column
        save_image((x.clamp(-1, 1) + 1) / 2, picture, nrow=columns)
    else:
        picture = render_points(x.reshape(len(x), -1)[:, :2], args.out / "points.png")
    np.savez_compressed(args.out / "samples.npz", samples=x.numpy(), **({"labels": labels.numpy()} if chosen else {}))
    info = {"checkpoint": str(args.ckpt), "step": state["step"], "sampler": settings, "num": args.num,
            "seed": args.seed, "ema": not args.no_ema, "nfe_per_sample": nfe, "wall_s": round(wall, 3),
            "precision": args.precision, "compile": args.compile, "channels_last": args.channels_last,
            "cuda_graph": args.cuda_graph, "tf32": torch.device(args.device).type == "cuda" and not args.no_tf32}
    # classes cycle over the samples; each network evaluation ran forward_batch_factor rows per sample
    # (2 under guidance: the conditional and unconditional batches in one forward)
    info.update({"classes": chosen, "guidance": guidance, "forward_batch_factor": factor})
    info["sampler_options"] = algo.settings()  # every option as used, defaults included
    (args.out / "info.json").write_text(json.dumps(strict_json(info), indent=2, allow_nan=False) + "\n")
    return picture


def main(argv: list[str] | None = None) -> int:
    return guarded("genflow-sample", lambda: f"genflow-sample: wrote {run(parser().parse_args(argv))}")


if __name__ == "__main__":
    sys.exit(main())
