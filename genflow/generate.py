"""Drawing a large set of samples in shards, on one process or many: genflow-sample's library side.

Sample i's noise depends only on (seed, i) (``NoiseSource``), and the shards (``shard_ranges``) and the
batches inside a shard depend only on the number of samples, the shard size and the batch size, never
on the world size: every sample is drawn in the same batch on any number of ranks, so the merged set
is bit-identical. Ranks take contiguous shares of the shards still missing; each writes its shards
atomically as ``shard-START-STOP.npz`` (samples START..STOP-1, their labels and the settings key), so a
rerun with the same settings reuses the complete shards and draws only the rest.

    recipe = Recipe(net, process, sampler="ddim", steps=50, shape=(3, 32, 32), seed=0)
    x = draw(recipe, range(1000, 2000)).samples             # samples 1000..1999, as in any larger run
    generate(recipe, Plan(Path("out/shards"), num=50_000, shard_size=2560, key="..."), rank=r, world=w)
    merged = merge(plan)                                     # rank 0, after generate on every rank
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow.processes import GaussianPath
from genflow.training import distributed
from genflow.utils import remove_stale_temps, to_uint8, write_atomically


@dataclass(frozen=True)
class Recipe:
    """What to draw: the model under the process, the sampler with its steps and options, one sample's
    shape, the seed, the classes cycled over the sample indices (None: unconditional), the guidance
    weight (``num_classes``: the net's null class is ``num_classes``), the batch size, and ``pad_to``:
    a partial batch is drawn at this size and cut (a compiled or CUDA-graphed net keeps one shape)."""

    model: Callable[..., Tensor]
    process: GaussianPath
    sampler: str
    steps: int
    shape: tuple[int, ...]
    options: dict = field(default_factory=dict)
    seed: int = 0
    classes: tuple[int, ...] | None = None
    num_classes: int | None = None
    guidance: float = 0.0
    batch_size: int = 256
    pad_to: int | None = None
    device: str = "cpu"
    progress: bool = False


@dataclass(frozen=True)
class Drawn:
    """Samples (float32, CPU), their class labels (None: unconditional), the NFE per sample and the
    rows each network evaluation ran per sample (2 under guidance)."""

    samples: Tensor
    labels: Tensor | None
    nfe: int
    forward_batch_factor: int


def labels(recipe: Recipe, indices: range) -> Tensor | None:
    """The classes cycled over the sample indices: sample i gets classes[i % len(classes)]."""
    if recipe.classes is None:
        return None
    return torch.tensor(recipe.classes)[torch.arange(indices.start, indices.stop) % len(recipe.classes)]


def draw(recipe: Recipe, indices: range) -> Drawn:
    """Samples ``indices`` (absolute indices, a contiguous range) in batches from ``indices.start``."""
    from genflow import samplers
    from genflow.samplers.guidance import null_condition

    batches, nfe, factor = [], 0, 1
    for start in range(indices.start, indices.stop, recipe.batch_size):
        n = min(recipe.batch_size, indices.stop - start)
        size = max(n, recipe.pad_to or 0)
        y = labels(recipe, range(start, start + size))
        cond = {} if y is None else {"y": y.to(recipe.device)}
        result = samplers.run(recipe.model, recipe.process, sampler=recipe.sampler, steps=recipe.steps,
                              shape=(size, *recipe.shape), generator=torch.Generator().manual_seed(recipe.seed),
                              seed_offset=start, device=recipe.device, progress=recipe.progress, cond=cond,
                              guidance=recipe.guidance, **recipe.options,
                              uncond=null_condition(cond, recipe.num_classes) if recipe.guidance else None)
        batches.append(result.samples[:n].float().cpu())
        nfe, factor = result.nfe, result.forward_batch_factor
    return Drawn(torch.cat(batches), labels(recipe, indices), nfe, factor)


@dataclass(frozen=True)
class Plan:
    """Where the shards go, how many samples in all, the samples per shard, the settings key stored in
    every shard (a shard with another key is drawn again, never mixed in), and an optional folder for
    one 8-bit PNG per sample (``png_rounding``: see ``to_uint8``)."""

    folder: Path
    num: int
    shard_size: int
    key: str
    png_dir: Path | None = None
    png_rounding: str = "edm"

    @property
    def ranges(self) -> list[range]:
        return shard_ranges(self.num, self.shard_size)


def shard_ranges(num: int, shard_size: int) -> list[range]:
    """The shards' index ranges: ``shard_size`` samples each, the last one shorter; no world size."""
    if num < 1 or shard_size < 1:
        raise ValueError(f"shard_ranges needs num >= 1 and shard_size >= 1; got {num}, {shard_size}")
    return [range(start, min(start + shard_size, num)) for start in range(0, num, shard_size)]


SHARDS_WANTED, MAX_SHARD_BATCHES = 64, 10


def default_shard_size(num: int, batch_size: int) -> int:
    """Whole batches per shard, 1 to 10, as many as leave about 64 shards: enough to keep up to 64
    ranks busy and make a rerun lose little, few enough that a shard is more than a file per batch."""
    batches = -(-num // (SHARDS_WANTED * batch_size))  # ceil
    return batch_size * min(max(batches, 1), MAX_SHARD_BATCHES)


def shard_path(folder: Path, indices: range) -> Path:
    return Path(folder) / f"shard-{indices.start:08d}-{indices.stop:08d}.npz"


def write_shard(path: Path, drawn: Drawn, key: str) -> None:
    arrays = {"samples": drawn.samples.numpy(), "key": np.array(key), "nfe": np.array(drawn.nfe),
              "forward_batch_factor": np.array(drawn.forward_batch_factor)}
    if drawn.labels is not None:
        arrays["labels"] = drawn.labels.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: np.savez(f, **arrays))


def read_shard(path: Path, indices: range, key: str) -> Drawn | None:
    """The shard when it is complete and was drawn with settings ``key``; None when it is missing,
    truncated or damaged, or was drawn with other settings."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "key" not in z.files or str(z["key"]) != key:
                return None
            samples = torch.from_numpy(z["samples"])
            found = torch.from_numpy(z["labels"]) if "labels" in z.files else None
            nfe, factor = int(z["nfe"]), int(z["forward_batch_factor"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return Drawn(samples, found, nfe, factor) if len(samples) == len(indices) else None


def missing(plan: Plan) -> list[range]:
    """The shards of ``plan`` still to draw (after removing temporary files of killed writers)."""
    if plan.folder.is_dir():
        remove_stale_temps(plan.folder)
    return [r for r in plan.ranges if read_shard(shard_path(plan.folder, r), r, plan.key) is None]


def png_width(num: int) -> int:
    return max(6, len(str(num - 1)))  # 000123.png, as EDM's generate.py names them


def write_pngs(plan: Plan, indices: range, samples: Tensor, only_missing: bool = False) -> None:
    """One 8-bit PNG per sample, named by its zero-padded index, each written atomically."""
    from PIL import Image

    plan.png_dir.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(samples, plan.png_rounding).permute(0, 2, 3, 1).numpy()  # N, H, W, C
    for i, image in zip(indices, pixels):
        path = plan.png_dir / f"{i:0{png_width(plan.num)}d}.png"
        if not (only_missing and path.is_file()):
            picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            write_atomically(path, lambda f, p=picture: p.save(f, format="PNG"))


@dataclass(frozen=True)
class Generated:
    """How a run got its shards: reused complete ones, drawn the rest (over all ranks)."""

    reused: int
    drawn: int


def generate(recipe: Recipe, plan: Plan, *, rank: int = 0, world: int = 1) -> Generated:
    """Draw this rank's share of the missing shards and write them (and their PNGs). Collective under
    torchrun: every rank calls it; rank 0 finds the missing shards; a failure on any rank fails all."""
    todo = distributed.gather_checked(lambda: missing(plan) if rank == 0 else None)[0]
    done = [r for r in plan.ranges if r not in todo]

    def work() -> None:
        for indices in [todo[i] for i in distributed.share(len(todo), rank, world)]:
            drawn = draw(recipe, indices)
            write_shard(shard_path(plan.folder, indices), drawn, plan.key)
            if plan.png_dir is not None:
                write_pngs(plan, indices, drawn.samples)
        if plan.png_dir is not None:  # a reused shard's PNGs, where a killed run left some out
            for indices in [done[i] for i in distributed.share(len(done), rank, world)]:
                shard = read_shard(shard_path(plan.folder, indices), indices, plan.key)
                if shard is not None:  # damaged since rank 0 looked: the merge says so
                    write_pngs(plan, indices, shard.samples, only_missing=True)

    distributed.agree(work)
    return Generated(reused=len(done), drawn=len(todo))


def merge(plan: Plan) -> Drawn:
    """Every shard of ``plan``, in index order, as one set (after ``generate`` on every rank)."""
    parts = []
    for indices in plan.ranges:
        part = read_shard(shard_path(plan.folder, indices), indices, plan.key)
        if part is None:
            raise RuntimeError(f"{shard_path(plan.folder, indices)} is missing, damaged or drawn with other "
                               "settings; run the same command again")
        parts.append(part)
    found = None if parts[0].labels is None else torch.cat([p.labels for p in parts])
    return Drawn(torch.cat([p.samples for p in parts]), found, parts[0].nfe, parts[0].forward_batch_factor)
