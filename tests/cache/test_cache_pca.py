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


def _thread_counts() -> list[int]:
    """1, 2 and torch's default: MKL's eigensolver (and its matrix products) split the work by thread count."""
    return sorted({1, 2, torch.get_num_threads()})


def test_fit_is_the_same_bits_at_any_thread_count() -> None:
    """The moments and the eigendecomposition run on one thread whatever torch's setting, so a fit (and the
    cache built on it) does not depend on the thread count (1 in a torchrun rank, all cores in one process).
    At 384 channels (ViT-S's width) MKL's threaded eigensolver gives other last bits at 2 threads than at 1 in
    the low-variance components, so the whole basis is compared."""
    g = torch.Generator().manual_seed(0)
    c = 384
    x = torch.randn(16, c, 16, 16, generator=g) * torch.linspace(0.1, 3, c).view(1, -1, 1, 1) + 0.3
    before = torch.get_num_threads()
    fits = []
    try:
        for n in _thread_counts():
            torch.set_num_threads(n)
            acc = MomentAccumulator(c)
            for i in range(0, 16, 4):
                acc.update(x[i : i + 4])
            b = acc.basis(c)
            fits.append((acc.outer.tobytes(), b.components.tobytes(), b.explained_variance.tobytes()))
            assert torch.get_num_threads() == n  # restored after each one-thread section
    finally:
        torch.set_num_threads(before)
    assert all(f == fits[0] for f in fits)


def test_cache_bytes_do_not_depend_on_the_thread_count(demo_data, tmp_path, monkeypatch) -> None:
    """The same images and a ViT-S-wide teacher (384 channels) give the same cache bytes at 1 thread, 2 threads
    and torch's default: the PCA fit, the projection and the stored statistics included. Every component is
    kept (channels=384): the low-variance ones are where a threaded eigensolver differs."""
    from dinocache.cache import format as fmt
    from dinocache.precompute.run import main as precompute_main
    from dinocache.teacher import tiny

    from dinocache import cache
    from tests.conftest import TEST_IMGSZ

    wide = dict(hidden_size=384, num_hidden_layers=1, num_attention_heads=6, intermediate_size=768)
    monkeypatch.setitem(tiny.SIZES, "tiny", wide)
    teacher = tiny.make_tiny_teacher(tmp_path / "vits1", seed=0)
    before = torch.get_num_threads()
    stores = []
    try:
        for n in _thread_counts():
            torch.set_num_threads(n)
            store = tmp_path / f"t{n}.zarr"
            argv = [f"data={demo_data}", f"dino_root={teacher}", f"cache={store}", f"imgsz={TEST_IMGSZ}"]
            argv += ["batch=4", "workers=0", "device=cpu", "channels=384", "pca_fit_images=16"]
            assert precompute_main(argv) == 0
            stores.append(cache.open(str(store)))
    finally:
        torch.set_num_threads(before)
    names = (fmt.FEATURES, fmt.CHANNEL_MEAN, fmt.CHANNEL_STD, fmt.PCA_MEAN, fmt.PCA_COMPONENTS)
    for name in names:
        want = np.asarray(stores[0]._array(name)[...]).tobytes()
        assert all(np.asarray(s._array(name)[...]).tobytes() == want for s in stores[1:]), name


def test_precompute_at_default_threads_equals_one_thread(precompute_argv, reference_cache, tmp_path) -> None:
    """A cache made at torch's default thread count is the bytes of the one-thread reference cache."""
    import numpy as np
    from dinocache.cache import format as fmt
    from dinocache.precompute.run import main as precompute_main

    from dinocache import cache

    store = tmp_path / "default.zarr"
    assert precompute_main(precompute_argv(store)) == 0
    a, b = cache.open(str(store)), cache.open(str(reference_cache))
    for name in (fmt.FEATURES, fmt.CHANNEL_MEAN, fmt.CHANNEL_STD, fmt.PCA_MEAN, fmt.PCA_COMPONENTS):
        assert np.asarray(a._array(name)[...]).tobytes() == np.asarray(b._array(name)[...]).tobytes(), name
