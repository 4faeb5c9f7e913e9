"""Sample-quality metrics: Fréchet distance, improved precision/recall, sliced Wasserstein."""

from genflow.metrics.frechet import (
    frechet_distance,
    frechet_distance_of_features,
    frechet_distance_to_statistics,
    gaussian_statistics,
)
from genflow.metrics.precision_recall import precision_recall
from genflow.metrics.wasserstein import sliced_wasserstein

__all__ = ["frechet_distance", "frechet_distance_of_features", "frechet_distance_to_statistics", "gaussian_statistics",
           "precision_recall", "sliced_wasserstein"]
