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


def random_spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), **F64)
    return a @ a.T / d + 0.1 * torch.eye(d, **F64)


def test_frechet_distance_closed_forms():
    from genflow.metrics import frechet_distance

    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([0.5], [[4.0]], [-1.0], [[0.25]]) == pytest.approx(1.5**2 + 1.5**2, rel=1e-12)
    # commuting (diagonal) covariances: |dm|^2 + sum (sqrt a - sqrt b)^2
    a, b = torch.tensor([1.0, 2.0, 0.5], **F64), torch.tensor([0.3, 2.0, 4.0], **F64)
    m1, m2 = torch.tensor([0.0, 1.0, 2.0], **F64), torch.tensor([1.0, 1.0, 0.0], **F64)
    expected = (m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(expected.item(), rel=1e-12)


def test_frechet_distance_matches_the_scipy_sqrtm_formula_for_non_commuting_covariances():
    import numpy as np
    from scipy import linalg

    from genflow.metrics import frechet_distance

    s1, s2 = random_spd(6, 0), random_spd(6, 1)
    m1, m2 = torch.randn(6, **F64), torch.randn(6, **F64)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real  # the reference FID code's route
    expected = float(((m1 - m2) ** 2).sum() + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_a_feature_set_with_itself_is_zero_even_when_singular():
    from genflow.metrics import frechet_distance_of_features

    g = torch.Generator().manual_seed(0)
    assert frechet_distance_of_features(torch.randn(500, 8, generator=g), torch.randn(500, 8, generator=g)) > 0
    few = torch.randn(20, 64, generator=g, **F64)  # 20 samples in 64-D: a rank-19 covariance
    assert frechet_distance_of_features(few, few) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_few_features_to_statistics_matches_the_full_formula():
    """The n x n route (fewer samples than dimensions) against the d x d eigendecompositions."""
    from genflow.metrics import frechet_distance, frechet_distance_to_statistics, gaussian_statistics

    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(40, generator=g, **F64), random_spd(40, 2)
    for n in (2, 7, 41, 60):  # rank 1 and 6, then the full route (n - 1 >= d)
        x = torch.randn(n, 40, generator=g, **F64) * 1.5 + 0.3
        expected = frechet_distance(*gaussian_statistics(x), mu, sigma)
        # rel 1e-7: the d x d route adds the square roots of round-off eigenvalues (~1e-16) of a singular matrix
        assert frechet_distance_to_statistics(x, mu, sigma) == pytest.approx(expected, rel=1e-7)
    few = torch.randn(5, 40, generator=g, **F64)
    assert frechet_distance_to_statistics(few, *gaussian_statistics(few)) == pytest.approx(0.0, abs=1e-9)


def test_precision_recall_of_identical_disjoint_and_half_covered_sets():
    from genflow.metrics import precision_recall

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 5, generator=g, **F64)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    half = torch.cat([real[:150], real[:150] + 100.0])  # half on the real manifold, half far away
    precision, _ = precision_recall(real, half)
    assert precision == 0.5
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(real[:3], real)


def test_reference_statistics_are_computed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from genflow.metrics import gaussian_statistics
    from genflow.metrics.reference import FeatureSpace, cache_root, reference

    monkeypatch.setenv("GENFLOW_CACHE", str(tmp_path))
    calls = []

    def extract(x):
        calls.append(len(x))
        return x.double() * 2.0

    space = FeatureSpace("doubled vectors", "doubled v1", extract)
    data = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    cfg = {"name": "toy2d", "size": 50}
    fresh = reference(cfg, "test", 50, lambda: data, space)
    cached = reference(cfg, "test", 50, lambda: data, space)
    assert (fresh.status, cached.status, calls) == ("computed", "cached", [50])
    assert fresh.path == cached.path and fresh.path.parent == cache_root() == tmp_path / "reference_stats"
    mu, sigma = gaussian_statistics(data.double() * 2.0)
    for ref in (fresh, cached):
        assert torch.equal(ref.mu, mu) and torch.equal(ref.sigma, sigma) and ref.features is None
    # another data config, split, number of examples or feature space: another file, computed anew
    others = [reference({**cfg, "size": 60}, "test", 50, lambda: data, space),
              reference(cfg, "train", 50, lambda: data, space),
              reference(cfg, "test", 40, lambda: data[:40], space),
              reference(cfg, "test", 50, lambda: data, FeatureSpace("doubled vectors", "doubled v2", extract))]
    assert [r.status for r in others] == ["computed"] * 4
    assert len({fresh.path, *(r.path for r in others)}) == 5 and len(calls) == 5
    # precision/recall needs the features: a statistics-only file is computed again, with them
    with_features = reference(cfg, "test", 50, lambda: data, space, need_features=True)
    assert with_features.status == "computed" and torch.equal(with_features.features, data.double() * 2.0)
    again = reference(cfg, "test", 50, lambda: data, space, need_features=True)
    assert again.status == "cached" and torch.equal(again.features, with_features.features)
    assert reference(cfg, "test", 50, lambda: data, space).status == "cached"
    fresh.path.write_bytes(b"PK\x03\x04 half a file")  # a damaged file is recomputed and replaced
    assert reference(cfg, "test", 50, lambda: data, space).status == "computed"
    assert reference(cfg, "test", 50, lambda: data, space).status == "cached"
    assert not [p for p in fresh.path.parent.iterdir() if ".tmp-" in p.name]
