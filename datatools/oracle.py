"""Oracle teacher maps: each cell's class coverage computed from an image's own labels.

A perfect "teacher" for a diagnostic: if distilling towards these maps does not help a student, a real
teacher's cached maps cannot be expected to either, and the limit is the setting (data, epochs, loss weight),
not the cache. Used by the default-suite signal test (tests/train/test_train_signal.py) and the oracle run of
the signal benchmark (benchmarks/signal_oracle.py).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def cell_coverage(
    polys_px: list[np.ndarray], classes: list[int], size: int, n_cls: int, patch: int = 16
) -> np.ndarray:
    """(1 + n_cls, g, g) float32: share of each cell's pixels inside a box of each class (channel 0: no box)."""
    g = size // patch
    out = np.zeros((1 + n_cls, g, g), np.float32)
    union = np.zeros((size, size), np.uint8)
    for c in range(n_cls):
        m = np.zeros((size, size), np.uint8)
        for p, k in zip(polys_px, classes):
            if k == c:
                cv2.fillPoly(m, [np.round(p).astype(np.int32)], 1)
        union |= m
        out[1 + c] = m.reshape(g, patch, g, patch).mean((1, 3))
    out[0] = 1.0 - union.reshape(g, patch, g, patch).mean((1, 3))
    return out


def oracle_map(label_file: Path, size: int, k: int, n_cls: int, patch: int = 16) -> np.ndarray:
    """(k, g, g) float32 of a YOLO-OBB label file (normalised corners): coverage in the first 1 + n_cls
    channels, 0 in the rest (k >= 1 + n_cls, the cache's K)."""
    if k < 1 + n_cls:
        raise ValueError(f"k={k} channels cannot hold the coverage of {n_cls} classes + background")
    polys, classes = [], []
    for line in Path(label_file).read_text().split("\n"):
        v = line.split()
        if len(v) == 9:
            classes.append(int(v[0]))
            polys.append(np.array(v[1:], np.float64).reshape(4, 2) * size)
    g = size // patch
    f = np.zeros((k, g, g), np.float32)
    f[: 1 + n_cls] = cell_coverage(polys, classes, size, n_cls, patch)
    return f
