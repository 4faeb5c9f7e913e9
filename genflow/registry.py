"""Build objects from plain ``{"name": ..., **kwargs}`` mappings, one explicit dict per kind."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def plain(cfg: Any) -> dict:
    """A plain ``dict`` from a mapping or an OmegaConf config."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core
        pass
    if not isinstance(cfg, Mapping):
        raise ValueError(f"expected a mapping with a 'name' key, got {type(cfg).__name__}")
    return dict(cfg)


def build(registry: Mapping[str, Callable[..., T]], cfg: Any, kind: str) -> T:
    """Instantiate ``registry[cfg["name"]](**rest)``, refusing unknown names and unknown keys.

    Errors are one ``ValueError`` line that names what was wrong and what is allowed.
    """
    kwargs = plain(cfg)
    name = kwargs.pop("name", None)
    if name is None:
        raise ValueError(f"{kind} config needs a 'name' key; valid names: {', '.join(sorted(registry))}")
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(registry))}")
    factory = registry[name]
    allowed, accepts_any = keywords(factory)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown and not accepts_any:
        raise ValueError(
            f"unknown key(s) {', '.join(unknown)} for {kind} {name!r}; allowed: {', '.join(allowed)}"
        )
    return factory(**kwargs)


def keywords(factory: Callable) -> tuple[list[str], bool]:
    """The keyword arguments ``factory`` names, and whether it also takes ``**kwargs``."""
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return [p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)], accepts_any
