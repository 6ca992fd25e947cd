"""Image loading of a precompute run: decode exactly as Ultralytics' loader does, refuse what is not
imgsz x imgsz, prefetch on a thread pool, stack a teacher batch."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DECODED = np.zeros(0, np.uint8)  # stands for the pixels of a kept image that decoded fine


@dataclass
class Loaded:
    """One decoded image: RGB uint8 (imgsz, imgsz, 3), or the reason it cannot be used."""

    rgb: np.ndarray | None
    sha256: str
    error: str | None = None


def load_image(path: Path, imgsz: int) -> Loaded:
    """Decode like Ultralytics' loader (its `imread`, BGR -> RGB); refuse anything not imgsz x imgsz."""
    from ultralytics.utils.patches import imread

    try:
        data = path.read_bytes()
    except OSError as e:
        return Loaded(None, "", f"cannot be read ({e.strerror or e})")
    sha = hashlib.sha256(data).hexdigest()
    im = imread(str(path))
    if im is None:
        return Loaded(None, sha, "cannot be decoded (corrupt or not an image)")
    if im.shape[0] != imgsz or im.shape[1] != imgsz:
        return Loaded(
            None,
            sha,
            f"is {im.shape[1]}x{im.shape[0]}, expected {imgsz}x{imgsz}: the cache stores the exact pixels the "
            "trainer sees, so letterbox the dataset to imgsz first (`dinocache augment`)",
        )
    if im.shape[2] == 1:
        im = np.repeat(im, 3, axis=2)
    return Loaded(np.ascontiguousarray(im[..., 2::-1]), sha)


def prefetch(
    files: Sequence[Path], rows: Sequence[int], imgsz: int, pool: ThreadPoolExecutor, ahead: int
) -> Iterator[Loaded]:
    """Loaded images of `rows` in order, keeping up to `ahead` decodes in flight."""
    pending: list[Future] = []
    it = iter(rows)
    for r in it:
        pending.append(pool.submit(load_image, files[r], imgsz))
        if len(pending) >= ahead:
            break
    while pending:
        fut = pending.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(load_image, files[nxt], imgsz))
        yield fut.result()


def to_batch(images: Sequence[np.ndarray | None], imgsz: int, device: Any) -> Any:
    """RGB uint8 images (None -> zeros, so batch shapes never depend on bad files) -> (B, 3, H, W) in [0, 1]."""
    import torch

    x = np.zeros((len(images), imgsz, imgsz, 3), np.uint8)
    for j, im in enumerate(images):
        if im is not None:
            x[j] = im
    t = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).contiguous()  # (B, H, W, 3) -> (B, 3, H, W)
    return t.float() / 255  # same arithmetic as Ultralytics' preprocess


def flipped_view(x: Any) -> Any:
    """(B, 3, H, W) -> the same canvases mirrored left-right: what the teacher sees of a horizontally
    flipped training image (the loaded image sits centred on the canvas, so its mirror is centred too)."""
    return x.flip(-1)


def sha_or_empty(path: Path) -> str:
    """The file's sha256, or "" when it cannot be read (it then counts as changed)."""
    from dinocache.core.data import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return ""
