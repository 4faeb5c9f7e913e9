"""GPU figures: UNet training throughput (fp32 / bf16), DDIM sampling throughput and the sampler's
overhead on the GPU, and a short digits training run whose DDIM samples are saved as a PNG grid.

    python scripts/bench_gpu.py [--out DIR] [--train-steps 1500]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

import genflow
from genflow.data import digits
from genflow.nets import UNet
from genflow.processes import DDPM
from genflow.samplers import run

CIFAR = dict(image_size=32, in_channels=3, channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
             attention_resolutions=(16,), dropout=0.1)


DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Seconds per call (CUDA-synchronised), after two warm-up calls."""
    for _ in range(2):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def autocast(precision: str):
    return torch.autocast(DEVICE, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def peak_memory() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def training_throughput(batch: int) -> None:
    print(f"\n## Training step, Ho et al. CIFAR-10 UNet (35.7M params), batch {batch}, 3x32x32\n")
    print("| precision | step (ms) | images / s | peak memory (GiB) |")
    print("|---|---|---|---|")
    process = DDPM()
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = UNet(**CIFAR).to(DEVICE)
        opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
        x0 = torch.randn(batch, 3, 32, 32, device=DEVICE)
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def step():
            with autocast(precision):
                loss = process.loss(net, x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        sec = timed(step, 10)
        peak = peak_memory()
        print(f"| {precision} | {1e3 * sec:.1f} | {batch / sec:,.0f} | {peak:.1f} |", flush=True)
        del net, opt


def sampling_throughput(batch: int, steps: int) -> None:
    print(f"\n## DDIM sampling, CIFAR-10 UNet, batch {batch}, {steps} steps\n")
    print("| precision | sampler | wall (s) | images / s | wall / (NFE x forward) |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    net = UNet(**CIFAR).to(DEVICE).eval()
    process = DDPM()
    x, t = torch.randn(batch, 3, 32, 32, device=DEVICE), torch.full((batch,), 500.0, device=DEVICE)
    for precision in ("fp32", "bf16"):
        for sampler in ("ddim", "ddpm"):
            with autocast(precision), torch.no_grad():
                forward = timed(lambda: net(x, t), 5)
                result = {}

                def sample():
                    result["out"] = run(net, process, sampler=sampler, steps=steps, shape=tuple(x.shape),
                                        device=DEVICE, generator=torch.Generator().manual_seed(0))

                wall = timed(sample, 2)
            nfe = result["out"].nfe
            print(f"| {precision} | {sampler} | {wall:.2f} | {batch / wall:,.0f} | {wall / (nfe * forward):.3f} |",
                  flush=True)


def digits_run(steps: int, out: Path) -> None:
    """A short CUDA training run on the digits (a bare loop over process.loss), then DDIM-50 samples."""
    torch.manual_seed(0)
    images = digits("train").tensors[0].to(DEVICE)
    net = UNet(image_size=8, in_channels=1, channels=64, channel_mult=(1, 2), num_res_blocks=2,
               attention_resolutions=(4,)).to(DEVICE)
    process = DDPM()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        batch = images[torch.randint(len(images), (256,), device=DEVICE, generator=g)]
        with autocast("bf16"):
            loss = process.loss(net, batch, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"digits step {step}: loss {loss.item():.4f}", flush=True)
    sync()
    train = time.perf_counter() - start
    net.eval()
    samples = genflow.sample(net, process, sampler="ddim", steps=50, shape=(64, 1, 8, 8), device=DEVICE,
                             generator=torch.Generator().manual_seed(0))
    out.mkdir(parents=True, exist_ok=True)
    save_image((samples.float().clamp(-1, 1) + 1) / 2, out / "digits_ddim50.png", nrow=8)
    print(f"\ndigits: {steps} steps at batch 256 in {train:.1f} s ({steps / train:.1f} steps/s); "
          f"grid at {out / 'digits_ddim50.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_gpu"))
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--cpu-smoke", action="store_true", help="run every part tiny on the CPU (a check of the script)")
    args = parser.parse_args()
    global DEVICE
    if args.cpu_smoke:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device; none is visible (--cpu-smoke checks the script)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU smoke run"
    print(f"genflow bench_gpu — {name}, torch {torch.__version__}, TF32 on for fp32")
    training_throughput(args.batch)
    sampling_throughput(args.sample_batch, args.sample_steps)
    digits_run(args.train_steps, args.out)


if __name__ == "__main__":
    main()
