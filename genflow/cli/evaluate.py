"""genflow-eval: numbers for a checkpoint, with how they were made.

    genflow-eval nll --ckpt RUN/checkpoints/last.pt [--split test] [--num 500] [--draws 1] [--exact]
    genflow-eval fd  --ckpt RUN/checkpoints/last.pt --samples OUT/samples.npz [--split test]
                     [--inception-weights pt_inception-2015-12-05-6726825d.pth]
    genflow-eval pr  --ckpt ... --samples ... [--k 3] [--inception-weights ...]
    genflow-eval sw  --ckpt ... --samples ...          (vector data)

``nll`` reports bits/dim for images (uniform dequantization) and nats for vectors; ``fd`` and
``pr`` compare samples (from genflow-sample) with a data split in a feature space: Inception-v3
pool features from a weights file you give (nothing is downloaded), else for the digits a small
classifier trained deterministically and cached, and for vector data the vectors themselves. The
split's statistics are cached (genflow.metrics.reference). Exit 2 for bad input, 1 for failures
(a non-finite result among them: never reported as a number).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from genflow.cli import FailedRun, Parser, UsageError, check_device, check_seed, guarded
from genflow.ode import ADAPTIVE_METHODS, check_solver


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="genflow-eval", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, text in [("nll", "bits/dim (images) or nats (vectors) on a data split"),
                       ("fd", "Fréchet distance between samples and a data split in a feature space"),
                       ("pr", "improved precision and recall (k-NN manifolds) in a feature space"),
                       ("sw", "sliced Wasserstein-2 between samples and a data split (vector data)")]:
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument("--ckpt", required=True, type=Path, help="a genflow checkpoint (its config names the data)")
        c.add_argument("--split", default="test", choices=["train", "test"], help="the data split (default: test)")
        c.add_argument("--num", type=int, default=None, help="examples of the split to use (default: all)")
        c.add_argument("--seed", type=int, default=0,
                       help="seed of the random draws, >= 0 (nll: dequantization and Hutchinson probes; "
                            "sw: directions)")
        if name == "nll":
            c.add_argument("--draws", type=int, default=1, help="dequantization draws per image")
            c.add_argument("--exact", action="store_true", help="exact trace instead of Hutchinson's estimate")
            c.add_argument("--method", default="dopri5",
                           help="torchdiffeq method: dopri5 (adaptive, the default), rk4, euler, ... (DDPM is "
                                "solved in a time without its kinks: dopri5 costs about what it costs on VP)")
            c.add_argument("--steps", type=int, default=100, help="steps of a fixed-grid method (rk4, euler, ...)")
            c.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of an adaptive method")
            c.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of an adaptive method")
            c.add_argument("--batch-size", type=int, default=500, help="examples per likelihood batch")
            c.add_argument("--device", default="cpu", help="cpu or cuda[:N] (a visible GPU)")
            c.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
            c.add_argument("--no-progress", action="store_true", help="no progress bar over the batches")
        else:
            c.add_argument("--samples", required=True, type=Path, help="samples.npz written by genflow-sample")
        if name in ("fd", "pr"):
            c.add_argument("--inception-weights", type=Path, default=None, metavar="PATH",
                           help="Inception-v3 weights for the features: torchvision's inception_v3_google-*.pth "
                                "or pytorch-fid's FID network pt_inception-2015-12-05-*.pth (never downloaded; "
                                "default: the digits classifier for the digits, raw vectors for vector data)")
            c.add_argument("--batch-size", type=int, default=50, help="images per forward pass of the feature net")
            c.add_argument("--device", default="cpu", help="device of the feature net (cpu or cuda[:N])")
        if name == "pr":
            c.add_argument("--k", type=int, default=3, help="the k-th neighbour sets each ball's radius")
    return p


def split_data(cfg: dict, split: str, num: int | None):
    """The checkpoint's data split and how many of its examples to use."""
    from genflow import data
    from genflow.training.checkpoint import CheckpointError

    try:
        built = data.build(cfg["data"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"the checkpoint's data config cannot be rebuilt: {err}") from None
    dataset = built.train if split == "train" else built.test
    if dataset is None:
        raise UsageError(f"data {cfg['data']['name']!r} has no {split} split")
    n = len(dataset) if num is None else min(num, len(dataset))
    if n < 2:
        raise UsageError("--num must be >= 2")
    return dataset, n


def split_tensors(cfg: dict, split: str, num: int | None) -> torch.Tensor:
    dataset, n = split_data(cfg, split, num)
    return torch.stack([dataset[i][0] for i in range(n)])


def nll(args, state: dict) -> dict:
    import genflow
    from genflow.cli import rebuild

    cfg = state["config"]
    process, net = rebuild(state, args.ckpt, ema=not args.no_ema, device=args.device)
    x = split_tensors(cfg, args.split, args.num).to(args.device)
    g = torch.Generator().manual_seed(args.seed)
    options = dict(exact_divergence=args.exact, method=args.method, rtol=args.rtol, atol=args.atol, generator=g,
                   steps=args.steps)
    values, nfe = [], []
    calls = [0]  # network evaluations, counted on the net itself
    hook = net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    for part in tqdm(x.split(args.batch_size), desc="nll", unit="batch", disable=args.no_progress):
        calls[0] = 0
        if part.ndim == 4:
            values.append(genflow.bits_per_dim(net, process, part, draws=args.draws, **options).cpu())
        else:
            values.append(-genflow.log_likelihood(net, process, part, **options).double().cpu())
        nfe.append(calls[0])
    hook.remove()
    v = torch.cat(values)
    bad = int((~torch.isfinite(v)).sum())
    if bad:
        raise FailedRun(f"the likelihood of {bad} of {len(v)} examples is not finite (method {args.method}, "
                        f"rtol {args.rtol}, atol {args.atol}, steps {args.steps})")
    unit = "bits/dim" if x.ndim == 4 else "nats"
    return {"metric": f"nll ({unit})", "value": v.mean().item(), "stderr": (v.std() / math.sqrt(len(v))).item(),
            "examples": len(v), "draws": args.draws if x.ndim == 4 else None,
            "trace": "exact" if args.exact else "hutchinson", "method": args.method, "rtol": args.rtol,
            "atol": args.atol, "steps": args.steps if args.method not in ADAPTIVE_METHODS else None,
            # network evaluations per integration (one batch), averaged over the batches
            "nfe": sum(nfe) / len(nfe), "batches": len(nfe)}


def feature_space(args, cfg: dict, images: bool):
    """Inception-v3 from --inception-weights, else the digits classifier, else raw vectors."""
    from genflow.metrics.reference import FeatureSpace

    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if args.inception_weights is not None:
        if not images:
            raise UsageError("--inception-weights is for image data; vector data is compared as raw vectors")
        from genflow.metrics.inception import inception_features

        net = inception_features(args.inception_weights, args.device)
        return FeatureSpace(f"inception-v3 pool features, {net.kind} weights", net.identity,
                            lambda x: net(x, args.batch_size))
    if cfg["data"]["name"] == "digits":
        from genflow.metrics.digits_features import digits_classifier, digits_features, digits_identity

        _, accuracy = digits_classifier()
        return FeatureSpace(f"digits classifier (test accuracy {accuracy:.3f})", digits_identity(), digits_features)
    if not images:
        return FeatureSpace("raw vectors", "raw vectors", lambda x: x.double())
    raise UsageError(f"no built-in feature space for data {cfg['data']['name']!r}; give --inception-weights PATH "
                     "(torchvision's inception_v3_google-*.pth or pytorch-fid's pt_inception-2015-12-05-*.pth)")


def compare(args, state: dict) -> dict:
    from genflow.metrics import frechet_distance_to_statistics, precision_recall, sliced_wasserstein
    from genflow.metrics.reference import reference

    cfg = state["config"]
    if not args.samples.is_file():
        raise UsageError(f"samples file not found: {args.samples}")
    fake = torch.from_numpy(np.load(args.samples)["samples"])
    bad = int((~torch.isfinite(fake.reshape(len(fake), -1)).all(1)).sum()) if fake.is_floating_point() else 0
    if bad:
        raise FailedRun(f"{bad} of {len(fake)} samples in {args.samples} hold NaN or inf; nothing to compare")
    dataset, n = split_data(cfg, args.split, args.num)
    shape = tuple(dataset[0][0].shape)
    if tuple(fake.shape[1:]) != shape:
        raise UsageError(f"samples have shape {tuple(fake.shape[1:])} but the data {shape}")
    if args.command == "sw":
        if len(shape) != 1:
            raise UsageError("sw is for vector data; use fd or pr for images")
        real = torch.stack([dataset[i][0] for i in range(n)])
        value = sliced_wasserstein(fake, real, generator=torch.Generator().manual_seed(args.seed))
        return {"metric": "sliced_wasserstein", "value": value, "samples": len(fake), "data": n}
    space = feature_space(args, cfg, images=len(shape) == 3)
    ref = reference(cfg["data"], args.split, n, lambda: torch.stack([dataset[i][0] for i in range(n)]), space,
                    need_features=args.command == "pr")
    f_fake = space.extract(fake)
    how = {"features": space.name, "feature_space": space.identity, "samples": len(fake), "data": n,
           "reference": ref.status, "reference_cache": str(ref.path)}
    if args.command == "fd":
        return {"metric": "frechet_distance", "value": frechet_distance_to_statistics(f_fake, ref.mu, ref.sigma), **how}
    precision, recall = precision_recall(ref.features, f_fake, k=args.k)
    return {"metric": "precision_recall", "precision": precision, "recall": recall, "k": args.k, **how}


def evaluate(argv: list[str] | None) -> str:
    from genflow.export import load_model_file as load  # a checkpoint or a genflow-export .safetensors file

    args = parser().parse_args(argv)
    check_seed(args.seed)
    if hasattr(args, "device"):
        check_device(args.device)
    if args.command == "nll":
        check_solver(args.method, rtol=args.rtol, atol=args.atol, steps=args.steps, prefix="--")
    state = load(args.ckpt)
    result = nll(args, state) if args.command == "nll" else compare(args, state)
    numbers = [v for v in result.values() if isinstance(v, float)]
    if not all(map(math.isfinite, numbers)):
        raise FailedRun(f"{args.command} is not finite: {json.dumps(result)}")
    return json.dumps({"split": args.split, **result}, allow_nan=False)


def main(argv: list[str] | None = None) -> int:
    return guarded("genflow-eval", lambda: evaluate(argv))


if __name__ == "__main__":
    sys.exit(main())
