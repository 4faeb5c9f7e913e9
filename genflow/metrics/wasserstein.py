"""Sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015)."""

from __future__ import annotations

import torch
from torch import Tensor


def _quantiles(values: Tensor, levels: Tensor) -> Tensor:
    """Empirical quantile function of each column (a step function: no interpolation)."""
    ordered = values.sort(dim=0).values
    index = (levels * values.shape[0]).floor().long().clamp_(max=values.shape[0] - 1)
    return ordered[index]


def sliced_wasserstein(x: Tensor, y: Tensor, *, num_projections: int = 256, p: int = 2,
                       generator: torch.Generator | None = None) -> float:
    """SW_p(x, y) = (E_theta W_p^p(theta.x, theta.y))^(1/p), theta uniform on the unit sphere.

    ``x`` (n, ...) and ``y`` (m, ...) are sample sets, flattened per sample. Each 1-D distance is
    exact between the two empirical measures (through their quantile functions, so n may differ
    from m); only the expectation over directions is a Monte-Carlo average.
    """
    x, y = x.flatten(1), y.flatten(1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    if min(len(x), len(y)) < 1 or num_projections < 1 or p < 1:
        raise ValueError("need non-empty sample sets, num_projections >= 1 and p >= 1")
    dtype = torch.promote_types(x.dtype, y.dtype)
    x, y = x.to(dtype), y.to(dtype)
    theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=dtype, device="cpu").to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    # W_p^p in 1-D is the integral over u of |F^-1(u) - G^-1(u)|^p; both quantile functions are
    # constant between the merged breakpoints k/n and k/m.
    levels = torch.cat([torch.arange(n, dtype=dtype, device=x.device) / n for n in (len(x), len(y))]).unique()
    widths = torch.diff(levels, append=levels.new_ones(1))
    mid = levels + widths / 2
    gap = _quantiles(x @ theta, mid) - _quantiles(y @ theta, mid)
    return float((widths.unsqueeze(1) * gap.abs() ** p).sum(0).mean() ** (1 / p))
