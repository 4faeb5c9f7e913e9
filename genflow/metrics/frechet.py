"""Fréchet distance between Gaussians fitted to feature sets (Heusel et al. 2017: FID)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _as_f64(a) -> Tensor:
    return torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a, dtype=torch.float64).cpu()


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the standard FID formula.

    tr (S1 S2)^(1/2) is computed as tr (S1^(1/2) S2 S1^(1/2))^(1/2), the same number (the two
    matrices are similar) from symmetric eigendecompositions only, so near-singular covariances
    (fewer samples than dimensions) need no epsilon and give no complex parts.
    """
    mu1, mu2, sigma1, sigma2 = map(_as_f64, (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"shapes do not match: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"sigma {tuple(sigma1.shape)}, {tuple(sigma2.shape)}")
    root1 = _psd_sqrt(sigma1)
    values = torch.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = values.clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return float(distance.clamp(min=0))


def gaussian_statistics(features) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) covariance of ``features`` [n, d], in float64."""
    x = _as_f64(features).reshape(len(features), -1)
    if len(x) < 2:
        raise ValueError("need at least 2 feature vectors for a covariance")
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def frechet_distance_of_features(a, b) -> float:
    """FD between Gaussians fitted to two feature sets."""
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def frechet_distance_to_statistics(features, mu, sigma) -> float:
    """FD between the Gaussian fitted to ``features`` [n, d] and N(mu, sigma) (e.g. cached data statistics).

    With fewer feature vectors than dimensions (n - 1 < d) the covariance C^T C / (n - 1) of the
    centered features C has rank n - 1, and the nonzero eigenvalues of S1 S2 are those of the
    n x n matrix C S2 C^T / (n - 1): the same number as ``frechet_distance``, without the d x d
    eigendecompositions.
    """
    x = _as_f64(features).reshape(len(features), -1)
    n, d = x.shape
    if n - 1 >= d:
        return frechet_distance(*gaussian_statistics(x), mu, sigma)
    mu, sigma = _as_f64(mu), _as_f64(sigma)
    if n < 2 or mu.shape != (d,) or sigma.shape != (d, d):
        raise ValueError(f"need >= 2 feature vectors of dimension {mu.numel()}; got {tuple(x.shape)}")
    centered = x - x.mean(0)
    small = centered @ sigma @ centered.T / (n - 1)
    trace_sqrt = torch.linalg.eigvalsh((small + small.T) / 2).clamp(min=0).sqrt().sum()
    distance = (x.mean(0) - mu).square().sum() + centered.square().sum() / (n - 1) + sigma.trace() - 2 * trace_sqrt
    return float(distance.clamp(min=0))
