"""``DATASETS``: data set name -> builder of a :class:`Data`, and ``build`` from a config mapping."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from genflow import registry
from genflow.data.base import Data
from genflow.data.images import _cifar10_data, _digits_data, _folder_data, _mnist_data
from genflow.data.toy2d import toy2d_data

DATASETS: dict[str, Callable[..., Data]] = {
    "cifar10": _cifar10_data,
    "digits": _digits_data,
    "folder": _folder_data,
    "mnist": _mnist_data,
    "toy2d": toy2d_data,
}


def _check_required(cfg: Any) -> None:
    """One readable line for a missing required key (e.g. ``folder`` without ``root``)."""
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("name"), str) or cfg["name"] not in DATASETS:
        return  # registry.build reports these
    params = inspect.signature(DATASETS[cfg["name"]]).parameters.values()
    missing = [p.name for p in params if p.default is p.empty and p.name not in cfg]
    if missing:
        raise TypeError(f"data {cfg['name']!r} needs key(s): {', '.join(missing)} (e.g. data.{missing[0]}=...)")


def build(cfg: Mapping) -> Data:
    """``DATASETS[cfg["name"]](**rest)``; unknown names or keys give one-line ValueErrors."""
    _check_required(cfg)
    return registry.build(DATASETS, cfg, "data")
