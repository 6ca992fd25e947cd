"""PCA of teacher feature vectors: fit once on a sample, project every image, store the basis.

The cache keeps the top K principal components in decreasing order of variance, so a trainer asking for
D <= K channels takes the first D and gets the best D-dimensional linear summary from one cache. The fit
accumulates first and second moments in float64 batch by batch (memory O(C^2), not O(M*C)), and the
basis is float32 everywhere it is used, so the creator and every later writer project with the same
numbers and produce the same bits.

The moments and the eigendecomposition run on one thread (`one_thread`): a BLAS splits a reduction
differently for another thread count, and the eigenvectors amplify a last-bit difference of the covariance
into the float32 components, so a cache would otherwise depend on the machine's thread count (a torchrun
rank runs with OMP_NUM_THREADS=1, a single process with all cores). The fit's matrix products are a small
part of its time next to the teacher's forward passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PCABasis:
    """x_pca = components @ (x - mean) per spatial position."""

    mean: np.ndarray  # (C,)
    components: np.ndarray  # (K, C), rows orthonormal, sorted by decreasing variance
    explained_variance: np.ndarray  # (K,)

    def __post_init__(self) -> None:
        self.mean = np.ascontiguousarray(self.mean, np.float32).reshape(-1)
        self.components = np.ascontiguousarray(self.components, np.float32)
        self.explained_variance = np.ascontiguousarray(self.explained_variance, np.float32).reshape(-1)
        c = self.mean.shape[0]
        if self.components.ndim != 2 or self.components.shape[1] != c:
            raise ValueError(f"components {self.components.shape} do not match mean ({c},)")
        if self.explained_variance.shape[0] != self.components.shape[0]:
            raise ValueError(
                f"explained_variance {self.explained_variance.shape} vs components {self.components.shape}"
            )

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, K, h, w) float32, on x's device."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, h, w), got {tuple(x.shape)}")
        mean = torch.from_numpy(self.mean).to(x.device).view(1, -1, 1, 1)
        comp = torch.from_numpy(self.components).to(x.device)  # (K, C)
        # (B, C, h, w) -> (B, K, h, w)
        return torch.einsum("kc,bchw->bkhw", comp, x.float() - mean)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads (OpenMP and MKL) set to 1 inside, restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class MomentAccumulator:
    """Running sum and sum of outer products of feature vectors (float64), fed batch by batch."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.sum = np.zeros(channels, np.float64)
        self.outer = np.zeros((channels, channels), np.float64)

    def update(self, x: torch.Tensor) -> None:
        """x (B, C, h, w) feature maps or (M, C) vectors."""
        v = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if x.ndim == 4 else x  # (M, C)
        v = v.detach().to("cpu", torch.float64)
        self.count += int(v.shape[0])
        with one_thread():  # the same summation order whatever the thread count
            self.sum += v.sum(0).numpy()
            self.outer += (v.T @ v).numpy()

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"PCA needs at least 2 feature vectors, got {self.count}")
        mean = self.sum / self.count
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return mean, (cov + cov.T) / 2

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of the raw vectors (for channels=full caches)."""
        mean, cov = self.mean_cov()
        return mean.astype(np.float32), np.sqrt(np.clip(np.diag(cov), 0, None)).astype(np.float32)

    def basis(self, k: int) -> PCABasis:
        mean, cov = self.mean_cov()
        c = cov.shape[0]
        if not 1 <= k <= c:
            raise ValueError(f"cannot keep {k} components of {c}-dimensional features")
        with one_thread():
            # torch's LAPACK under its own thread setting (numpy's BLAS threads cannot be pinned at run time)
            t_vals, t_vecs = torch.linalg.eigh(torch.from_numpy(cov))  # ascending
        vals, vecs = t_vals.numpy(), t_vecs.numpy()
        order = np.argsort(vals)[::-1][:k]
        comps = vecs[:, order].T  # (K, C)
        # Eigenvectors have an arbitrary sign; fix it (largest-|entry| positive) so fits are reproducible.
        flip = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
        comps = comps * np.where(flip == 0, 1.0, flip)[:, None]
        return PCABasis(mean, comps, np.clip(vals[order], 0, None))


def fit_pca(feats: torch.Tensor, k: int) -> PCABasis:
    """(M, C) feature vectors -> top-k PCABasis."""
    acc = MomentAccumulator(int(feats.shape[1]))
    acc.update(feats)
    return acc.basis(k)
