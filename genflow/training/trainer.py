"""The training loop, split into named phases: build, resume, batch, step, log, sample, save.

Randomness that decides the objective (which examples, their t, noise, flips, label drops) is a function
of (seed, step) and of each example's place in the global batch, never of the rank: a run on W
ranks takes the same steps as one process with the same global batch, and a resumed run the
same steps as an uninterrupted one. Each rank's own generator (seeded ``seed * world + rank``)
serves what is local, such as dropout. One exception: minibatch-OT coupling (``flow_ot``) pairs
data and noise within each rank's micro-batch, so its pairing depends on the batch per rank.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from genflow import accel, nets, processes, samplers
from genflow import data as datasets
from genflow.processes.base import GaussianPath
from genflow.samplers.guidance import class_embedding
from genflow.training import checkpoint, distributed, lock, loggers, stops
from genflow.training.config import ConfigError, trainer_config
from genflow.training.ema import EMA
from genflow.training.loggers import MetricsLog
from genflow.utils import check_writable_folder, error_line, remove_stale_temps


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row)."""


def check_fit(net: torch.nn.Module, data: datasets.Data, process: GaussianPath, model_name: str) -> None:
    """The net must be made for the data's example shape and, if conditional, its classes: by its
    ``image_size`` and ``in_channels`` or ``dim`` where it has them (the built-in nets), else by
    one forward pass of two examples."""
    if hasattr(net, "image_size"):
        want = (net.in_channels, net.image_size, net.image_size)
        if tuple(data.shape) != want:
            raise ConfigError(f"model {model_name!r} expects images {want} (in_channels, image_size, image_size) "
                              f"but the data are {tuple(data.shape)}; set model.image_size/in_channels to match")
    elif getattr(net, "dim", None) is not None:
        if net.dim != math.prod(data.shape):
            raise ConfigError(f"model {model_name!r} takes {net.dim} values per example but the data have shape "
                              f"{tuple(data.shape)}; set model.dim={math.prod(data.shape)}")
    else:
        check_forward(net, data, process, model_name)
    classes = num_classes(net)
    if classes is not None and classes != data.num_classes:
        raise ConfigError(f"model has num_classes={classes} but the data have {data.num_classes}")


@torch.no_grad()
def check_forward(net: torch.nn.Module, data: datasets.Data, process: GaussianPath, model_name: str) -> None:
    """A net without shape attributes (one from another package) maps two examples at t_max to
    the shape of its input (in eval mode: no running statistics change)."""
    device = next(net.parameters(), torch.empty(0)).device
    x, t = torch.zeros(2, *data.shape, device=device), torch.full((2,), float(process.t_max), device=device)
    cond = {} if num_classes(net) is None else {"y": torch.zeros(2, dtype=torch.long, device=device)}
    training = net.training
    try:
        out = net.eval()(x, t, **cond)
    except Exception as err:  # a foreign net's error, whatever its type: the data do not fit it
        raise ConfigError(f"model {model_name!r} fails on the data's examples {tuple(data.shape)}: "
                          f"{error_line(err)}") from None
    finally:
        net.train(training)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {model_name!r} maps a batch of the data {tuple(x.shape)} to {got}; "
                          "a net must return a tensor shaped like its input")


def num_classes(net: torch.nn.Module) -> int | None:
    """The classes of a conditional net (its null class is this index), None if unconditional."""
    embed = class_embedding(net)
    return None if embed is None else embed.num_classes


def default_run_dir(cfg: dict) -> Path:
    return Path("runs") / f"{cfg['data']['name']}-{cfg['process']['name']}-{cfg['model']['name']}"


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator for everything global at ``step``: identical on every rank and on resume."""
    return torch.Generator(device=device).manual_seed((seed << 32) + step)


class EpochOrder(Sampler):
    """The indices of the current epoch, set between epochs: one DataLoader (and its persistent
    workers) serves every epoch."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class Trainer:
    """``Trainer(cfg).fit()``: ``cfg`` is the checked plain dict from ``config.compose``."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.tc = trainer_config(cfg)
        self.dist = distributed.setup(self.tc.device)
        self.device = self.dist.device
        self.run_dir = Path(default_run_dir(cfg) if cfg.get("run_dir") is None else cfg["run_dir"])
        if self.dist.main:  # before any work: a run folder that is a file, read-only or under a file
            check_writable_folder(self.run_dir, "run_dir")
        self.process = processes.build(cfg["process"])
        self.data = datasets.build(cfg["data"])
        self.cfg["model"] = nets.with_time_scale(cfg["model"], self.process)
        sampler = dict(cfg["sampler"])
        samplers.make(sampler.pop("name", None), **sampler).check(self.process)
        self._split_batch()
        torch.manual_seed(self.tc.seed)  # the same initial weights on every rank
        self.net = nets.build(self.cfg["model"]).to(self.device)
        check_fit(self.net, self.data, self.process, cfg["model"]["name"])
        self.classes = num_classes(self.net)
        if self.tc.cond_drop_prob > 0 and self.classes is None:
            raise ConfigError(f"trainer.cond_drop_prob={self.tc.cond_drop_prob} needs a conditional model; set "
                              "model.num_classes (the data's class count) or cond_drop_prob=0")
        self.channels_last = self.tc.channels_last and len(self.data.shape) == 3  # images only
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            accel.set_tf32(self.tc.tf32)
        self.ema = EMA(self.net, self.tc.ema_decay, self.tc.ema_warmup)
        self.model = self._wrap(self._compiled(self.net) if self.tc.compile else self.net)
        self.opt_flags = accel.adamw_options(self.net.parameters())
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=self.tc.lr, betas=tuple(self.tc.betas),
                                     weight_decay=self.tc.weight_decay, **self.opt_flags)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.tc.precision == "fp16")
        self.sampler = DistributedSampler(self.data.train, num_replicas=self.dist.world, rank=self.dist.rank,
                                          shuffle=True, seed=self.tc.seed)
        # Whole global batches of the epoch's permutation, the same count for every world size
        # (DistributedSampler's padding at the epoch's end is never reached).
        self.steps_per_epoch = len(self.data.train) // self.tc.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"trainer.batch_size={self.tc.batch_size} exceeds the {len(self.data.train)} "
                              "training examples")
        self.step, self.bad_streak, self.skipped = 0, 0, 0
        self.stop_signals = stops.parse_signals(self.tc.stop_signals)
        self.stopped: str | None = None  # why fit() stopped before trainer.steps (a signal, the time budget)
        loggers.require(self.tc.logger)
        self.metrics: MetricsLog | None = None  # rank 0's, from fit() on
        self.elapsed_before, self.clock = 0.0, time.perf_counter()  # training seconds of earlier runs; this one's start
        torch.manual_seed(self.tc.seed * self.dist.world + self.dist.rank)  # rank-local randomness

    # ------------------------------------------------------------------ build
    def _split_batch(self) -> None:
        world, micro = self.dist.world, self.tc.micro_batches
        if self.tc.batch_size % (world * micro):
            raise ConfigError(f"trainer.batch_size={self.tc.batch_size} must divide evenly over {world} rank(s) "
                              f"x {micro} micro-batch(es)")
        self.per_rank = self.tc.batch_size // world
        self.micro = self.per_rank // micro

    def _wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        if self.dist.world == 1:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        # The nets' buffers are constants (embedding frequencies): not broadcasting them keeps the
        # collectives per step fixed even when an adaptive ODE solver (CNF) takes rank-dependent NFE.
        return DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)

    def _compiled(self, net: torch.nn.Module) -> torch.nn.Module:
        """The bare net compiled (inside DDP, not around it); checkpoints save self.net's own keys."""
        if self.process.double_backward:
            if self.dist.main:
                print(f"genflow: torch.compile is not used for {self.process!r}: its loss differentiates the net "
                      "twice, which torch.compile does not support; running eager", file=sys.stderr, flush=True)
            return net
        return accel.Compiled(net)

    def _autocast(self):
        return accel.autocast(self.device.type, self.tc.precision)

    # ----------------------------------------------------------------- resume
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def resume(self) -> bool:
        """Load the newest loadable checkpoint when the run folder has one: ``last.pt``, or (said in
        one line) a step file when ``last.pt`` is damaged or older; refuse one made for another model."""
        found = checkpoint.newest(self.ckpt_dir, map_location="cpu")  # load_state_dict moves weights
        if found is None:
            return False
        path, state, why = found
        if self.dist.main and why:
            print(f"genflow-train: resuming from {path} (step {state['step']}){': ' + why if why else ''}",
                  file=sys.stderr, flush=True)
        for key in ("process", "model", "data"):
            if state["config"][key] != self.cfg[key]:
                raise ConfigError(f"{path} was trained with another {key} config ({state['config'][key]}); "
                                  f"use a new run_dir or the same {key} settings")
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        # This device's fused/foreach flags, not the saving run's (a fused CUDA run resumed on a CPU);
        # load_state_dict places the step counters by them.
        groups = [{**group, **self.opt_flags} for group in state["optimizer"]["param_groups"]]
        self.opt.load_state_dict({**state["optimizer"], "param_groups": groups})
        if state["scaler"]:  # empty when the run was not fp16: a fresh scaler then starts
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed", 0.0))  # absent in checkpoints of older versions
        rng = state["rng"]
        if len(rng) == self.dist.world:  # the same layout: every rank continues its own stream
            torch.set_rng_state(rng[self.dist.rank]["cpu"])
            if self.device.type == "cuda" and "cuda" in rng[self.dist.rank]:
                torch.cuda.set_rng_state(rng[self.dist.rank]["cuda"], self.device)
        return True

    def remove_stale_temps(self) -> None:
        """Temporary checkpoint files of a writer killed mid-write (kill -9) go, in one line."""
        stale = remove_stale_temps(self.ckpt_dir) if self.ckpt_dir.is_dir() else []
        if stale:
            print(f"genflow-train: removed {len(stale)} stale temporary checkpoint file(s) of a killed run: "
                  f"{', '.join(p.name for p in stale)}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ batch
    def batches(self):
        """This rank's (x, y) batches from the current step on, epoch after epoch."""
        order = EpochOrder()
        workers = self.tc.num_workers
        loader = DataLoader(self.data.train, batch_size=self.per_rank, sampler=order, num_workers=workers,
                            drop_last=True, pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(self.tc.seed),  # not the global RNG
                            worker_init_fn=stops.worker_init(self.stop_signals) if workers else None)
        while True:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            order.order = list(self.sampler)[start * self.per_rank: self.steps_per_epoch * self.per_rank]
            yield from loader

    def draws(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Uniforms for t, noise, flips and label drops for the whole global batch; this rank's share.

        DistributedSampler hands rank r the global positions r, r + W, r + 2W, ...
        """
        g = step_generator(self.tc.seed, self.step, self.device)
        B, shape = self.tc.batch_size, tuple(self.data.shape)
        u = torch.rand(B, generator=g, device=self.device)
        noise = torch.randn((B, *shape), generator=g, device=self.device)
        flip = torch.rand(B, generator=g, device=self.device) < 0.5
        drop = torch.rand(B, generator=g, device=self.device) < self.tc.cond_drop_prob
        mine = slice(self.dist.rank, None, self.dist.world)
        return u[mine], noise[mine], flip[mine], drop[mine]

    def prepare(self, x: Tensor, y: Tensor, flip: Tensor, drop: Tensor) -> tuple[Tensor, dict]:
        """Flip images; labels for a conditional net, each ``drop`` one set to the null class
        (classifier-free guidance's joint training, Ho & Salimans 2022, Alg. 1)."""
        x = x.to(self.device, non_blocking=True)
        if self.data.flip:
            x = torch.where(flip.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)
        if self.channels_last:
            x = accel.channels_last(x)
        if not (self.data.num_classes and self.classes):
            return x, {}
        return x, {"y": torch.where(drop, self.classes, y.to(self.device))}

    # ------------------------------------------------------------------- step
    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Forward and backward over the micro-batches, then one guarded optimizer step."""
        u, noise, flip, drop = self.draws()
        x, cond = self.prepare(x, y, flip, drop)
        if self.channels_last:
            noise = accel.channels_last(noise)
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        parts = self.tc.micro_batches
        for m in range(parts):
            part = slice(m * self.micro, (m + 1) * self.micro)
            sync = contextlib.nullcontext() if m == parts - 1 or self.dist.world == 1 else self.model.no_sync()
            with sync:
                with self._autocast():
                    loss = self.process.loss(self.model, x[part], u=u[part], noise=noise[part],
                                             **{k: v[part] for k, v in cond.items()})
                self.scaler.scale(loss / parts).backward()
            total += loss.detach().float() / parts
        self.scaler.unscale_(self.opt)
        clip = self.tc.grad_clip if self.tc.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip)
        # DDP has averaged the gradients, so every rank sees the same norm and decides alike.
        if torch.isfinite(grad_norm):
            for group in self.opt.param_groups:
                group["lr"] = self.lr()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.ema.update(self.net)
            self.bad_streak = 0
        else:
            self.skip_step(total, grad_norm)
        return total, grad_norm

    def skip_step(self, loss: Tensor, grad_norm: Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update()  # lowers the fp16 loss scale
        self.bad_streak += 1
        self.skipped += 1
        self.log({"step": self.step, "skipped": True, "loss": float(loss), "grad_norm": float(grad_norm)})
        if self.bad_streak >= self.tc.max_bad_steps:
            raise TrainingError(f"{self.bad_streak} non-finite steps in a row (last at step {self.step}); "
                                "stopping (trainer.max_bad_steps)")

    def lr(self) -> float:
        """Linear warm-up to trainer.lr over trainer.warmup steps, then constant."""
        if self.tc.warmup == 0:
            return self.tc.lr
        return self.tc.lr * min(1.0, (self.step + 1) / self.tc.warmup)

    # -------------------------------------------------------------------- log
    def log(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.log(record)

    def elapsed(self) -> float:
        """Training seconds of this run and of the runs it resumes."""
        return self.elapsed_before + time.perf_counter() - self.clock

    def window_record(self, loss: float, grad_norm: Tensor, seen: int, steps: int, seconds: float) -> dict:
        """The record of a logging window: ``steps`` steps (``seen`` of them finite) in ``seconds``."""
        return {"step": self.step, "loss": loss, "grad_norm": float(grad_norm), "lr": self.lr(),
                "examples_per_sec": seen * self.tc.batch_size / seconds, "skipped_total": self.skipped,
                "elapsed_sec": self.elapsed(), "eta_sec": (self.tc.steps - self.step) * seconds / max(steps, 1),
                "peak_mem_mib": loggers.peak_memory_mib(self.device)}

    # ----------------------------------------------------------------- sample
    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """EMA samples with the configured sampler, as a PNG (a grid, or a 2-D histogram)."""
        if not self.dist.main:
            return None
        from torchvision.utils import save_image

        options = dict(self.cfg["sampler"])
        shape = (self.tc.num_samples, *self.data.shape)
        classes = self.classes  # a conditional net: slot i shows class i % classes, one per column
        cond = {"y": torch.arange(shape[0], device=self.device) % classes} if classes else {}
        try:
            out = samplers.sample(self.ema.model, self.process, sampler=options.pop("name"), shape=shape, cond=cond,
                                  device=self.device, generator=torch.Generator().manual_seed(self.tc.seed), **options)
        except samplers.NonFiniteSamples as err:  # a preview: training goes on (the loss has its own NaN guard)
            print(f"genflow-train: warning: step {self.step}: no sample grid: {err}", file=sys.stderr)
            return None
        path = self.run_dir / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(self.data.shape) == 3:
            nrow = classes or max(1, int(math.sqrt(self.tc.num_samples)))
            save_image((out.float().clamp(-1, 1) + 1) / 2, path, nrow=nrow)
        else:
            datasets.render_points(out.float().reshape(len(out), -1)[:, :2].cpu(), path)
        if self.metrics is not None:
            self.metrics.image("samples", path, self.step)
        return path

    # ------------------------------------------------------------------- save
    def save(self) -> None:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        rngs = distributed.gather_objects(rng)
        if self.dist.main:
            epoch, batch = divmod(self.step, self.steps_per_epoch)
            checkpoint.save({
                "step": self.step, "config": self.cfg, "model": self.net.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(), "rng": rngs,
                "data": {"epoch": epoch, "batch": batch, "world": self.dist.world},
                "data_shape": list(self.data.shape), "elapsed": self.elapsed(),
            }, self.ckpt_dir, keep=self.tc.keep)
        distributed.barrier()

    # -------------------------------------------------------------------- fit
    def fit(self) -> Path:
        """Train to trainer.steps (resuming if the run folder has a checkpoint), or until a stop signal
        or trainer.max_minutes (``self.stopped`` says which; the checkpoint is at that step); the run folder."""
        held = self.lock()
        try:
            with stops.Stops(self.stop_signals, self.tc.max_minutes) as stop:
                self.train(stop)
        finally:
            if held is not None:
                lock.release(held)
        return self.run_dir

    def lock(self) -> Path | None:
        """Rank 0 takes the run folder's lock (one line if it takes over a stale one); every rank
        refuses alike when another trainer holds it."""
        held, refusal = None, None
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                held, said = lock.acquire(self.run_dir)
                if said:
                    print(said, file=sys.stderr, flush=True)
            except lock.RunFolderInUse as err:
                refusal = str(err)
        refusal = distributed.gather_objects(refusal)[0]
        if refusal:
            raise lock.RunFolderInUse(refusal)
        return held

    def train(self, stop: stops.Stops) -> None:
        if self.dist.main:
            self.remove_stale_temps()
        distributed.barrier()
        resumed = self.resume()
        if self.dist.main:
            from omegaconf import OmegaConf

            OmegaConf.save(OmegaConf.create(self.cfg), self.run_dir / "config.yaml")
            self.metrics = MetricsLog(self.run_dir, self.tc.logger, self.step)
            self.log({"event": "resume" if resumed else "start", "step": self.step, "world": self.dist.world})
        self.clock = time.perf_counter()
        fault = Fault.from_env()
        bar = tqdm(total=self.tc.steps, initial=self.step, disable=not (self.dist.main and self.tc.progress),
                   desc="train", dynamic_ncols=True)
        window, seen, tick, first = torch.zeros((), device=self.device), 0, time.perf_counter(), self.step
        batches = self.batches()
        while self.step < self.tc.steps:
            x, y = next(batches)
            loss, grad_norm = self.train_step(x, y)
            if torch.isfinite(loss):
                window += loss
                seen += 1
            self.step += 1
            bar.update(1)
            fault.maybe_fire(self.step, self.dist.rank)
            if self.step % self.tc.log_every == 0 or self.step == self.tc.steps:
                mean = distributed.mean(window / max(seen, 1)).item()
                elapsed = time.perf_counter() - tick
                self.log(self.window_record(mean, grad_norm, seen, self.step - first, elapsed))
                bar.set_postfix(loss=f"{mean:.4f}")
                window, seen, tick, first = torch.zeros((), device=self.device), 0, time.perf_counter(), self.step
            saved = self.step % self.tc.ckpt_every == 0 or self.step == self.tc.steps
            if saved:
                self.save()
            if (self.tc.sample_every and self.step % self.tc.sample_every == 0) or self.step == self.tc.steps:
                self.sample_grid()
                distributed.barrier()
            fault.maybe_pause(self.step, self.dist.rank, stop, self.run_dir)
            if self.step < self.tc.steps and self.stop_here(stop, saved):
                break
        bar.close()

    def stop_here(self, stop: stops.Stops, saved: bool) -> bool:
        """At a step boundary: do the ranks agree to stop (a signal, the time budget)? Then save here."""
        self.stopped = stop.agreed(self.step, self.device)
        if self.stopped is None:
            return False
        if not saved:
            self.save()
        self.log({"event": "stop", "step": self.step, "reason": self.stopped})
        return True

    @property
    def exit_code(self) -> int:
        """0 when the run is done; trainer.requeue_exit_code when it stopped early (checkpoint saved)."""
        return self.tc.requeue_exit_code if self.stopped else 0

    def close(self) -> None:
        """Let go of the DDP wrapper before ``distributed.cleanup()``: it holds the process group, which
        would otherwise outlive ``destroy_process_group`` and be torn down with the interpreter at
        exit, where Gloo's threads can abort a finished run (SIGABRT, and torchrun reports a failure).
        The trainer stays usable on one process (``model`` is the bare net again, compiled or not)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if isinstance(self.model, DistributedDataParallel):
            self.model = self.model.module
            gc.collect()  # the wrapper may sit in reference cycles


class Fault:
    """Fault injection for the tests: ``GENFLOW_FAULT=exit@STEP[:RANK]`` ends the worker at STEP,
    ``pause@STEP[:RANK]`` holds it there until a stop signal, in the first attempt of a torchrun job
    (TORCHELASTIC_RESTART_COUNT = 0) or a plain run."""

    def __init__(self, step: int | None = None, rank: int = 0, kind: str = "exit") -> None:
        self.step, self.rank, self.kind = step, rank, kind

    @classmethod
    def from_env(cls) -> Fault:
        spec = os.environ.get("GENFLOW_FAULT", "")
        if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return cls()
        kind, _, where = spec.rpartition("@")
        step, _, rank = where.partition(":")
        return cls(int(step), int(rank or 0), kind or "exit")

    def maybe_fire(self, step: int, rank: int) -> None:
        if self.kind == "exit" and self.step == step and self.rank == rank:
            os._exit(17)

    def maybe_pause(self, step: int, rank: int, stop: stops.Stops, folder: Path) -> None:
        """``pause@STEP[:RANK]``: the rank waits at STEP's boundary, after writing ``paused_rankR`` (its pid),
        until it has a reason to stop or the file is removed (at most a minute): a test acts at a known step."""
        if self.kind != "pause" or self.step != step or self.rank != rank:
            return
        marker = folder / f"paused_rank{rank}"
        marker.write_text(str(os.getpid()))
        end = time.monotonic() + 60.0
        while not stop.local() and marker.exists() and time.monotonic() < end:
            time.sleep(0.02)
        marker.unlink(missing_ok=True)
