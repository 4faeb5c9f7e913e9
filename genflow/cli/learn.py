"""genflow-learn-schedule: learns a sampler's time grid for a checkpoint (samplers/learn.py), data-free.

    genflow-learn-schedule --ckpt RUN/checkpoints/last.pt --sampler dpmpp_2m --nfe 5 --out dpmpp_2m-5.json
    genflow-sample --ckpt RUN/checkpoints/last.pt --sampler dpmpp_2m --steps 5 --schedule-file dpmpp_2m-5.json

Fits the grid so that the sampler's samples at --nfe evaluations match a many-step teacher's from the
same --draws prior draws (mean squared distance, or with --objective trimmed that over the 95% of
draws nearest the teacher), and writes it as JSON. The sampler's own options
(--order, --variant, ...) are those of genflow-sample; the grid options are what is learned.
Exit status 2 for bad input (one line on stderr), 1 when the checkpoint cannot be used or --out cannot
be written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from genflow.cli import Parser, UsageError, check_device, check_seed, guarded
from genflow.cli.sample import add_sampler_flags, sampler_options


def parser() -> Parser:
    from genflow.samplers.learn import DEFAULT_TEACHER, grid_samplers

    p = Parser(prog="genflow-learn-schedule", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, type=Path,
                   help="a genflow checkpoint (e.g. RUN/checkpoints/last.pt) or a genflow-export .safetensors file")
    p.add_argument("--out", required=True, type=Path, help="the schedule file to write (JSON)")
    p.add_argument("--sampler", default="dpmpp_2m", help=f"{', '.join(grid_samplers())} (default dpmpp_2m)")
    p.add_argument("--nfe", type=int, default=5, help="network evaluations per sample, >= 2 (default 5)")
    p.add_argument("--draws", type=int, default=256, help="prior draws to fit on, >= 1 (default 256)")
    p.add_argument("--objective", default="mse",
                   help="the distance to the teacher: mse (default) or trimmed (the mean over the 95%% of draws "
                        "nearest it: for data with many sharp modes)")
    p.add_argument("--iterations", type=int, default=300, help="objective evaluations at most, >= 0 (default 300)")
    p.add_argument("--teacher", default=DEFAULT_TEACHER["sampler"], help="the teacher's sampler (default dpmpp_2m)")
    p.add_argument("--teacher-steps", type=int, default=DEFAULT_TEACHER["steps"],
                   help=f"the teacher's steps, >= 1 (default {DEFAULT_TEACHER['steps']})")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws, >= 0")
    p.add_argument("--device", default="cpu",
                   help="cpu (the default: a few hundred draws of a few steps) or cuda[:N] (a visible GPU)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampler_flags(p)
    return p


def run(args) -> str:
    from genflow.cli import rebuild
    from genflow.samplers.learn import OBJECTIVES, learn_schedule
    from genflow.export import load_model_file as load  # a checkpoint or a genflow-export .safetensors file
    from genflow.training.checkpoint import CheckpointError
    from genflow.utils import check_choice, check_writable_folder

    check_seed(args.seed)
    check_device(args.device)
    check_choice(args.objective, tuple(OBJECTIVES), "--objective")  # before the checkpoint is read
    if args.teacher_steps < 1:
        raise UsageError(f"--teacher-steps must be >= 1; got {args.teacher_steps}")
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a file name (e.g. schedule.json)")
    check_writable_folder(args.out.parent, "the folder of --out")
    state = load(args.ckpt, map_location=args.device)
    process, net = rebuild(state, args.ckpt, ema=not args.no_ema, device=args.device)
    net.requires_grad_(False)
    if "data_shape" not in state:
        raise CheckpointError(f"{args.ckpt} does not record the shape of its data (data_shape); it was not "
                              "written by genflow-train")
    options = {k: getattr(args, k) for k in sampler_options() if getattr(args, k) is not None}
    learned = learn_schedule(net, process, sampler=args.sampler, nfe=args.nfe, shape=tuple(state["data_shape"]),
                             draws=args.draws, teacher={"sampler": args.teacher, "steps": args.teacher_steps},
                             seed=args.seed, iterations=args.iterations, objective=args.objective,
                             options=options, device=args.device,
                             progress=not args.no_progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    learned.save(args.out)
    o = learned.objective
    return (f"genflow-learn-schedule: wrote {args.out} ({learned.sampler}, {learned.steps} steps, {learned.nfe} NFE; "
            f"{o['kind']} distance to the teacher {o['before']:.4g} ({o['start']}) -> {o['after']:.4g})")


def main(argv: list[str] | None = None) -> int:
    return guarded("genflow-learn-schedule", lambda: run(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
