"""PCA basis: fit on feature vectors, projection, ordering, reproducible signs, streaming moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dinocache.cache.pca import MomentAccumulator, PCABasis, fit_pca


def low_rank(m: int = 4000, c: int = 24, r: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])[:r]
    z = torch.randn(m, r, generator=g) * scales  # (M, r)
    basis = torch.linalg.qr(torch.randn(c, r, generator=g))[0].T  # (r, C) orthonormal rows
    return z @ basis + 3.0 + 0.01 * torch.randn(m, c, generator=g)  # (M, C)


def test_fit_recovers_variances_and_orthonormal_sorted_components() -> None:
    x = low_rank()
    b = fit_pca(x, 5)
    assert b.components.shape == (5, 24) and b.mean.shape == (24,) and b.components.dtype == np.float32
    np.testing.assert_allclose(b.components @ b.components.T, np.eye(5), atol=1e-5)
    assert (np.diff(b.explained_variance) < 0).all()
    np.testing.assert_allclose(np.sqrt(b.explained_variance), [8, 4, 2, 1, 0.5], rtol=0.1)
    np.testing.assert_allclose(b.mean, x.mean(0).numpy(), rtol=1e-4)


def test_project_maps_and_matches_numpy() -> None:
    x = low_rank(m=2 * 3 * 4)
    b = fit_pca(low_rank(), 4)
    maps = x.reshape(2, 3, 4, 24).permute(0, 3, 1, 2)  # (B, C, h, w)
    y = b.project(maps)  # (B, K, h, w)
    assert y.shape == (2, 4, 3, 4)
    want = (x.numpy() - b.mean) @ b.components.T  # (M, K)
    np.testing.assert_allclose(y.permute(0, 2, 3, 1).reshape(-1, 4).numpy(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"expected \(B, 24, h, w\)"):
        b.project(torch.zeros(1, 5, 2, 2))


def test_streaming_equals_one_shot_and_signs_are_fixed() -> None:
    x = low_rank()
    acc = MomentAccumulator(24)
    for part in x.split(700):
        acc.update(part)
    a, b = acc.basis(3), fit_pca(x, 3)
    np.testing.assert_allclose(a.components, b.components, atol=1e-5)
    # eigenvector signs are arbitrary; the fit makes each component's largest entry positive
    idx = np.abs(a.components).argmax(1)
    assert (a.components[np.arange(3), idx] > 0).all()
    mean, std = acc.channel_stats()
    np.testing.assert_allclose(std, x.std(0).numpy(), rtol=1e-3)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="cannot keep 30 components"):
        fit_pca(low_rank(), 30)
    with pytest.raises(ValueError, match="do not match"):
        PCABasis(np.zeros(3), np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="at least 2"):
        MomentAccumulator(3).basis(1)
