"""Images letterboxed to a square canvas and their annotations rasterised to the teacher's patch grid.

The canvas is exactly what the teacher sees at precompute time for a square `imgsz` (long side resized
to imgsz, centred, grey 114 padding, like Ultralytics' LetterBox), so the adapted features are learned
at the geometry they will be used at. Targets are per-patch *fractions* (not a thresholded label), so
objects smaller than a 16 px patch still contribute.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dinocache.core.data import DataError
from dinocache.finetune.objectives import BOX_KINDS, ImageRecord, Instance, Objective

PAD_VALUE = 114
_SHIFT = 4  # cv2.fillPoly fixed-point bits: sub-pixel polygon edges


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(H0, W0, 3) -> (size, size, 3), scale r, (left, top) padding."""
    h0, w0 = img.shape[:2]
    r = size / max(h0, w0)
    nw, nh = max(1, round(w0 * r)), max(1, round(h0 * r))
    if (nw, nh) != (w0, h0):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA)
    left, top = (size - nw) // 2, (size - nh) // 2
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    out[top : top + nh, left : left + nw] = img
    return out, r, (left, top)


def _to_canvas(pts: np.ndarray, w0: int, h0: int, r: float, pad: tuple[int, int]) -> np.ndarray:
    """Normalised (K, 2) points of the original image -> fixed-point int32 canvas pixels for fillPoly."""
    xy = pts.astype(np.float64) * [w0 * r, h0 * r] + pad
    return np.round(xy * (1 << _SHIFT)).astype(np.int32)


def _fractions(label: np.ndarray, n: int, patch: int) -> np.ndarray:
    """(S, S) int label image with values in [0, n) -> (n, S/p, S/p) fraction of each patch per value."""
    s = label.shape[0]
    g = s // patch
    cell = (np.arange(s) // patch)[:, None] * g + (np.arange(s) // patch)[None, :]  # (S, S) patch index
    counts = np.bincount((cell * n + label.astype(np.int64)).ravel(), minlength=g * g * n)
    return (counts.reshape(g, g, n) / float(patch * patch)).transpose(2, 0, 1).astype(np.float32)


def rasterise(
    instances: list[Instance],
    objective: Objective,
    orig_hw: tuple[int, int],
    size: int,
    patch: int,
    r: float,
    pad: tuple[int, int],
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Instances -> (box target (C+1, g, g) soft class fractions, mask target (C, g, g) coverage)."""
    h0, w0 = orig_hw
    c = objective.num_classes
    box_t = mask_t = None
    if objective.boxes:
        label = np.zeros((size, size), dtype=np.int32)  # fillPoly has no int64
        boxes = [i for i in instances if i.kind in BOX_KINDS]
        # Large first so a small box inside a large one stays visible.
        boxes.sort(key=lambda i: -float(np.ptp(i.points[:, 0]) * np.ptp(i.points[:, 1])))
        for ins in boxes:
            cv2.fillPoly(
                label,
                [_to_canvas(ins.points, w0, h0, r, pad)],
                ins.cls + 1,
                lineType=cv2.LINE_8,
                shift=_SHIFT,
            )
        box_t = _fractions(label, c + 1, patch)
    if objective.masks:
        g = size // patch
        mask_t = np.zeros((c, g, g), dtype=np.float32)
        masks = [i for i in instances if i.kind not in BOX_KINDS]
        for cls in sorted({i.cls for i in masks}):
            canvas = np.zeros((size, size), dtype=np.uint8)
            for ins in (i for i in masks if i.cls == cls):
                if ins.points is not None:
                    cv2.fillPoly(
                        canvas, [_to_canvas(ins.points, w0, h0, r, pad)], 1, lineType=cv2.LINE_8, shift=_SHIFT
                    )
                else:  # RLE mask at the original resolution
                    m = cv2.resize(
                        ins.mask.astype(np.uint8),
                        (max(1, round(w0 * r)), max(1, round(h0 * r))),
                        interpolation=cv2.INTER_NEAREST,
                    )
                    left, top = pad
                    canvas[top : top + m.shape[0], left : left + m.shape[1]] |= m
            mask_t[cls] = canvas.reshape(g, patch, g, patch).mean((1, 3))
    return box_t, mask_t


class DenseTargetDataset(Dataset):
    """Items: {"img": (3, S, S) float [0, 1] RGB, "box": (C+1, g, g), "mask": (C, g, g)} (absent terms:
    zero-size tensors so the default collate works). `fliplr` > 0 flips image and targets together."""

    def __init__(
        self,
        records: list[ImageRecord],
        objective: Objective,
        imgsz: int,
        patch: int,
        fliplr: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.records = records
        self.objective = objective
        self.imgsz = imgsz
        self.patch = patch
        self.fliplr = fliplr
        self.seed = seed
        self.epoch = 0  # set by the trainer so flips differ per epoch but are reproducible

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rec = self.records[i]
        img = cv2.imread(str(rec.path), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"cannot read image {rec.path}")
        h0, w0 = img.shape[:2]
        img, r, pad = letterbox(img, self.imgsz)
        box_t, mask_t = rasterise(rec.instances, self.objective, (h0, w0), self.imgsz, self.patch, r, pad)
        img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        if self.fliplr > 0:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            if rng.random() < self.fliplr:
                img = img[:, :, ::-1]
                box_t = None if box_t is None else box_t[:, :, ::-1]
                mask_t = None if mask_t is None else mask_t[:, :, ::-1]
        empty = torch.zeros(0)
        return {
            "img": torch.from_numpy(np.ascontiguousarray(img)).float() / 255.0,
            "box": empty if box_t is None else torch.from_numpy(np.ascontiguousarray(box_t)),
            "mask": empty if mask_t is None else torch.from_numpy(np.ascontiguousarray(mask_t)),
        }
