"""Reference statistics of a data split in a feature space, cached on disk.

The Fréchet distance needs the mean and covariance of the data's features, precision/recall the
features themselves; both depend only on the data config, the split, the number of examples and
the feature space, so they are computed once and kept under ``$GENFLOW_CACHE/reference_stats/``
(default ``~/.cache/genflow``) as ``.npz`` files written atomically (temporary file, then rename).
The file name is a hash of that identity, and the file stores the identity too: a file that does
not match it, or cannot be read, is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow.metrics.frechet import gaussian_statistics
from genflow.utils import cache_dir, write_atomically


@dataclass(frozen=True)
class FeatureSpace:
    """``extract(images) -> [n, d]``; ``name`` is for people, ``identity`` changes whenever the
    features would (a network's version and a hash of its weights)."""

    name: str
    identity: str
    extract: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Reference:
    """Mean and covariance (float64) of the reference features; the features when asked for;
    ``status`` is "computed" or "cached"."""

    mu: Tensor
    sigma: Tensor
    features: Tensor | None
    examples: int
    status: str
    path: Path


def cache_root() -> Path:
    return cache_dir() / "reference_stats"


def cache_path(identity: Mapping) -> Path:
    text = json.dumps(identity, sort_keys=True, default=str)
    return cache_root() / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"


def identity_of(data: Mapping, split: str, examples: int, space: FeatureSpace) -> dict:
    return {"data": dict(data), "split": split, "examples": int(examples), "features": space.identity}


def reference(data: Mapping, split: str, examples: int, images: Callable[[], Tensor], space: FeatureSpace, *,
              need_features: bool = False) -> Reference:
    """The reference of ``examples`` examples of ``split`` of the data config ``data`` in ``space``:
    read from the cache, else computed from ``images()`` and cached."""
    found = lookup(data, split, examples, space, need_features=need_features)
    if found is not None:
        return found
    return store(data, split, examples, space, space.extract(images()), need_features=need_features)


def lookup(data: Mapping, split: str, examples: int, space: FeatureSpace, *,
           need_features: bool = False) -> Reference | None:
    """The cached reference, or None (none yet, another identity, unreadable, or without features)."""
    identity = identity_of(data, split, examples, space)
    return _read(cache_path(identity), identity, need_features)


def store(data: Mapping, split: str, examples: int, space: FeatureSpace, features: Tensor, *,
          need_features: bool = False, write: bool = True) -> Reference:
    """The reference of ``features`` (computed by the caller, e.g. over the ranks), cached when ``write``."""
    identity = identity_of(data, split, examples, space)
    path = cache_path(identity)
    if len(features) != examples:
        raise ValueError(f"expected {examples} reference examples, got {len(features)}")
    mu, sigma = gaussian_statistics(features)
    arrays = {"identity": np.array(json.dumps(identity, sort_keys=True, default=str)), "mu": mu.numpy(),
              "sigma": sigma.numpy()}
    if need_features:
        arrays["features"] = features.numpy()
    if write:
        _write(path, arrays)
    return Reference(mu, sigma, features if need_features else None, examples, "computed", path)


def _read(path: Path, identity: Mapping, need_features: bool) -> Reference | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["identity"]) != json.dumps(identity, sort_keys=True, default=str):
                return None
            if need_features and "features" not in f.files:
                return None
            features = torch.from_numpy(f["features"]) if "features" in f.files and need_features else None
            mu, sigma = torch.from_numpy(f["mu"]), torch.from_numpy(f["sigma"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable: compute it again and replace the file
    return Reference(mu, sigma, features, int(identity["examples"]), "cached", path)


def _write(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: np.savez(f, **arrays))
