"""2-D toy distributions as in FFJORD (Grathwohl et al., 2019, ``lib/toy_data.py``), in torch.

Each ``TOYS[kind](n, generator)`` returns ``n`` float32 points ``[n, 2]``, roughly zero-mean, a few
units across; a fixed generator seed gives identical points.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from genflow.data.base import Data
from genflow.utils import check_choice


def _rand(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=generator, device=generator.device)


def _randn(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=generator, device=generator.device)


def _coin(n: int, generator: torch.Generator) -> Tensor:
    """``n`` fair booleans (which arm, circle or moon a point belongs to)."""
    return _rand(generator, n) < 0.5


def _polar(radius: Tensor, angle: Tensor) -> Tensor:
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)


def eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """8 Gaussians (std 0.5) on a circle of radius 4, all divided by 1.414 (FFJORD '8gaussians')."""
    mode = torch.randint(0, 8, (n,), generator=generator, device=generator.device)
    centres = _polar(torch.full((n,), 4.0, device=mode.device), mode * (math.pi / 4))
    return (centres + 0.5 * _randn(generator, n, 2)) / 1.414


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the 8 'black' cells of a 4x4 board on [-4, 4]^2 (FFJORD 'checkerboard')."""
    x1 = _rand(generator, n) * 4 - 2
    row = torch.randint(0, 2, (n,), generator=generator, device=generator.device)
    x2 = _rand(generator, n) - 2 * row + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1) * 2


def spirals(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved spiral arms, each 1.5 turns (FFJORD '2spirals')."""
    turn = torch.sqrt(_rand(generator, n)) * 3 * math.pi
    arm = torch.stack([-torch.cos(turn) * turn, torch.sin(turn) * turn], dim=1) + 0.5 * _rand(generator, n, 2)
    sign = torch.where(_coin(n, generator), 1.0, -1.0).unsqueeze(1)
    return sign * arm / 3 + 0.1 * _randn(generator, n, 2)


def circles(n: int, generator: torch.Generator) -> Tensor:
    """Two concentric circles, radii 3 and 1.5, noise std 0.24 (sklearn ``make_circles`` x 3)."""
    radius = torch.where(_coin(n, generator), 1.0, 0.5)
    points = _polar(radius, 2 * math.pi * _rand(generator, n)) + 0.08 * _randn(generator, n, 2)
    return points * 3


def moons(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved half circles with noise 0.1, scaled x2 and centred (FFJORD 'moons')."""
    t = math.pi * _rand(generator, n)
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    points = torch.where(_coin(n, generator).unsqueeze(1), upper, lower) + 0.1 * _randn(generator, n, 2)
    return points * 2 + torch.tensor([-1.0, -0.2], device=points.device)


TOYS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "circles": circles,
    "moons": moons,
    "spirals": spirals,
}


def toy_sample(kind: str, n: int, seed: int = 0) -> Tensor:
    """``n`` points ``[n, 2]`` (float32, CPU) from the toy ``kind``, reproducible from ``seed``."""
    check_choice(kind, tuple(TOYS), "toy kind")
    return TOYS[kind](n, torch.Generator().manual_seed(seed)).float()


def _points(kind: str, n: int, seed: int) -> TensorDataset:
    return TensorDataset(toy_sample(kind, n, seed), torch.zeros(n, dtype=torch.int64))


def toy2d_data(kind: str = "8gaussians", size: int = 20000, test_size: int = 5000, seed: int = 0) -> Data:
    """Train/test sets of ``kind`` points with labels 0; the test set is drawn with ``seed + 1``."""
    check_choice(kind, tuple(TOYS), "toy kind")
    return Data(
        train=_points(kind, size, seed),
        test=_points(kind, test_size, seed + 1),
        shape=(2,),
        num_classes=None,
        flip=False,
    )
