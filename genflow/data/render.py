"""2-D points and densities to greyscale PNGs (white background, dark mass) without matplotlib."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import save_image


def _save_mass(mass: Tensor, path: str | Path) -> Path:
    """Write ``mass`` ``[H, W]`` (>= 0, row 0 = top) scaled by its max, dark where it is large."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unit = mass / mass.max().clamp_min(1e-30)
    save_image(1.0 - unit.unsqueeze(0), path)
    return path


def _grid_centres(bins: int, extent: float) -> Tensor:
    half = extent / bins
    return torch.linspace(-extent + half, extent - half, bins)


def render_points(points: Tensor, path: str | Path, *, bins: int = 200, extent: float = 4.5) -> Path:
    """A ``bins`` x ``bins`` histogram of ``points`` ``[n, 2]`` on [-extent, extent]^2, log-scaled counts."""
    points = points.detach().to("cpu", torch.float32)
    counts, _ = torch.histogramdd(points, bins=[bins, bins], range=[-extent, extent, -extent, extent])
    image = counts.T.flip(0)  # rows are y, top row is the largest y
    return _save_mass(torch.log1p(image), path)


def render_density(
    log_density_fn: Callable[[Tensor], Tensor],
    path: str | Path,
    *,
    bins: int = 200,
    extent: float = 4.5,
    batch_size: int = 8192,
    device: str | torch.device = "cpu",
) -> Path:
    """``exp(log_density_fn(x))`` on a ``bins`` x ``bins`` grid of cell centres, in batches of ``batch_size``."""
    centres = _grid_centres(bins, extent)
    ys, xs = torch.meshgrid(centres.flip(0), centres, indexing="ij")
    grid = torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(device)
    log_p = torch.cat([log_density_fn(chunk).detach().float().cpu().reshape(-1) for chunk in grid.split(batch_size)])
    finite = torch.isfinite(log_p)
    top = log_p[finite].max() if finite.any() else torch.tensor(0.0)
    density = torch.where(finite, torch.exp(log_p - top), torch.zeros(()))  # NaN and -inf count as 0
    return _save_mass(density.reshape(bins, bins), path)
