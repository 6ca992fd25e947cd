"""The PCA fit pass of a precompute run: the teacher on evenly spaced whole write-pass batches, their
moments -> the PCA basis (or the raw channels' mean/std), and the raw outputs of the batches this writer
owns kept in RAM, so the write pass stores them instead of running the teacher on those images again."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from dinocache.precompute.images import DECODED, Loaded, flipped_view, prefetch, to_batch
from dinocache.precompute.job import Job

# (shard, b0) -> (raw teacher output (B, C_t, h, w), the same of the flipped views or None, loaded images
# without their pixels) of the fit batches kept for the write pass
Kept = dict[tuple[int, int], tuple[Any, Any, list[Loaded]]]


def fit_batches(job: Job, spec: Any) -> list[tuple[int, int, range]]:
    """Evenly spaced whole write-pass batches covering at least `pca_fit_images` images.

    Whole batches, so the fit pass runs the teacher on exactly the tensors the write pass would and its
    outputs can be written as rows (teacher once per image, bit-identical to recomputing them).
    """
    allb = job.batches(spec)
    want = spec.pca_fit_images
    k = min(len(allb), -(-want // job.cfg.batch))
    while True:
        pick = np.unique(np.linspace(0, len(allb) - 1, k).round().astype(int))
        if sum(len(allb[i][2]) for i in pick) >= want or k >= len(allb):
            return [allb[i] for i in pick]
        k += 1


def fit(job: Job, spec: Any, teacher: Any, keep_bytes: int) -> tuple[Any, np.ndarray, np.ndarray, Kept]:
    """(PCA basis or None, per-stored-channel mean, std, kept outputs) from evenly spaced whole batches.

    Keeps the raw teacher outputs of the batches this writer will write, up to `keep_bytes`."""
    import torch
    from dinocache.cache.pca import MomentAccumulator
    from tqdm import tqdm

    cfg = job.cfg
    picked = fit_batches(job, spec)
    rows = [r for _, _, rr in picked for r in rr]
    acc = MomentAccumulator(teacher.channels)
    images = prefetch(job.files, rows, cfg.imgsz, job.pool, ahead=2 * cfg.batch)
    used, kept_bytes = 0, 0
    kept: Kept = {}
    errors: list[str] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(rows), unit="img", desc="pca fit", dynamic_ncols=True, file=sys.stderr)
    try:
        with torch.inference_mode():
            for s, b0, rr in picked:
                chunk = [next(images) for _ in rr]
                for i, ld in zip(rr, chunk):
                    if ld.rgb is None:
                        errors.append(f"{job.files[i]}: {ld.error}")
                        tqdm.write(f"precompute: PCA fit skipped {errors[-1]}", file=sys.stderr)
                good = [j for j, ld in enumerate(chunk) if ld.rgb is not None]
                if good:
                    # the same (B, 3, H, W) tensor the write pass builds for this batch
                    x = to_batch([ld.rgb for ld in chunk], cfg.imgsz, teacher.device)
                    y = teacher.extract_feature_map(x)  # (B, C_t, h, w) float32
                    # the statistics come from the unflipped views only: `features` is the same with
                    # or without cache_flips
                    acc.update(y[good] if len(good) < len(chunk) else y)
                    used += len(good)
                    nbytes = y.numel() * y.element_size() * (2 if spec.flips else 1)
                    if s % job.world == job.rank and kept_bytes + nbytes <= keep_bytes:
                        yf = teacher.extract_feature_map(flipped_view(x)) if spec.flips else None
                        # the write pass needs only "decoded or not", the hash and the error, not the pixels
                        light = [
                            Loaded(DECODED if ld.rgb is not None else None, ld.sha256, ld.error)
                            for ld in chunk
                        ]
                        kept[(s, b0)] = (y, yf, light)
                        kept_bytes += nbytes
                bar.update(len(chunk))
    finally:
        bar.close()
    if used == 0:
        from dinocache.core.data import DataError

        shown = "\n  ".join(errors[:10]) + ("\n  ..." if len(errors) > 10 else "")
        raise DataError(f"none of the {len(rows)} PCA-fit images of {cfg.data} could be used:\n  {shown}")
    reused = sum(len(c) for _, _, c in kept.values())
    job.log(
        f"fitted {'PCA' if spec.pca else 'channel stats'} on {used} images in {time.perf_counter() - t0:.1f}s; "
        f"their {reused} teacher outputs are written as rows, not recomputed"
    )
    if not spec.pca:
        mean, std = acc.channel_stats()
        return None, mean, np.maximum(std, 1e-6), kept
    basis = acc.basis(spec.k)
    # Projected channels have zero mean and variance = explained variance over the fit sample.
    return (
        basis,
        np.zeros(spec.k, np.float32),
        np.sqrt(np.maximum(basis.explained_variance, 1e-12)).astype(np.float32),
        kept,
    )
