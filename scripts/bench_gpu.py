"""GPU fast path: training and DDIM sampling throughput of the CIFAR-10 UNet for fp32 eager, bf16,
channels-last, torch.compile and CUDA graphs, as one table with ratios to fp32 eager in the same run.

    python scripts/bench_gpu.py                 # one GPU, under 5 minutes (CIFAR-10 UNet, 35.7M parameters)
    python scripts/bench_gpu.py --smoke         # a tiny UNet on the CPU in seconds: checks the script (CI)
    python scripts/bench_gpu.py --digits-steps 1500   # also a short digits training run with a DDIM grid

Training: a bare loop of DDPM's loss, backward, gradient clipping and (fused) AdamW, the trainer's
step without its bookkeeping. Sampling: ``genflow.samplers.run`` with DDIM (eta = 0). Each row
builds its own net, runs warm-up calls (compilation and graph capture happen there), then times a
fixed number of calls between ``torch.cuda.synchronize()``; peak memory is
``torch.cuda.max_memory_allocated`` over the row. TF32 is on for fp32, as in the trainer.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genflow import accel
from genflow.nets import UNet
from genflow.processes import DDPM
from genflow.samplers import CUDAGraphModel, run
from genflow.utils import one_line

CIFAR = dict(image_size=32, in_channels=3, channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
             attention_resolutions=(16,), dropout=0.1)
TINY = dict(image_size=8, in_channels=3, channels=16, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(4,), dropout=0.1, norm_groups=8)

# (configuration, precision, channels_last, compile) for training; (configuration, precision,
# compile, CUDA graph) for sampling.
TRAIN = [("fp32 eager", "fp32", False, False), ("bf16", "bf16", False, False),
         ("bf16 + channels_last", "bf16", True, False), ("bf16 + compile", "bf16", False, True)]
SAMPLE = [("fp32 eager", "fp32", False, False), ("bf16", "bf16", False, False),
          ("bf16 + compile", "bf16", True, False), ("bf16 + CUDA graph", "bf16", False, True)]
SAMPLE_SMALL = [("fp32 eager", "fp32", False, False), ("fp32 + CUDA graph", "fp32", False, True),
                ("bf16", "bf16", False, False), ("bf16 + CUDA graph", "bf16", False, True)]


@dataclass
class Setup:
    device: torch.device
    net: dict = field(default_factory=lambda: CIFAR)
    train_batch: int = 128
    sample_batch: int = 256
    small_batch: int = 16
    steps: int = 50                 # DDIM steps
    train_warmup: int = 5
    train_repeats: int = 20
    sample_repeats: int = 3
    small_repeats: int = 10

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.net["in_channels"], self.net["image_size"], self.net["image_size"])


def smoke_setup() -> Setup:
    return Setup(torch.device("cpu"), TINY, train_batch=4, sample_batch=4, small_batch=2, steps=2, train_warmup=1,
                 train_repeats=2, sample_repeats=2, small_repeats=2)


@dataclass
class Row:
    part: str
    config: str
    batch: int
    images_per_s: float | None = None
    peak_gib: float | None = None
    note: str = ""


def sync(setup: Setup) -> None:
    if setup.cuda:
        torch.cuda.synchronize(setup.device)


def timed(setup: Setup, fn, warmup: int, repeats: int) -> float:
    """Seconds per call after ``warmup`` calls, between device synchronisations."""
    for _ in range(warmup):
        fn()
    sync(setup)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(setup)
    return (time.perf_counter() - start) / repeats


def measured(setup: Setup, row: Row, work) -> Row:
    """Fill ``row`` from ``work() -> seconds per batch``, with the peak memory of the row."""
    gc.collect()
    torch._dynamo.reset()  # compiled code of earlier rows holds their nets
    if setup.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(setup.device)
    start = time.perf_counter()
    try:
        seconds = work()
    except Exception as err:  # noqa: BLE001 (a row that cannot run says why; the table goes on)
        row.note = f"failed: {type(err).__name__}: {one_line(err, 80)}"
    else:
        row.images_per_s = row.batch / seconds
        row.peak_gib = torch.cuda.max_memory_allocated(setup.device) / 2**30 if setup.cuda else None
    print(f"{row.part} | {row.config}: {time.perf_counter() - start:.1f} s with warm-up", file=sys.stderr, flush=True)
    return row


def compiled_or_note(model: accel.Compiled) -> None:
    if model.eager_reason:
        raise RuntimeError(f"compile fell back to eager ({model.eager_reason})")


def train_row(setup: Setup, config: str, precision: str, last: bool, compile_: bool) -> Row:
    row = Row("train", config, setup.train_batch)
    if compile_ and not setup.cuda:
        row.note = "n/a (cpu)"
        return row

    def work() -> float:
        torch.manual_seed(0)
        net = UNet(**setup.net).to(setup.device)
        if last:
            net.to(memory_format=torch.channels_last)
        model = accel.Compiled(net) if compile_ else net
        opt = torch.optim.AdamW(net.parameters(), lr=2e-4, **accel.adamw_options(net.parameters()))
        x0 = torch.randn(setup.shape(setup.train_batch), device=setup.device)
        x0 = accel.channels_last(x0) if last else x0
        process, gen = DDPM(), torch.Generator(setup.device).manual_seed(0)

        def step() -> None:
            with accel.autocast(setup.device.type, precision):
                loss = process.loss(model, x0, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()

        seconds = timed(setup, step, setup.train_warmup, setup.train_repeats)
        if compile_:
            compiled_or_note(model)
        return seconds

    return measured(setup, row, work)


def sample_row(setup: Setup, part: str, batch: int, repeats: int, config: str, precision: str, compile_: bool,
               graph: bool) -> Row:
    row = Row(part, config, batch)
    if (compile_ or graph) and not setup.cuda:
        row.note = "n/a (cpu)"
        return row

    def work() -> float:
        torch.manual_seed(0)
        net = UNet(**setup.net).to(setup.device).eval().requires_grad_(False)
        core = accel.Compiled(net) if compile_ else net
        model = accel.FastModel(core, precision)
        model = CUDAGraphModel(model) if graph else model

        def draw() -> None:
            run(model, DDPM(), sampler="ddim", steps=setup.steps, shape=setup.shape(batch), device=setup.device,
                generator=torch.Generator().manual_seed(0))

        seconds = timed(setup, draw, 1, repeats)
        if compile_:
            compiled_or_note(core)
        return seconds

    return measured(setup, row, work)


def table(rows: list[Row]) -> str:
    base = {r.part: r.images_per_s for r in rows if r.config == "fp32 eager"}
    lines = ["| part | configuration | batch | images / s | x fp32 eager | peak memory (GiB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{r.images_per_s:,.1f}" if r.images_per_s else r.note
        ratio = f"{r.images_per_s / base[r.part]:.2f}" if r.images_per_s and base.get(r.part) else "-"
        peak = f"{r.peak_gib:.2f}" if r.peak_gib is not None else "-"
        lines.append(f"| {r.part} | {r.config} | {r.batch} | {speed} | {ratio} | {peak} |")
    return "\n".join(lines)


def all_rows(setup: Setup) -> list[Row]:
    rows = [train_row(setup, *spec) for spec in TRAIN]
    large, small = f"sample DDIM-{setup.steps}", f"sample DDIM-{setup.steps} small batch"
    rows += [sample_row(setup, large, setup.sample_batch, setup.sample_repeats, *spec) for spec in SAMPLE]
    rows += [sample_row(setup, small, setup.small_batch, setup.small_repeats, *spec) for spec in SAMPLE_SMALL]
    return rows


def digits_run(device: torch.device, steps: int, out: Path) -> None:
    """A short training run on the digits (bf16, a bare loop over process.loss), then DDIM-50 samples."""
    from torchvision.utils import save_image

    import genflow
    from genflow.data import digits

    torch.manual_seed(0)
    images = digits("train").tensors[0].to(device)
    net = UNet(image_size=8, in_channels=1, channels=64, channel_mult=(1, 2), num_res_blocks=2,
               attention_resolutions=(4,)).to(device)
    process, gen = DDPM(), torch.Generator(device=device).manual_seed(0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, **accel.adamw_options(net.parameters()))
    start = time.perf_counter()
    for step in range(steps):
        batch = images[torch.randint(len(images), (256,), device=device, generator=gen)]
        with accel.autocast(device.type, "bf16"):
            loss = process.loss(net, batch, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"digits step {step}: loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - start
    samples = genflow.sample(net.eval(), process, sampler="ddim", steps=50, shape=(64, 1, 8, 8), device=device,
                             generator=torch.Generator().manual_seed(0))
    out.mkdir(parents=True, exist_ok=True)
    save_image((samples.float().clamp(-1, 1) + 1) / 2, out / "digits_ddim50.png", nrow=8)
    print(f"digits: {steps} steps at batch 256 in {seconds:.1f} s; grid at {out / 'digits_ddim50.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", "--cpu-smoke", dest="smoke", action="store_true",
                        help="a tiny UNet on the CPU, 2 steps per row (checks the script; no compile or CUDA graphs)")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--small-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--digits-steps", type=int, default=0, help="also a digits training run (0: none)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_gpu"))
    args = parser.parse_args()
    if args.smoke:
        setup = smoke_setup()
    elif not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device; none is visible (--smoke checks the script on the CPU)")
    else:
        setup = Setup(torch.device("cuda"), train_batch=args.train_batch, sample_batch=args.sample_batch,
                      small_batch=args.small_batch, steps=args.steps)
        accel.set_tf32(True)
    name = torch.cuda.get_device_name(setup.device) if setup.cuda else "CPU smoke run (tiny UNet)"
    params = sum(p.numel() for p in UNet(**setup.net).parameters())
    print(f"genflow bench_gpu: {name}, torch {torch.__version__}, {datetime.date.today()}, "
          f"UNet {params:,} parameters, TF32 {'on' if setup.cuda else 'n/a'}\n", flush=True)
    start = time.perf_counter()
    print(table(all_rows(setup)))
    print(f"\nwall: {time.perf_counter() - start:.0f} s", flush=True)
    if args.digits_steps:
        digits_run(setup.device, args.digits_steps, args.out)


if __name__ == "__main__":
    main()
