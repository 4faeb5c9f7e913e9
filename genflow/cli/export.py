"""genflow-export: a checkpoint's EMA weights as a safetensors file, the net/process config as metadata.

    genflow-export --ckpt RUN/checkpoints/last.pt --out model.safetensors
    genflow-sample --ckpt model.safetensors --sampler ddim --steps 50      # in place of the checkpoint

safetensors holds tensors and string metadata only: reading it runs no pickle. Exit status 2 for bad
input, 1 when the checkpoint cannot be used or OUT cannot be written (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

from genflow.cli import Parser, UsageError, guarded
from genflow.utils import check_writable_folder


def parser() -> Parser:
    p = Parser(prog="genflow-export", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, type=Path, help="a genflow checkpoint (e.g. RUN/checkpoints/last.pt)")
    p.add_argument("--out", required=True, type=Path, help="the file to write, ending in .safetensors")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    return p


def run(args) -> str:
    from genflow.export import SUFFIX, save_export
    from genflow.training.checkpoint import CheckpointError, load

    if args.out.suffix != SUFFIX:
        raise UsageError(f"--out must end in {SUFFIX} (genflow-sample and genflow-eval read such files without "
                         f"pickle); got {args.out}")
    check_writable_folder(args.out.parent, "--out's folder")
    state = load(args.ckpt)
    if "data_shape" not in state or (not args.no_ema and "ema" not in state):
        raise CheckpointError(f"{args.ckpt} lacks {'data_shape' if 'data_shape' not in state else 'EMA weights'}; "
                              "it was not written by genflow-train")
    count = save_export(state, args.out, ema=not args.no_ema)
    return f"wrote {args.out} ({count} tensors, {'raw' if args.no_ema else 'EMA'} weights of step {state['step']})"


def main(argv: list[str] | None = None) -> int:
    return guarded("genflow-export", lambda: f"genflow-export: {run(parser().parse_args(argv))}")


if __name__ == "__main__":
    sys.exit(main())
