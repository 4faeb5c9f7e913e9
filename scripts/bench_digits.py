"""Samplers compared on a real trained model: the default digits config, trained on the CPU.

Trains the default config (DDPM, T = 1000, ``unet_digits``, scikit-learn's 8x8 digits) for a fixed
budget of steps (or reuses a checkpoint), then samples ``--num`` digits with each sampler from the
same per-sample noise seeds and prints, per sampler: steps, NFE, wall time, the Fréchet distance
in the built-in digits feature space (a small classifier trained deterministically on the training
split; ``genflow.metrics.digits_features``) and improved precision/recall (k = 3) against the
test split. The floor is the same numbers for training digits against the test split: no sampler
of this data can be expected to beat it. Writes a grid of the first 64 samples per sampler.

    python scripts/bench_digits.py                       # train 1500 steps (~2 min), then all rows
    python scripts/bench_digits.py --ckpt runs/demo/checkpoints/last.pt --quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from genflow import samplers
from genflow.cli import rebuild
from genflow.data import digits
from genflow.metrics import frechet_distance_to_statistics, gaussian_statistics, precision_recall
from genflow.metrics.digits_features import digits_classifier, digits_features
from genflow.training import Trainer, compose
from genflow.training.checkpoint import load

# (sampler, steps, options)
ROWS = [
    ("ddpm", 1000, {}),
    ("ddpm", 100, {}),
    ("ddim", 10, {}),
    ("ddim", 20, {}),
    ("ddim", 50, {}),
    ("ddim", 100, {}),
    ("euler_maruyama", 1000, {}),
    ("pc", 500, {}),
    ("ode", 25, {"method": "rk4"}),
    ("dpmpp_2m", 10, {}),
    ("dpmpp_2m", 20, {}),
    ("dpmpp_3m", 10, {}),
    ("dpmpp_3m", 20, {}),
    ("heun", 10, {}),
    ("heun", 18, {}),
]
QUICK_ROWS = [r for r in ROWS if r[1] <= 100 and r[0] != "heun" or (r[0], r[1]) == ("heun", 18)]


def label(sampler: str, options: dict) -> str:
    return sampler + "".join(f" {k}={v}" for k, v in options.items())


def train(run_dir: Path, steps: int) -> Path:
    cfg = compose([f"run_dir={run_dir}", f"trainer.steps={steps}", "trainer.device=cpu", "trainer.sample_every=0"])
    start = time.perf_counter()
    Trainer(cfg).fit()
    print(f"trained the default config for {steps} steps in {time.perf_counter() - start:.0f} s")
    return run_dir / "checkpoints" / "last.pt"


def scores(images: torch.Tensor, real: torch.Tensor, real_stats: tuple) -> tuple[float, float, float]:
    fake = digits_features(images)
    precision, recall = precision_recall(real, fake, k=3)
    return frechet_distance_to_statistics(fake, *real_stats), precision, recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="reuse a checkpoint of the default config")
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench_digits"))
    parser.add_argument("--num", type=int, default=1000, help="samples per sampler")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--grids", type=Path, default=Path("docs/bench_digits"))
    parser.add_argument("--quick", action="store_true", help="skip the 500-1000-step rows")
    parser.add_argument("--only", nargs="+", default=None, metavar="SAMPLER", help="rows of these samplers only")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    ckpt = args.ckpt or train(args.run_dir, args.train_steps)
    state = load(ckpt)
    process, net = rebuild(state, ckpt)
    shape = tuple(state["data_shape"])
    _, accuracy = digits_classifier()
    real = digits_features(digits("test").tensors[0])
    real_stats = gaussian_statistics(real)  # once for every row
    train_x = digits("train").tensors[0]
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
    pick = order[: min(args.num, len(train_x))]
    floor = scores(train_x[pick], real, real_stats)
    args.grids.mkdir(parents=True, exist_ok=True)

    print(f"\ngenflow bench_digits — torch {torch.__version__}, {torch.get_num_threads()} threads, checkpoint "
          f"{ckpt} (step {state['step']}), {args.num} samples per row against the {len(real)} test digits; "
          f"digits classifier test accuracy {accuracy:.3f}\n")
    print("| sampler | steps | NFE | wall (s) | FD (digits features) | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    print(f"| floor: {len(pick)} training digits | – | – | – | {floor[0]:.2f} | {floor[1]:.3f} | {floor[2]:.3f} |",
          flush=True)
    rows = [r for r in (QUICK_ROWS if args.quick else ROWS) if args.only is None or r[0] in args.only]
    for sampler, steps, options in rows:
        parts, start = [], time.perf_counter()
        for offset in range(0, args.num, args.batch_size):
            n = min(args.batch_size, args.num - offset)
            out = samplers.run(net, process, sampler=sampler, steps=steps, shape=(n, *shape), seed_offset=offset,
                               generator=torch.Generator().manual_seed(0), **options)
            parts.append(out.samples.clamp(-1, 1))
        wall = time.perf_counter() - start
        images = torch.cat(parts)
        fd, precision, recall = scores(images, real, real_stats)
        name = label(sampler, options)
        grid = torch.nn.functional.interpolate((images[:64] + 1) / 2, scale_factor=4, mode="nearest")  # 32x32 digits
        save_image(grid, args.grids / f"{name.replace(' ', '_')}_{steps}.png", nrow=8, padding=4)
        print(f"| {name} | {steps} | {out.nfe} | {wall:.1f} | {fd:.2f} | {precision:.3f} | {recall:.3f} |",
              flush=True)
    print(f"\ngrids of the first 64 samples per row, enlarged 4x: {args.grids}/")


if __name__ == "__main__":
    main()
