"""Backbones: a UNet for images, a residual MLP for vectors; ``model(x, t, y=None)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from genflow import registry
from genflow.nets.mlp import MLP
from genflow.nets.unet import UNet

NETS: dict[str, type[nn.Module]] = {"unet": UNet, "mlp": MLP}


def build(cfg: Any) -> nn.Module:
    """Build a network from ``{"name": <one of NETS>, **kwargs}``."""
    return registry.build(NETS, cfg, "net")


__all__ = ["MLP", "NETS", "UNet", "build"]
