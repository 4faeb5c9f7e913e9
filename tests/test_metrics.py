"""Metrics against closed forms."""

from __future__ import annotations

import pytest
import torch

from genflow.metrics import sliced_wasserstein

F64 = dict(dtype=torch.float64)


def test_sliced_wasserstein_of_a_shift_is_the_projected_shift():
    """Y = X + delta: every sorted projection moves by theta.delta, so SW_2^2 = mean (theta.delta)^2
    over the same directions, whose expectation is |delta|^2 / d."""
    g = torch.Generator().manual_seed(0)
    x, delta = torch.randn(500, 8, generator=g, **F64), torch.randn(8, generator=g, **F64)
    sw = sliced_wasserstein(x, x + delta, num_projections=4000, generator=torch.Generator().manual_seed(1))
    theta = torch.randn(8, 4000, generator=torch.Generator().manual_seed(1), **F64)
    theta = theta / theta.norm(dim=0)
    assert sw**2 == pytest.approx(((delta @ theta) ** 2).mean().item(), rel=1e-10)
    assert sw**2 == pytest.approx(delta.square().sum().item() / 8, rel=0.08)  # Monte-Carlo over directions


def test_sliced_wasserstein_in_one_dimension_with_unequal_sizes():
    """Quantile functions of {0, 1} and {0, 1/2, 1} differ by 1/2 on [1/3, 2/3): W_1 = 1/6, W_2 = sqrt(1/12)."""
    a, b = torch.tensor([[0.0], [1.0]], **F64), torch.tensor([[0.5], [0.0], [1.0]], **F64)
    assert sliced_wasserstein(a, b, p=1, num_projections=3) == pytest.approx(1 / 6, rel=1e-12)
    assert sliced_wasserstein(a, b, num_projections=3) == pytest.approx((1 / 12) ** 0.5, rel=1e-12)
    assert sliced_wasserstein(b, b[[2, 0, 1]]) == 0.0


def test_sliced_wasserstein_between_scaled_gaussians():
    """Every projection of N(0, I) and N(0, s^2 I) is N(0, 1) vs N(0, s^2): W_2 = |1 - s| exactly."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(20000, 4, generator=g, **F64), 1.5 * torch.randn(20000, 4, generator=g, **F64)
    assert sliced_wasserstein(x, y, generator=g) == pytest.approx(0.5, abs=0.02)


def test_sliced_wasserstein_refuses_mismatched_sets():
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="non-empty"):
        sliced_wasserstein(torch.zeros(0, 2), torch.zeros(3, 2))
