"""genflow-sample: samples from a checkpoint (or a genflow-export file), rebuilt from the config stored in it.

    genflow-sample --ckpt runs/digits-ddpm-unet/checkpoints/last.pt --sampler ddim --steps 50 --out samples/
    genflow-sample --ckpt ... --device cuda --precision bf16 --cuda-graph      # the GPU fast path
    torchrun --nproc_per_node=8 -m genflow.cli.sample --ckpt ... --num 50000 --png-dir samples/png

Writes OUT/grid.png (images) or OUT/points.png (2-D data), OUT/samples.npz and OUT/info.json.
Sample i's noise depends only on (--seed, i) and the shards (--shard-size samples each) only on the
flags, so any world size gives the same samples; each rank draws its share of the missing shards into
OUT/shards/, rank 0 merges them, and a rerun of the same command reuses the complete shards.
A class-conditional checkpoint samples classes ``--class`` (default: sample i gets class i % num_classes)
with classifier-free guidance weight ``--guidance`` w (Ho & Salimans: (1 + w) cond - w uncond; 0 is
the conditional model; w > 0 runs each network evaluation on a doubled batch).
Exit status 2 for bad input (one line on stderr), 1 when a checkpoint cannot be used, --out cannot be
written or the samples are not finite (then no shard of theirs is written); under torchrun every rank
exits so when one fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from genflow.accel import PRECISIONS
from genflow.cli import FailedRun, Parser, UsageError, check_device, check_seed, guarded, rank_device
from genflow.utils import check_writable_folder, sha256_of, strict_json, write_atomically

if TYPE_CHECKING:
    from genflow.generate import Drawn, Generated, Plan, Recipe

GRID_SAMPLES, POINTS_SHOWN = 64, 10_000  # grid.png shows the first 64 images; points.png the first 10,000 points

def sampler_options() -> dict:
    """Every option of the registered samplers: its declarations, one per sampler that takes it."""
    from genflow.samplers import SAMPLERS

    found: dict = {}
    for name, cls in SAMPLERS.items():
        for key, spec in cls.options().items():
            found.setdefault(key, {})[name] = spec
    return found


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    """One flag per sampler option, its help read off the options' declarations (what each sampler
    allows, where they differ; a boolean whose default differs between samplers gets both
    --key and --no-key)."""
    from genflow.samplers import allowed

    for key, specs in sampler_options().items():
        first = next(iter(specs.values()))
        doc, only = first.metadata["doc"].replace("%", "%%"), f"(sampler {' or '.join(specs)} only)"
        if first.metadata["kind"] is bool:
            defaults = {spec.default for spec in specs.values()}
            if len(defaults) > 1:
                on = ", ".join(f"{name} {spec.default}" for name, spec in specs.items())
                p.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None,
                               action=argparse.BooleanOptionalAction, help=f"{doc} (default: {on}) {only}")
            else:
                flag = f"--no-{key}" if first.default else f"--{key}"
                p.add_argument(flag.replace("_", "-"), dest=key, default=None,
                               action="store_false" if first.default else "store_true",
                               help=f"sets {key} to {not first.default} (default {first.default}: {doc}) {only}")
        else:
            rules = {name: allowed(spec) for name, spec in specs.items()}
            takes = (next(iter(rules.values())) if len(set(rules.values())) == 1 else
                     "; ".join(f"{name}: {rule}" for name, rule in rules.items()))
            p.add_argument(f"--{key.replace('_', '-')}", type=first.metadata["kind"], default=None,
                           help=f"{doc}; {takes.replace('%', '%%')} {only}")


def parser() -> argparse.ArgumentParser:
    from genflow.samplers import SAMPLERS

    p = Parser(prog="genflow-sample", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, type=Path,
                   help="a genflow checkpoint (e.g. RUN/checkpoints/last.pt) or a genflow-export .safetensors file")
    p.add_argument("--sampler", default=None, help=f"{', '.join(SAMPLERS)} (default: the run's sampler config)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (dpm_solver: its NFE budget), >= 1; on DDPM at most its timesteps "
                        "(default: the run's sampler config, or another sampler's own default)")
    add_sampler_flags(p)
    p.add_argument("--num", "--num-samples", dest="num", type=int, default=64,
                   help="number of samples, >= 1 (under torchrun write --num-samples: torchrun's own parser "
                        "takes --num for an abbreviation of its --numa-binding)")
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
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when a GPU is visible, else the CPU), cpu, cuda (under torchrun each rank takes "
                        "cuda:LOCAL_RANK) or cuda:N (one process only)")
    p.add_argument("--out", type=Path, default=Path("samples"),
                   help="output folder for grid.png (the first 64 images) or points.png, samples.npz, info.json "
                        "and shards/ (what a rerun with the same flags reuses)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="samples per shard file OUT/shards/shard-START-STOP.npz, >= 1 (default: whole batches, 1 "
                        "to 10, as many as leave about 64 shards); the ranks share the shards; a rerun draws only "
                        "the shards that are missing, damaged or of other settings")
    p.add_argument("--png-dir", type=Path, default=None,
                   help="also one 8-bit PNG per sample, DIR/000123.png by its index (EDM's rounding; the layout "
                        "EDM, pytorch-fid and clean-fid read); images only")
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


def network(net: torch.nn.Module, args, algo, device: str):
    """The net with the fast-path flags applied (precision, channels-last, compile, CUDA graph)."""
    from genflow import accel, samplers

    if args.cuda_graph:
        samplers.check_graphable(algo, device)
    if torch.device(device).type == "cuda":
        accel.set_tf32(not args.no_tf32)
    net.requires_grad_(False)
    model = accel.fast_model(net, precision=args.precision, channels_last_format=args.channels_last,
                             compile=args.compile)
    return samplers.CUDAGraphModel(model) if args.cuda_graph else model


def check_args(args) -> None:
    """Everything about the flags alone, before any process group or work."""
    if args.num < 1 or args.batch_size < 1:
        raise UsageError("--num and --batch-size must be >= 1")
    if args.shard_size is not None and args.shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1; got {args.shard_size}")
    check_seed(args.seed)
    if args.device != "auto":
        check_device(args.device)
    check_writable_folder(args.out, "--out")  # before any work, not after all the sampling
    if args.png_dir is not None:
        check_writable_folder(args.png_dir, "--png-dir")


@dataclass(frozen=True)
class Job:
    """What every rank knows before drawing: the recipe, the shard plan, and what info.json records."""

    recipe: Recipe
    plan: Plan
    info: dict
    classes: list[int] | None


def prepare(args, device: str, main: bool) -> Job:
    """Load the checkpoint (or exported file), rebuild net and process, and settle every setting."""
    from genflow import samplers
    from genflow.cli import rebuild
    from genflow.export import load_model_file
    from genflow.generate import Plan, Recipe, default_shard_size
    from genflow.training.checkpoint import CheckpointError

    state = load_model_file(args.ckpt, map_location=device)
    process, net = rebuild(state, args.ckpt, ema=not args.no_ema, device=device)
    settings = sampler_settings(args, state["config"]["sampler"])
    options = {k: v for k, v in settings.items() if k not in ("name", "steps")}
    algo = samplers.make(settings["name"], settings["steps"], **options)
    algo.check(process)
    if "data_shape" not in state:
        raise CheckpointError(f"{args.ckpt} does not record the shape of its data (data_shape); it was not "
                              "written by genflow-train")
    shape = tuple(state["data_shape"])
    if args.png_dir is not None and (len(shape) != 3 or shape[0] not in (1, 3)):
        raise UsageError(f"--png-dir needs images of 1 or 3 channels (C, H, W); this model's samples have shape "
                         f"{shape}")
    cfg = state["config"]
    classes = cfg["model"].get("num_classes")
    chosen, guidance = class_settings(args, classes)
    if guidance and not cfg.get("trainer", {}).get("cond_drop_prob") and main:
        print("genflow-sample: warning: guidance on a model trained with trainer.cond_drop_prob=0: its null "
              "class (the unconditional model) was never trained", file=sys.stderr)
    model = network(net, args, algo, device)
    # A compiled or graphed net is specialised to its input shapes: with a fixed-step sampler a partial
    # batch is drawn at full size and cut (its samples are the same, up to rounding), not compiled or
    # captured again. An adaptive solver's steps depend on the whole batch: not padded.
    padded = (args.compile or args.cuda_graph) and algo.fixed_step
    recipe = Recipe(model, process, settings["name"], settings["steps"], shape, options=options, seed=args.seed,
                    classes=tuple(chosen) if chosen else None, num_classes=classes, guidance=guidance,
                    batch_size=args.batch_size, pad_to=min(args.batch_size, args.num) if padded else None,
                    device=device, progress=main and not args.no_progress)
    info = {"checkpoint": str(args.ckpt), "step": state["step"], "sampler": settings, "num": args.num,
            "seed": args.seed, "ema": not args.no_ema, "precision": args.precision, "compile": args.compile,
            "channels_last": args.channels_last, "cuda_graph": args.cuda_graph,
            "tf32": torch.device(device).type == "cuda" and not args.no_tf32,
            "classes": chosen, "guidance": guidance, "sampler_options": algo.settings(),
            "batch_size": args.batch_size, "device_type": torch.device(device).type}
    if options.get("schedule_file") is not None:  # the grid is the file's content, not its name
        info["schedule_file_sha256"] = sha256_of(options["schedule_file"])
    key = settings_key(args.ckpt, info, shape, recipe.pad_to)
    shard_size = args.shard_size or default_shard_size(args.num, args.batch_size)
    plan = Plan(args.out / "shards", args.num, shard_size, key, png_dir=args.png_dir)
    return Job(recipe, plan, {**info, "shard_size": shard_size, "settings_key": key}, chosen)


def settings_key(path: Path, info: dict, shape: tuple, pad_to: int | None) -> str:
    """The key every shard stores: a hash of what changes a sample's value (the file's bytes, every
    setting in ``info`` but the paths and --num, the shape, the padding, torch's version); not the
    world size or the device index."""
    what = {**{k: v for k, v in info.items() if k not in ("checkpoint", "step", "num")}, "shape": list(shape),
            "padded_to": pad_to, "file_sha256": sha256_of(path), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(strict_json(what), sort_keys=True).encode()).hexdigest()[:32]


def write_outputs(args, job: Job, merged: Drawn, generated: Generated, world: int, wall: float) -> Path:
    """Rank 0, after every shard is written: OUT/samples.npz, OUT/info.json and the picture."""
    from torchvision.utils import save_image

    from genflow.data import render_points

    x = merged.samples
    if len(x) != args.num:
        raise FailedRun(f"the shards hold {len(x)} samples, not --num {args.num}")
    if x.ndim == 4:
        picture, shown = args.out / "grid.png", x[:GRID_SAMPLES]
        chosen = job.classes  # a class per column
        columns = len(chosen) if chosen and len(chosen) > 1 else max(1, int(math.sqrt(len(shown))))
        save_image((shown.clamp(-1, 1) + 1) / 2, picture, nrow=columns)
    else:
        shown = x[:POINTS_SHOWN]
        picture = render_points(shown.reshape(len(shown), -1)[:, :2], args.out / "points.png")
    arrays = {"samples": x.numpy(), **({"labels": merged.labels.numpy()} if merged.labels is not None else {})}
    write_atomically(args.out / "samples.npz", lambda f: np.savez_compressed(f, **arrays))
    info = {**job.info, "nfe_per_sample": merged.nfe, "wall_s": round(wall, 3),
            # each network evaluation ran forward_batch_factor rows per sample (2 under guidance)
            "forward_batch_factor": merged.forward_batch_factor, "world_size": world,
            "shards": [[r.start, r.stop] for r in job.plan.ranges], "shards_reused": generated.reused,
            "shards_drawn": generated.drawn, "png_dir": None if args.png_dir is None else str(args.png_dir),
            "png_rounding": None if args.png_dir is None else job.plan.png_rounding}
    text = json.dumps(strict_json(info), indent=2, allow_nan=False) + "\n"
    write_atomically(args.out / "info.json", lambda f: f.write(text.encode()))
    return picture


def sample_all(args, dist) -> Path | None:
    """Every rank of ``dist`` (``distributed.setup``): its share of the missing shards; rank 0 then
    merges them and returns the picture's path. Each phase ends in an agreement (``distributed.agree``),
    so a failure on one rank fails every rank and none hangs. Callable in-process (genflow-eval fid):
    ``sample_all(parser().parse_args([...]), dist)`` leaves the process group as it found it."""
    from genflow.generate import generate, merge
    from genflow.training import distributed

    device = rank_device(args.device, dist)
    start = time.perf_counter()
    job = distributed.agree(lambda: prepare(args, device, dist.main))
    generated = generate(job.recipe, job.plan, rank=dist.rank, world=dist.world)
    return distributed.agree(lambda: write_outputs(args, job, merge(job.plan), generated, dist.world,
                                                   time.perf_counter() - start) if dist.main else None)


def run(args) -> str:
    from genflow.training import distributed

    check_args(args)
    dist = distributed.setup("auto" if args.device == "auto" else args.device.split(":")[0])
    finished = False
    try:
        picture = sample_all(args, dist)
        finished = True
    finally:  # after an error leave at once: the peers may never reach the last barrier
        distributed.cleanup(wait=finished)
    return f"wrote {picture}" if dist.main else f"rank {dist.rank}: done"


def main(argv: list[str] | None = None) -> int:
    return guarded("genflow-sample", lambda: f"genflow-sample: {run(parser().parse_args(argv))}")


if __name__ == "__main__":
    sys.exit(main())
