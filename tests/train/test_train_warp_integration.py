"""Warp mode inside the trainer's dataset, collate and loss."""

from __future__ import annotations

import random

import cv2
import dinocache.train.losses as losses
import numpy as np
import torch
from dinocache.train.dataset import DistillDataset
from dinocache.train.warp import GEOM_KEY, SRC_KEY, TEACHER_KEY, VALID_KEY, warp_batch
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.utils import IterableSimpleNamespace

from dinocache.core.data import load_data_yaml


class PoolLookup:
    """Stands in for TeacherLookup: the 16x16 block means of the image file (demo images are square at imgsz)."""

    def __call__(self, im_file: str) -> np.ndarray:
        img = cv2.imread(im_file)
        h, w = img.shape[:2]
        return (
            img.astype(np.float32).reshape(h // 16, 16, w // 16, 16, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
        )


def _hyp(**kw: float) -> IterableSimpleNamespace:
    base = dict(vars(DEFAULT_CFG))
    base.update(
        hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, mosaic=0.0, degrees=0.0, translate=0.0, scale=0.0, fliplr=0.0
    )
    base.update(kw)
    return IterableSimpleNamespace(**base)


def _ds(demo_data, mode: str, **hyp: float):
    info = load_data_yaml(demo_data)
    return DistillDataset(
        img_path=info["train"],
        imgsz=128,
        augment=True,
        hyp=_hyp(**hyp),
        data=info,
        task="obb",
        batch_size=4,
        teacher=PoolLookup(),
        geometric_aug=mode,
    )


def _batch(ds, seed: int = 0) -> dict:
    """A collated batch as the trainer sees it after preprocess_batch (warp mode: warped on the 'device')."""
    random.seed(seed)
    np.random.seed(seed)
    b = DistillDataset.collate_fn([ds[i] for i in range(4)])
    if ds.geometric_aug == "warp":
        assert TEACHER_KEY not in b and b[GEOM_KEY].dtype == torch.float64  # workers resample nothing
        assert b[SRC_KEY].shape[:2] == b[GEOM_KEY].shape[:2]
        warp_batch(b)
    return b


def test_warp_batch_has_stacked_valid_and_trains_the_loss(demo_data):
    ds = _ds(demo_data, "warp", mosaic=1.0, degrees=10.0, scale=0.3, translate=0.1, fliplr=0.5, mixup=0.5)
    assert ds.transforms.transforms[-2].__class__.__name__ == "AttachGeometry"
    b = _batch(ds)
    assert b[TEACHER_KEY].shape == (4, 3, 8, 8) and b[VALID_KEY].shape == (4, 8, 8)
    assert b[VALID_KEY].dtype == torch.float32 and 0 < b[VALID_KEY].sum() <= 4 * 64
    mask = losses.obb_cell_mask(b["bboxes"], b["batch_idx"], 4, (8, 8))
    student = torch.randn(4, 3, 8, 8, requires_grad=True)
    loss = losses.masked_cosine_loss(student, b[TEACHER_KEY].float(), mask, 1.15, 0.15, valid=b[VALID_KEY])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_warp_with_augmentation_off_equals_plain_cache_mode(demo_data):
    plain, warp = _batch(_ds(demo_data, "off", fliplr=0.5)), _batch(_ds(demo_data, "warp", fliplr=0.5))
    assert torch.equal(plain[TEACHER_KEY], warp[TEACHER_KEY]) and torch.equal(plain["img"], warp["img"])
    assert VALID_KEY not in plain and bool((warp[VALID_KEY] == 1).all())
    mask = losses.obb_cell_mask(plain["bboxes"], plain["batch_idx"], 4, (8, 8))
    s = torch.randn(4, 3, 8, 8)
    a = losses.masked_cosine_loss(s, plain[TEACHER_KEY], mask, 1.15, 0.15)
    b = losses.masked_cosine_loss(s, warp[TEACHER_KEY], mask, 1.15, 0.15, valid=warp[VALID_KEY])
    assert torch.equal(a, b)


def test_masked_loss_ignores_invalid_cells():
    t = torch.randn(1, 4, 2, 2)
    s = t.clone()
    s[0, :, 0, 0] = -t[0, :, 0, 0]  # cell (0, 0) maximally wrong ...
    valid = torch.ones(1, 2, 2)
    valid[0, 0, 0] = 0  # ... but invalid
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert losses.masked_cosine_loss(s, t, mask, 1.0, 1.0, valid=valid).abs() < 1e-6
    assert losses.masked_cosine_loss(s, t, mask, 1.0, 1.0) > 0.4


class CountingPool(PoolLookup):
    def __init__(self) -> None:
        self.files: list[str] = []

    def __call__(self, im_file: str) -> np.ndarray:
        self.files.append(im_file)
        return super().__call__(im_file)


def test_getitems_reads_the_batch_maps_first_and_builds_the_same_samples(demo_data):
    """__getitems__ (what torch's DataLoader calls per batch) gives the samples ds[i] gives, maps read first, no extra
    read; a DataLoader over the dataset uses it."""
    hyp = dict(mosaic=1.0, degrees=10.0, scale=0.3, fliplr=0.5)
    one, ahead = _ds(demo_data, "warp", **hyp), _ds(demo_data, "warp", **hyp)
    one.teacher, ahead.teacher = CountingPool(), CountingPool()
    for idx in ([0, 1, 2, 3], [2, 2, 5, 0]):
        random.seed(3)
        np.random.seed(3)
        a = DistillDataset.collate_fn([one[i] for i in idx])
        random.seed(3)
        np.random.seed(3)
        before = len(ahead.teacher.files)
        b = DistillDataset.collate_fn(ahead.__getitems__(idx))
        for k in ("img", SRC_KEY, GEOM_KEY, "bboxes", "batch_idx"):
            assert torch.equal(a[k], b[k]), k
        assert ahead.teacher.files == one.teacher.files and not ahead._read_ahead
    assert len(set(ahead.teacher.files[before:])) == len(ahead.teacher.files[before:])  # one read per image
    seen: list[list[int]] = []
    real = ahead.__getitems__
    ahead.__getitems__ = lambda indices: seen.append(list(indices)) or real(indices)
    loader = torch.utils.data.DataLoader(ahead, batch_size=4, collate_fn=DistillDataset.collate_fn)
    next(iter(loader))
    assert seen == [[0, 1, 2, 3]]
