"""Backbones: a UNet for images, a residual MLP for vectors, and nets other packages declare
under the ``genflow.nets`` entry point group; ``model(x, t, y=None)``.

A checkpoint stores a net's name and keyword arguments only. A built-in name always means the
built-in class: an entry point that declares one is ignored, so a checkpoint's ``unet`` is the
same net whatever is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from torch import nn

from genflow import registry
from genflow.nets.mlp import MLP
from genflow.nets.unet import UNet
from genflow.utils import error_line

NETS: dict[str, type[nn.Module]] = {"unet": UNet, "mlp": MLP}
ENTRY_POINTS = "genflow.nets"


def plugins() -> dict[str, list[metadata.EntryPoint]]:
    """The entry points of group ``genflow.nets`` by name, read fresh; built-in names left out."""
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINTS):
        if ep.name not in NETS:
            found.setdefault(ep.name, []).append(ep)
    return found


def names() -> str:
    """The built-in names and those installed packages declare, as one line."""
    extra = ", ".join(sorted(plugins())) or "none"
    return f"{', '.join(sorted(NETS))} (built in); from packages (entry point group {ENTRY_POINTS!r}): {extra}"


def net_class(name: Any) -> Callable[..., nn.Module]:
    """The class (or function) that builds the net ``name``: built in, else an installed package's."""
    if isinstance(name, str) and name in NETS:
        return NETS[name]
    declared = plugins().get(name, []) if isinstance(name, str) else []
    if not declared:
        raise ValueError(f"unknown net {name!r}; valid names: {names()}")
    if len(declared) > 1:
        raise ValueError(f"net {name!r} is declared by {len(declared)} entry points of group {ENTRY_POINTS!r} "
                         f"({', '.join(ep.value for ep in declared)}); uninstall all but one")
    ep = declared[0]
    try:
        factory = ep.load()
    except Exception as err:  # whatever a package's import raises, it is that package's entry point
        raise ValueError(f"net {name!r}: entry point {ep.value!r} (group {ENTRY_POINTS!r}) failed to load: "
                         f"{error_line(err)}") from None
    if not callable(factory):
        raise ValueError(f"net {name!r}: entry point {ep.value!r} is a {type(factory).__name__}, not a class")
    return factory


def with_time_scale(cfg: Any, process: Any = None) -> dict:
    """``cfg`` as a plain dict, ``time_scale`` set from ``process`` where it is null, or left out by
    a net that takes one: 1 on DDPM's integer steps, 1000 / t_max for continuous time.

    Without a process a null ``time_scale`` is a ``ValueError`` (the process decides it); one left
    out keeps the class's default.
    """
    cfg = registry.plain(cfg)
    return _time_scale(cfg, _factory(cfg), process)


def build(cfg: Any, process: Any = None) -> nn.Module:
    """Build a network from ``{"name": <built-in or plugin net>, **kwargs}``; a null ``time_scale``
    comes from ``process`` (see ``with_time_scale``)."""
    cfg = registry.plain(cfg)
    factory = _factory(cfg)
    try:
        net = registry.build({cfg["name"]: factory}, _time_scale(cfg, factory, process), "net")
    except ValueError:
        raise
    except Exception as err:  # e.g. a plugin's own checks: still one line naming the net
        raise ValueError(f"net {cfg['name']!r} cannot be built: {error_line(err)}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"net {cfg['name']!r} built a {type(net).__name__}, not a torch.nn.Module")
    return net


def _factory(cfg: dict) -> Callable[..., nn.Module]:
    if "name" not in cfg:
        raise ValueError(f"net config needs a 'name' key; valid names: {names()}")
    return net_class(cfg["name"])


def _time_scale(cfg: dict, factory: Callable, process: Any) -> dict:
    if cfg.get("time_scale") is not None or "time_scale" not in registry.keywords(factory)[0]:
        return cfg
    if process is not None:
        return {**cfg, "time_scale": 1.0 if process.discrete else 1000.0 / process.t_max}
    if "time_scale" in cfg:
        raise ValueError(f"net {cfg['name']!r} has time_scale: null, which the process sets (1 for DDPM's integer "
                         "steps, 1000 / t_max for continuous time); pass process= or set time_scale")
    return cfg


__all__ = ["ENTRY_POINTS", "MLP", "NETS", "UNet", "build", "names", "net_class", "plugins", "with_time_scale"]
