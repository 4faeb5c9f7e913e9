"""genflow-eval: numbers for a checkpoint, with how they were made.

    genflow-eval nll --ckpt RUN/checkpoints/last.pt [--split test] [--num 500] [--draws 1] [--exact]
    genflow-eval fd  --ckpt RUN/checkpoints/last.pt --samples OUT/samples.npz|PNG_DIR|ADM.npz [--split train]
                     [--inception-weights pt_inception-2015-12-05-6726825d.pth] [--ref REF.npz]
    genflow-eval pr  --ckpt ... --samples ... [--k 3] [--inception-weights ...]
    genflow-eval sw  --ckpt ... --samples ...          (vector data)
    genflow-eval fid --ckpt ... --sampler ddim --steps 100 --num 50000 --inception-weights PATH [--out DIR]
                     (draws the samples as genflow-sample does, then fd; its other flags are genflow-sample's)
    torchrun --nproc_per_node=N -m genflow.cli.evaluate fd|pr|nll ...   (the same numbers, the work split)

``nll`` reports bits/dim for images (uniform dequantization) and nats for vectors; ``fd`` and
``pr`` compare samples (genflow-sample's, or any tool's PNGs or ADM npz) with a data split (the
training split by default, as papers do) or a reference file in a feature space: Inception-v3
pool features from a weights file you give (nothing is downloaded) through the FID protocol of
genflow.metrics.fid, else for the digits a small classifier trained deterministically and cached,
and for vector data the vectors themselves. The split's statistics are cached
(genflow.metrics.reference). Under torchrun every rank takes its share of the images or examples,
rank 0 prints the JSON. Exit 2 for bad input, 1 for failures (a non-finite result among them:
never reported as a number), on every rank.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from genflow.cli import FailedRun, Parser, UsageError, check_device, check_seed, guarded, rank_device
from genflow.ode import ADAPTIVE_METHODS, check_solver
from genflow.training import distributed

DEFAULT_SPLIT = {"nll": "test", "fd": "train", "pr": "train", "sw": "test"}


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="genflow-eval", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, text in [("nll", "bits/dim (images) or nats (vectors) on a data split"),
                       ("fd", "Fréchet distance between samples and a data split in a feature space"),
                       ("pr", "improved precision and recall (k-NN manifolds) in a feature space"),
                       ("sw", "sliced Wasserstein-2 between samples and a data split (vector data)")]:
        c = sub.add_parser(name, help=text, description=text)
        add_common_flags(c, name)
        if name == "nll":
            add_nll_flags(c)
        else:
            c.add_argument("--samples", required=True, type=Path,
                           help="genflow-sample's samples.npz, a folder of 8-bit PNGs (any tool's, sorted by name) "
                                "or ADM's samples npz (arr_0: uint8 NHWC)")
        if name in ("fd", "pr"):
            add_feature_flags(c, name)
    add_fid_parser(sub)
    return p


def add_fid_parser(sub) -> None:
    """``fid``: genflow-sample's flags (passed on to it as they are) and fd's feature flags."""
    text = ("draw samples (as genflow-sample, under torchrun too) and their Fréchet distance to a data split "
            "or --ref, in one command (like EDM2's calculate_metrics.py gen)")
    c = sub.add_parser("fid", help=text, description=text + ". Every other flag (--sampler, --steps, "
                       "--batch-size, the sampler options, --shard-size, --png-dir, --precision, ...) is "
                       "genflow-sample's; see genflow-sample --help.", allow_abbrev=False)
    c.add_argument("--ckpt", required=True, type=Path, help="a genflow checkpoint or a genflow-export .safetensors file")
    c.add_argument("--num", "--num-samples", dest="num", type=int, default=50000,
                   help="samples to draw, >= 1 (default 50,000, the papers' count; under torchrun write "
                        "--num-samples)")
    c.add_argument("--out", type=Path, default=Path("fid-samples"),
                   help="genflow-sample's output folder (samples.npz, info.json, shards/ a rerun reuses)")
    c.add_argument("--seed", type=int, default=0, help="seed of the per-sample noise, >= 0")
    c.add_argument("--split", default="train", choices=["train", "test"],
                   help="the data split of the reference (default: train, as the papers' FIDs)")
    c.add_argument("--data-num", type=int, default=None, help="examples of the split to use (default: all)")
    add_feature_flags(c, "fd", batch_flag="--feature-batch-size")


def add_common_flags(c: argparse.ArgumentParser, name: str) -> None:
    split = DEFAULT_SPLIT[name]
    c.add_argument("--ckpt", required=True, type=Path,
                   help="a genflow checkpoint or a genflow-export .safetensors file (its config names the data)")
    c.add_argument("--split", default=split, choices=["train", "test"],
                   help=f"the data split (default: {split}" + ("; papers' FIDs use the training split)" if
                                                              split == "train" else ")"))
    c.add_argument("--num", "--num-examples", dest="num", type=int, default=None,
                   help="examples of the split to use (default: all; under torchrun write --num-examples: "
                        "torchrun's parser takes --num for its --numa-binding)")
    c.add_argument("--seed", type=int, default=0,
                   help="seed of the random draws, >= 0 (nll: dequantization and Hutchinson probes, per example; "
                        "sw: directions)")


def add_nll_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument("--draws", type=int, default=1, help="dequantization draws per image")
    c.add_argument("--exact", action="store_true", help="exact trace instead of Hutchinson's estimate")
    c.add_argument("--method", default="dopri5",
                   help="torchdiffeq method: dopri5 (adaptive, the default), rk4, euler, ... (DDPM is "
                        "solved in a time without its kinks: dopri5 costs about what it costs on VP)")
    c.add_argument("--steps", type=int, default=100, help="steps of a fixed-grid method (rk4, euler, ...)")
    c.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of an adaptive method")
    c.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of an adaptive method")
    c.add_argument("--batch-size", type=int, default=500,
                   help="examples per likelihood batch (an adaptive solver's steps depend on the batch; the "
                        "batches, hence the values, are the same for any number of ranks)")
    c.add_argument("--device", default="auto", help="auto (this rank's GPU when CUDA is visible), cpu or cuda[:N]")
    c.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    c.add_argument("--no-progress", action="store_true", help="no progress bar over the batches")
    c.add_argument("--per-example", type=Path, default=None, metavar="PATH.npz",
                   help="also write every example's value (index, value) to this .npz")


def add_feature_flags(c: argparse.ArgumentParser, name: str, batch_flag: str = "--batch-size") -> None:
    c.add_argument("--inception-weights", type=Path, default=None, metavar="PATH",
                   help="Inception-v3 weights for the features: torchvision's inception_v3_google-*.pth "
                        "or pytorch-fid's FID network pt_inception-2015-12-05-*.pth (never downloaded; "
                        "default: the digits classifier for the digits, raw vectors for vector data)")
    c.add_argument("--rounding", default="edm", choices=["edm", "adm"],
                   help="samples to 8 bits as EDM's generate.py (nearest, the default) or ADM's image_sample.py "
                        "(truncation) before Inception")
    c.add_argument("--scaling", default="tf", choices=["tf", "pytorch-fid"],
                   help="8-bit values to Inception's input: (k - 128) / 128 as the TensorFlow FID graph, EDM "
                        "and ADM (the default), or 2 k / 255 - 1 as pytorch-fid")
    if name == "fd":
        c.add_argument("--ref", type=Path, default=None, metavar="PATH.npz",
                       help="reference statistics instead of the data split: EDM's (mu, sigma) or ADM's reference "
                            "batch (mu, sigma, or arr_0 uint8 images NHWC)")
    c.add_argument(batch_flag, dest="batch_size", type=int, default=50, help="images per forward pass of the feature net")
    c.add_argument("--device", default="auto",
                   help="device of the feature net (fid: of the sampling too): auto (this rank's GPU when CUDA is "
                        "visible), cpu or cuda[:N] (one process only)")
    if name == "pr":
        c.add_argument("--k", type=int, default=3, help="the k-th neighbour sets each ball's radius")


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


def stack(dataset, indices) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in indices])


def on_main(d: distributed.Dist, work):
    """``work()`` on rank 0 only (None elsewhere); its error ends every rank."""
    value = distributed.gather_checked(lambda: work() if d.main else None)[0]
    return value if d.main else None


def nll(args, state: dict, d: distributed.Dist, device: torch.device) -> dict:
    """Every rank integrates its share of the batches with the bare module (never DDP: adaptive
    solvers take different steps per rank); values are gathered per example."""
    from genflow.cli import rebuild

    if args.batch_size < 1 or args.draws < 1:
        raise UsageError("--batch-size and --draws must be >= 1")
    process, net, (dataset, n) = distributed.agree(lambda: (
        *rebuild(state, args.ckpt, ema=not args.no_ema, device=str(device)),
        split_data(state["config"], args.split, args.num)))
    batches = [range(s, min(s + args.batch_size, n)) for s in range(0, n, args.batch_size)]
    mine = [batches[i] for i in distributed.share(len(batches), d.rank, d.world)]
    parts = distributed.gather_checked(lambda: nll_batches(args, net, process, dataset, mine, device, d.main))
    values = torch.cat([v for part in parts for v in part[0]]).double()
    nfe = [c for part in parts for c in part[1]]
    return on_main(d, lambda: nll_result(args, values, nfe, image=dataset[0][0].ndim == 3, world=d.world))


def nll_batches(args, net, process, dataset, batches, device, show: bool) -> tuple[list, list]:
    """Per batch: the examples' values (bits/dim or nats) and the network evaluations."""
    import genflow
    from genflow.likelihood import example_noise

    options = dict(exact_divergence=args.exact, method=args.method, rtol=args.rtol, atol=args.atol, steps=args.steps)
    values, nfe, calls = [], [], [0]  # network evaluations, counted on the net itself
    hook = net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    for batch in tqdm(batches, desc="nll", unit="batch", disable=args.no_progress or not show):
        calls[0] = 0
        x = stack(dataset, batch).to(device)
        image = x.ndim == 4
        uniform, probes = example_noise(batch, tuple(x.shape[1:]), args.draws if image else 1, args.seed, x.dtype)
        if image:
            values.append(genflow.bits_per_dim(net, process, x, draws=args.draws, uniform=uniform,
                                               probes=probes.to(device), **options).cpu())
        else:
            values.append(-genflow.log_likelihood(net, process, x, probes=probes.to(device), **options).double().cpu())
        nfe.append(calls[0])
    hook.remove()
    return values, nfe


def nll_result(args, v: torch.Tensor, nfe: list, image: bool, world: int) -> dict:
    bad = int((~torch.isfinite(v)).sum())
    if bad:
        raise FailedRun(f"the likelihood of {bad} of {len(v)} examples is not finite (method {args.method}, "
                        f"rtol {args.rtol}, atol {args.atol}, steps {args.steps})")
    if args.per_example is not None:
        from genflow.utils import write_atomically

        write_atomically(args.per_example, lambda f: np.savez(f, index=np.arange(len(v)), value=v.numpy()))
    unit = "bits/dim" if image else "nats"
    return {"metric": f"nll ({unit})", "value": v.mean().item(), "stderr": (v.std() / math.sqrt(len(v))).item(),
            "examples": len(v), "draws": args.draws if image else None,
            "trace": "exact" if args.exact else "hutchinson", "method": args.method, "rtol": args.rtol,
            "atol": args.atol, "steps": args.steps if args.method not in ADAPTIVE_METHODS else None,
            # network evaluations per integration (one batch), averaged over the batches
            "nfe": sum(nfe) / len(nfe), "batches": len(nfe), "batch_size": args.batch_size, "seed": args.seed,
            "noise": "per example: sha256(seed, index)", "world_size": world}


def feature_spaces(args, cfg: dict, images: bool, device: torch.device):
    """(samples' space, reference's space, protocol or None): Inception-v3 from --inception-weights
    through the FID protocol, else the digits classifier, else raw vectors."""
    from genflow.metrics.fid import Protocol, as_float
    from genflow.metrics.reference import FeatureSpace

    if args.batch_size < 1:
        raise UsageError("--batch-size (fid: --feature-batch-size) must be >= 1")
    if args.inception_weights is not None:
        if not images:
            raise UsageError("--inception-weights is for image data; vector data is compared as raw vectors")
        from genflow.metrics.inception import inception_features

        net, protocol = inception_features(args.inception_weights, device), Protocol(args.rounding, args.scaling)
        name = f"inception-v3 pool features, {net.kind} weights"
        fake = FeatureSpace(name, net.identity, lambda x: net(protocol.network_input(x), args.batch_size))
        identity = f"{net.identity} scaling:{protocol.scaling} reference-rounding:edm"
        real = FeatureSpace(name, identity, lambda x: net(protocol.network_input(x, reference=True), args.batch_size))
        return fake, real, protocol
    if cfg["data"]["name"] == "digits":
        from genflow.metrics.digits_features import digits_classifier, digits_features, digits_identity

        _, accuracy = digits_classifier()
        space = FeatureSpace(f"digits classifier (test accuracy {accuracy:.3f})", digits_identity(),
                             lambda x: digits_features(as_float(x)))
        return space, space, None
    if not images:
        space = FeatureSpace("raw vectors", "raw vectors", lambda x: x.double())
        return space, space, None
    raise UsageError(f"no built-in feature space for data {cfg['data']['name']!r}; give --inception-weights PATH "
                     "(torchvision's inception_v3_google-*.pth or pytorch-fid's pt_inception-2015-12-05-*.pth)")


def shared_features(source, extract, d: distributed.Dist) -> torch.Tensor:
    """``extract`` of every image of ``source``, each rank reading and extracting its share
    (distributed.share), gathered in index order."""
    mine = distributed.share(source.count, d.rank, d.world)
    parts = distributed.gather_checked(lambda: extract(source.take(mine)) if len(mine) else None)
    return torch.cat([p for p in parts if p is not None])


def read_fake(args):
    from genflow.metrics.files import read_samples

    if not args.samples.exists():
        raise UsageError(f"samples file not found: {args.samples}")
    source = read_samples(args.samples)
    if source.layout == "genflow npz":
        fake = source.take(range(source.count))
        bad = int((~torch.isfinite(fake.reshape(len(fake), -1)).all(1)).sum())
        if bad:
            raise FailedRun(f"{bad} of {len(fake)} samples in {args.samples} hold NaN or inf; nothing to compare")
    return source


@dataclass(frozen=True)
class Scoring:
    """What fd / pr / sw compare the samples with, set up (and checked) before any sample is read."""

    file: object  # --ref's ReferenceFile, or None
    dataset: object
    n: int
    shape: tuple
    spaces: tuple | None  # feature_spaces' (samples' space, reference's space, protocol); None for sw


def scoring(args, cfg: dict, device: torch.device) -> Scoring:
    from genflow.metrics.files import read_reference

    file = read_reference(args.ref) if getattr(args, "ref", None) is not None else None  # refused before any work
    dataset, n = split_data(cfg, args.split, args.num)
    shape = tuple(dataset[0][0].shape)
    if args.command == "sw" and len(shape) != 1:
        raise UsageError("sw is for vector data; use fd or pr for images")
    spaces = None if args.command == "sw" else feature_spaces(args, cfg, len(shape) == 3, device)
    return Scoring(file, dataset, n, shape, spaces)


def compare(args, state: dict, d: distributed.Dist, device: torch.device, setup: Scoring | None = None) -> dict:
    from genflow.metrics import frechet_distance_to_statistics, precision_recall, sliced_wasserstein
    from genflow.metrics.files import ImageSource

    cfg = state["config"]
    s = setup or distributed.agree(lambda: scoring(args, cfg, device))
    source = distributed.agree(lambda: read_fake(args))
    dataset, n, shape = s.dataset, s.n, s.shape
    if source.shape != shape:
        raise UsageError(f"samples have shape {source.shape} but the data {shape}")
    if args.command == "sw":
        fake, real = source.take(range(source.count)), stack(dataset, range(n))
        value = sliced_wasserstein(fake, real, generator=torch.Generator().manual_seed(args.seed))
        return {"metric": "sliced_wasserstein", "value": value, "samples": len(fake), "data": n}
    fake_space, real_space, protocol = s.spaces
    f_fake = shared_features(source, fake_space.extract, d)
    data = ImageSource(n, shape, lambda r: stack(dataset, r), "data split")
    ref, how = reference_of(args, cfg, data, real_space, d, f_fake.shape[1], s.file)
    how = {"features": fake_space.name, "feature_space": fake_space.identity, "samples": len(f_fake),
           "samples_layout": source.layout, **how, "conversion": protocol.record() if protocol else None,
           "world_size": d.world}
    if args.command == "fd":
        return on_main(d, lambda: {"metric": "frechet_distance",
                                   "value": frechet_distance_to_statistics(f_fake, ref.mu, ref.sigma), **how})
    pr = on_main(d, lambda: precision_recall(ref.features, f_fake, k=args.k))
    return {"metric": "precision_recall", "precision": pr[0], "recall": pr[1], "k": args.k, **how} if d.main else {}


def reference_of(args, cfg: dict, data, space, d: distributed.Dist, dims: int, file=None):
    """The reference (mu, sigma, features for pr) from the --ref ``file`` or the data split (cached), and how."""
    from genflow.metrics.files import check_dims, tensor_source
    from genflow.metrics.frechet import gaussian_statistics
    from genflow.metrics.reference import Reference, lookup, store

    need = args.command == "pr"
    if file is not None:
        check_dims(file, dims)
        how = {"split": None, "data": None, "reference": f"file ({file.layout})", "reference_file": str(args.ref),
               "reference_sha256": file.sha256}
        if file.images is None:
            return Reference(file.mu, file.sigma, None, 0, "file", file.path), how
        features = shared_features(tensor_source(file.images, file.layout), space.extract, d)
        mu, sigma = on_main(d, lambda: gaussian_statistics(features)) or (None, None)
        return Reference(mu, sigma, None, len(features), "file", file.path), {**how, "data": len(features)}
    found = lookup(cfg["data"], args.split, data.count, space, need_features=need)
    if not all(distributed.gather_checked(lambda: found is not None)):
        features = shared_features(data, space.extract, d)
        found = on_main(d, lambda: store(cfg["data"], args.split, data.count, space, features, need_features=need))
    how = {"split": args.split, "data": data.count}
    if d.main:
        how.update(reference=found.status, reference_cache=str(found.path))
    return found, how


def sample_args(args, rest: list[str]) -> argparse.Namespace:
    """genflow-sample's flags for ``fid``: its own (the rest of the command line) with the shared ones."""
    from genflow.cli import sample

    shared = ["--ckpt", str(args.ckpt), "--num", str(args.num), "--seed", str(args.seed), "--device", args.device,
              "--out", str(args.out)]
    try:
        generating = sample.parser().parse_args(shared + rest)
    except UsageError as err:
        raise UsageError(f"fid (genflow-sample's flags): {err}") from None
    sample.check_args(generating)
    return generating


def fid(args, generating: argparse.Namespace, state: dict, d: distributed.Dist, device: torch.device) -> dict:
    """Draw the samples (every rank its share of the shards, rank 0 merges), then ``fd`` of OUT/samples.npz."""
    from genflow.cli.sample import sample_all
    from genflow.metrics.files import check_dims

    scored = argparse.Namespace(**{**vars(args), "command": "fd", "samples": args.out / "samples.npz",
                                   "num": args.data_num})

    def setup() -> Scoring:  # --ref, the feature net and the data checked before any sample is drawn
        s = scoring(scored, state["config"], device)
        if tuple(state.get("data_shape", s.shape)) != s.shape:
            raise UsageError(f"the checkpoint's samples have shape {tuple(state['data_shape'])} but the data {s.shape}")
        if s.file is not None:
            check_dims(s.file, s.spaces[1].extract(stack(s.dataset, range(1))).shape[1])
        return s

    ready = distributed.agree(setup)
    sample_all(generating, d)
    result = compare(scored, state, d, device, setup=ready)
    if d.main:
        drawn = json.loads((args.out / "info.json").read_text())
        keep = ("sampler", "sampler_options", "num", "seed", "nfe_per_sample", "wall_s", "world_size", "settings_key",
                "precision", "ema", "guidance", "classes")
        result = {**result, "metric": "fid" if "inception" in str(result.get("features")) else result["metric"],
                  "generated": {k: drawn.get(k) for k in keep}, "samples_dir": str(args.out)}
    return result


def device_of(name: str) -> str:
    """--device as distributed.setup takes it (auto, cpu, cuda), after checking an explicit one."""
    if name == "auto":
        return name
    check_device(name)
    return torch.device(name).type


def finish(args, result: dict) -> str:
    numbers = [v for v in result.values() if isinstance(v, float)]
    if not all(map(math.isfinite, numbers)):
        raise FailedRun(f"{args.command} is not finite: {json.dumps(result)}")
    return json.dumps({"split": args.split, **result}, allow_nan=False)


def evaluate(argv: list[str] | None) -> str | None:
    """The JSON line on rank 0 (None on the other ranks)."""
    from genflow.export import load_model_file as load  # a checkpoint or a genflow-export .safetensors file

    args, rest = parser().parse_known_args(argv)
    if args.command != "fid" and rest:
        parser().parse_args(argv)  # the usual one-line refusal of the unknown flags
    generating = sample_args(args, rest) if args.command == "fid" else None
    check_seed(args.seed)
    kind = device_of(args.device) if hasattr(args, "device") else "cpu"
    if args.command == "nll":
        check_solver(args.method, rtol=args.rtol, atol=args.atol, steps=args.steps, prefix="--")
    owner = not distributed.active()  # a caller that formed the group itself also ends it
    d = distributed.setup(kind)
    done = False
    try:
        device = torch.device(rank_device(getattr(args, "device", "cpu"), d))
        state = distributed.agree(lambda: load(args.ckpt))
        if generating is not None:
            result = fid(args, generating, state, d, device)
        else:
            result = nll(args, state, d, device) if args.command == "nll" else compare(args, state, d, device)
        message = on_main(d, lambda: finish(args, result))
        done = True
    finally:
        if owner:
            distributed.cleanup(wait=done)
    return message


def main(argv: list[str] | None = None) -> int:
    return guarded("genflow-eval", lambda: evaluate(argv))


if __name__ == "__main__":
    sys.exit(main())
