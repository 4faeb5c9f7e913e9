"""Improved precision and recall (Kynkäänniemi et al. 2019): k-NN manifolds in feature space."""

from __future__ import annotations

import torch
from torch import Tensor


def _flat(x) -> Tensor:
    x = torch.as_tensor(x).double()
    return x.reshape(len(x), -1)


def knn_radii(features: Tensor, k: int, chunk: int = 4096) -> Tensor:
    """Distance from each feature vector to its k-th nearest other vector of the same set."""
    if len(features) <= k:
        raise ValueError(f"need more than k={k} feature vectors; got {len(features)}")
    radii = []
    for part in features.split(chunk):
        d = torch.cdist(part, features)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(radii)


def _coverage(manifold: Tensor, radii: Tensor, queries: Tensor, chunk: int = 4096) -> float:
    """Fraction of ``queries`` inside at least one ball (centre in ``manifold``, its k-NN radius)."""
    inside = [(torch.cdist(part, manifold) <= radii).any(dim=1) for part in queries.split(chunk)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    """(precision, recall): the share of fake samples on the real manifold, and of real samples
    on the fake manifold, each manifold a union of balls reaching every point's k-th neighbour."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    real, fake = _flat(real_features), _flat(fake_features)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    precision = _coverage(real, knn_radii(real, k), fake)
    recall = _coverage(fake, knn_radii(fake, k), real)
    return precision, recall
