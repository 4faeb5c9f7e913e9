"""Sample-quality metrics: sliced Wasserstein for vectors (Fréchet distance and precision/recall follow)."""

from genflow.metrics.wasserstein import sliced_wasserstein

__all__ = ["sliced_wasserstein"]
