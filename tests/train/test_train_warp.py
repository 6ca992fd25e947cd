"""Warp mode: the cached teacher map follows Ultralytics' own geometric augmentation.

The "teacher" here is equivariant by construction: the mean of each 16x16 pixel block, so teacher(image) is
(3, H/16, W/16). For flips, shifts by whole cells and 16-px-aligned mosaics the warped cached map must equal
that teacher run on the augmented image, at every valid cell, bit for bit; for rotation/scale the error is
bounded and printed.
"""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch
from dinocache.train import warp
from dinocache.train.warp import (
    PARAMS_KEY,
    STATE_KEY,
    TEACHER_KEY,
    VALID_KEY,
    RenderTeacher,
    WarpError,
    WarpFlip,
    WarpMosaic,
    WarpPerspective,
    build_warp_transforms,
    combine_masks,
    feature_matrix,
    render_batch,
    sample_maps,
    warp_batch,
    wrap_transforms,
)
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.data.augment import Compose, RandomFlip, RandomPerspective
from ultralytics.data.dataset import YOLODataset
from ultralytics.utils import IterableSimpleNamespace

from dinocache.core.data import load_data_yaml

S = 16  # patch


def pool_teacher(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H/16, W/16) float32 block means: exactly equivariant to whole-cell moves."""
    h, w = img.shape[:2]
    x = img[: h // S * S, : w // S * S].astype(np.float32).reshape(h // S, S, w // S, S, -1)
    return np.ascontiguousarray(x.mean(axis=(1, 3)).transpose(2, 0, 1))


class PoolDataset(YOLODataset):
    """Attaches the pool teacher of the loaded image, the way the trainer's dataset attaches the cached map."""

    def get_image_and_label(self, index: int) -> dict:
        label = super().get_image_and_label(index)
        label[TEACHER_KEY] = pool_teacher(label["img"])
        return label


def hyp(**kw: float) -> IterableSimpleNamespace:
    base = dict(vars(DEFAULT_CFG))
    # everything photometric off so the pool teacher sees only geometry
    base.update(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, mosaic=0.0, degrees=0.0, translate=0.0, scale=0.0)
    base.update(shear=0.0, perspective=0.0, fliplr=0.0, flipud=0.0, augmentations=[])
    base.update(kw)
    return IterableSimpleNamespace(**base)


@pytest.fixture(scope="module")
def dataset(demo_data) -> PoolDataset:
    info = load_data_yaml(demo_data)
    return PoolDataset(
        img_path=info["train"], imgsz=128, augment=True, hyp=hyp(), data=info, task="obb", batch_size=4
    )


def run(ds: PoolDataset, tf: Compose, index: int, seed: int = 0) -> dict:
    random.seed(seed)
    np.random.seed(seed)
    out = tf(ds.get_image_and_label(index))
    assert STATE_KEY not in out and TEACHER_KEY not in out  # the dataloader attaches geometry only
    return RenderTeacher()(out)  # the trainer's device warp, on the CPU


def check_exact(out: dict) -> int:
    """Warped map == pool teacher of the augmented image at every valid cell; returns the valid cell count."""
    want = pool_teacher(out["img"])
    valid = out[VALID_KEY] > 0
    assert out[TEACHER_KEY].shape == want.shape and valid.shape == want.shape[1:]
    np.testing.assert_array_equal(out[TEACHER_KEY][:, valid], want[:, valid])
    return int(valid.sum())


def _albu_off(tf: Compose) -> Compose:
    # Albumentations applies rare random blurs; the exactness checks must see geometry only
    tf.transforms = [t for t in tf.transforms if type(t).__name__ != "Albumentations"]
    return tf


def test_all_off_equals_plain_map(dataset):
    tf = build_warp_transforms(dataset, hyp(), 128)
    for i in range(3):
        out = run(dataset, tf, i)
        plain = pool_teacher(dataset.get_image_and_label(i)["img"])
        np.testing.assert_array_equal(out[TEACHER_KEY], plain)  # bit-exact: no interpolation anywhere
        assert out[VALID_KEY].min() == 1.0 and out[VALID_KEY].dtype == np.float32


@pytest.mark.parametrize("direction", ["fliplr", "flipud"])
def test_flip_exact(dataset, direction):
    tf = _albu_off(build_warp_transforms(dataset, hyp(**{direction: 1.0}), 128, keep_params=True))
    out = run(dataset, tf, 1)
    assert check_exact(out) == 64  # 8x8 cells, all valid
    flips = [p for p in out[PARAMS_KEY] if p["op"] == "flip" and p["flip"]]
    assert len(flips) == 1
    # and it is really flipped, not the identity
    plain = pool_teacher(dataset.get_image_and_label(1)["img"])
    assert not np.array_equal(out[TEACHER_KEY], plain)


@pytest.mark.parametrize("shift", [(16, 0), (-32, 48), (64, -16)])
def test_whole_cell_translation_exact(dataset, shift):
    M = np.eye(3, dtype=np.float32)
    M[0, 2], M[1, 2] = shift
    aff = WarpPerspective(degrees=0, translate=0, scale=0, size=(128, 128))
    aff._compute_affine_matrix = lambda img, size: (M, 1.0)  # a fixed affine; the warp itself is Ultralytics'
    tf = wrap_transforms(Compose([aff]))
    out = run(dataset, tf, 2)
    n = check_exact(out)
    assert n == (8 - abs(shift[0]) // 16) * (
        8 - abs(shift[1]) // 16
    )  # cells shifted in from the border are out


def test_mosaic_aligned_exact(dataset, monkeypatch):
    centres = iter([80.0, 112.0])  # yc, xc: multiples of 16, so every tile edge is a cell edge

    def uniform(a: float, b: float) -> float:
        if a == b:
            return a
        if (a, b) == (0, 1):
            return 0.5  # p-gates: Mosaic (p=1) runs, MixUp/CutMix (p=0) do not
        return next(centres)

    tf = _albu_off(build_warp_transforms(dataset, hyp(mosaic=1.0), 128, keep_params=True))
    random.seed(0)
    label = dataset.get_image_and_label(3)
    monkeypatch.setattr(random, "uniform", uniform)
    out = RenderTeacher()(tf(label))
    monkeypatch.undo()
    mos = next(p for p in out[PARAMS_KEY] if p["op"] == "mosaic")
    assert len(mos["tiles"]) == 4 and mos["tiles"][0]["key"].endswith(".png")
    n = check_exact(out)
    assert n == 64  # centre crop of the 256 canvas: all four tiles, no padding


def test_mosaic_random_cells_inside_one_tile_exact(dataset):
    """Random (unaligned) mosaic + flips: cells lying wholly inside one tile and shifted by whole cells are exact."""
    tf = _albu_off(build_warp_transforms(dataset, hyp(mosaic=1.0, fliplr=0.5), 128, keep_params=True))
    for seed in range(6):
        out = run(dataset, tf, seed % 4, seed)
        valid = out[VALID_KEY] > 0
        assert valid.any()
        want = pool_teacher(out["img"])
        err = np.abs(out[TEACHER_KEY] - want)[:, valid].mean()
        assert np.isfinite(err) and err < 64  # sub-cell offsets interpolate: bounded, not exact


def test_affine_error_bounded(dataset, capsys):
    rows = []
    for deg, sc in [(10, 1.0), (30, 1.0), (0, 0.75), (0, 1.25), (20, 0.9)]:
        aff = WarpPerspective(size=(128, 128))
        M = np.eye(3)
        M[:2] = cv2.getRotationMatrix2D((64, 64), deg, sc)
        aff._compute_affine_matrix = lambda img, size, M=M, sc=sc: (M.astype(np.float32), sc)
        tf = wrap_transforms(Compose([aff]))
        out = run(dataset, tf, 0)
        want = pool_teacher(out["img"])
        v = out[VALID_KEY] > 0
        a, b = out[TEACHER_KEY][:, v].astype(np.float64), want[:, v].astype(np.float64)
        rel = np.abs(a - b).mean() / b.std()  # error in units of the teacher's spread
        a, b = (
            a - b.mean(1, keepdims=True),
            b - b.mean(1, keepdims=True),
        )  # centred: the mean would hide errors
        cos = ((a * b).sum(0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)).mean()
        rows.append((deg, sc, int(v.sum()), rel, cos))
        assert rel < 0.3 and cos > 0.85
    with capsys.disabled():
        print("\n deg scale valid  MAE/std  centred-cos   (pool teacher)")
        for r in rows:
            print(f"{r[0]:4} {r[1]:5} {r[2]:5} {r[3]:8.3f} {r[4]:10.3f}")


def test_letterbox_and_nonsquare_offset():
    """A 64x128 image centred on a 128x128 canvas: the map's letterbox offset is honoured exactly."""
    from dinocache.train.warp import WarpLetterBox

    img = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    canvas = np.full((128, 128, 3), 114, np.uint8)
    canvas[32:96] = img
    feat = pool_teacher(canvas)
    lb = wrap_transforms(Compose([WarpLetterBox(new_shape=128, scaleup=False)]))
    out = RenderTeacher()(lb({"img": img, TEACHER_KEY: feat, "im_file": "x.png"}))
    np.testing.assert_array_equal(out["img"], canvas)
    v = out[VALID_KEY] > 0
    assert v.sum() == 32 and v[2:6].all() and not v[:2].any()
    np.testing.assert_array_equal(out[TEACHER_KEY][:, v], feat[:, v])


def _sample(x: np.ndarray, M: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(D, h, w) resampled through M (source -> output cell coords) by the device sampler -> (D, gh, gw)."""
    inv = torch.from_numpy(np.linalg.inv(M))[None]
    got = sample_maps(torch.from_numpy(x)[None], inv, out_hw)[0]  # (gh*gw, D)
    return got.T.reshape(x.shape[0], *out_hw).numpy()


def test_feature_matrix_flip_is_index_reversal():
    F = np.array([[-1, 0, 127], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    Mf = feature_matrix(F, (0.0, 0.0), 16)
    np.testing.assert_array_equal(Mf, [[-1, 0, 7], [0, 1, 0], [0, 0, 1]])
    x = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    np.testing.assert_array_equal(_sample(x, Mf, (3, 8)), x[..., ::-1])


def test_device_sampler_matches_grid_sample():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 6, 7)).astype(np.float32)
    M = np.array([[0.9, 0.2, 0.4], [-0.1, 1.1, -0.3], [0, 0, 1]])
    got = _sample(x, M, (6, 7))
    inv = np.linalg.inv(M)
    ys, xs = np.mgrid[0:6, 0:7]
    p = inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(42)])
    gx = torch.tensor(p[0] / 6 * 2 - 1, dtype=torch.float32)  # align_corners=True: -1..1 -> 0..w-1
    gy = torch.tensor(p[1] / 5 * 2 - 1, dtype=torch.float32)
    grid = torch.stack([gx, gy], -1).view(1, 6, 7, 2)
    ref = torch.nn.functional.grid_sample(
        torch.from_numpy(x)[None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )[0]
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


def test_blends_refused_and_disabled(dataset):
    from ultralytics.data.augment import v8_transforms

    with pytest.raises(WarpError, match="MixUp"):
        wrap_transforms(v8_transforms(dataset, 128, hyp(mixup=0.5)))
    h = hyp(mixup=0.5, cutmix=0.2)
    assert warp.disable_blends(h) == ["mixup", "cutmix"] and h.mixup == 0.0
    tf = build_warp_transforms(dataset, hyp(mixup=0.5, mosaic=1.0), 128)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[-1] == "AttachGeometry"
    pre = tf.transforms[0]
    assert isinstance(pre.transforms[0], WarpMosaic) and isinstance(pre.transforms[-1], WarpPerspective)
    assert all(isinstance(t, WarpFlip) for t in tf.transforms if isinstance(t, RandomFlip))


def test_wrap_keeps_ultralytics_settings_and_format_order(dataset):
    tf = dataset.build_transforms(hyp(degrees=7.0, scale=0.3, fliplr=0.4))
    wrap_transforms(tf, patch=16)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[-2:] == ["AttachGeometry", "Format"]
    aff = tf.transforms[0].transforms[-1]
    assert isinstance(aff, RandomPerspective) and isinstance(aff, WarpPerspective)
    assert aff.degrees == 7.0 and aff.scale == 0.3 and aff.size == (128, 128)
    flip = [t for t in tf.transforms if isinstance(t, WarpFlip) and t.direction == "horizontal"][0]
    assert flip.p == 0.4


def test_through_format_and_collate(dataset):
    from dinocache.train.dataset import DistillDataset

    tf = dataset.build_transforms(hyp(mosaic=1.0, degrees=10.0, scale=0.3, translate=0.1, fliplr=0.5))
    wrap_transforms(tf)
    samples = []
    for i in range(4):
        random.seed(i)
        samples.append(tf(dataset.get_image_and_label(i)))
    assert all(b["img"].shape == (3, 128, 128) for b in samples)
    b = warp_batch(DistillDataset.collate_fn(samples))
    feats, valid = b[TEACHER_KEY], b[VALID_KEY]
    assert feats.shape == (4, 3, 8, 8) and valid.shape == (4, 8, 8) and torch.isfinite(feats).all()
    assert warp.SRC_KEY not in b and warp.GEOM_KEY not in b


def test_missing_tile_map_is_a_clear_error(dataset):
    class NoMix(PoolDataset):
        def get_image_and_label(self, index: int) -> dict:
            label = YOLODataset.get_image_and_label(self, index)
            if index == 0:
                label[TEACHER_KEY] = pool_teacher(label["img"])
            return label

    ds = NoMix.__new__(NoMix)
    ds.__dict__.update(dataset.__dict__)
    mos = WarpMosaic(ds, imgsz=128, p=1.0)
    mos.buffer_enabled = False
    random.seed(1)
    with pytest.raises(WarpError, match="teacher_feat_for"):
        for _ in range(20):  # until a tile other than image 0 is drawn
            mos(ds.get_image_and_label(0))


def test_teacher_feat_for_fallback(dataset):
    class Lazy(PoolDataset):
        def get_image_and_label(self, index: int) -> dict:
            label = YOLODataset.get_image_and_label(self, index)
            if index == 0:
                label[TEACHER_KEY] = pool_teacher(label["img"])
            return label

        def teacher_feat_for(self, index: int) -> np.ndarray:
            return pool_teacher(YOLODataset.get_image_and_label(self, index)["img"])

    ds = Lazy.__new__(Lazy)
    ds.__dict__.update(dataset.__dict__)
    tf = wrap_transforms(
        Compose([WarpMosaic(ds, imgsz=128, p=1.0), WarpPerspective(size=(128, 128), scale=0)])
    )
    random.seed(2)
    out = RenderTeacher()(tf(ds.get_image_and_label(0)))
    assert out[TEACHER_KEY].shape == (3, 8, 8) and out[VALID_KEY].sum() > 0


def test_bad_map_shapes():
    with pytest.raises(WarpError, match="smaller than the loaded image"):
        warp.source_offset(np.zeros((3, 4, 4)), (128, 128), 16, "a.png")
    aff = wrap_transforms(Compose([RandomPerspective(scale=0, translate=0, size=(128, 128))]))
    with pytest.raises(WarpError, match=r"\(D, h, w\)"):
        aff(
            {
                "img": np.zeros((128, 128, 3), np.uint8),
                TEACHER_KEY: np.zeros((8, 8)),
                "im_file": "b.png",
                "cls": np.zeros((0, 1)),
                "instances": _empty_instances(),
            }
        )


def _empty_instances():
    from ultralytics.utils.instance import Instances

    return Instances(np.zeros((0, 4), np.float32), np.zeros((0, 100, 2), np.float32), normalized=True)


def test_no_teacher_means_plain_ultralytics(dataset):
    """Without a teacher map (val set, teacher_source none) the wrappers do exactly what Ultralytics does."""
    h = hyp(mosaic=1.0, degrees=10.0, scale=0.3, fliplr=0.5)
    plain = _albu_off(Compose([t for t in YOLODataset.build_transforms(dataset, h).transforms]))
    wrapped = _albu_off(wrap_transforms(YOLODataset.build_transforms(dataset, h)))
    for tf in (plain, wrapped):  # the mosaic buffer changes with every load; draw from the whole set instead
        tf.transforms[0].transforms[0].buffer_enabled = False
    plain_ds = YOLODataset.__new__(YOLODataset)
    plain_ds.__dict__.update(dataset.__dict__)
    for i in range(3):
        random.seed(i)
        a = plain(YOLODataset.get_image_and_label(plain_ds, i))
        random.seed(i)
        b = wrapped(YOLODataset.get_image_and_label(plain_ds, i))
        assert torch.equal(a["img"], b["img"]) and torch.equal(a["bboxes"], b["bboxes"])
        assert TEACHER_KEY not in b and VALID_KEY not in b


def test_combine_masks():
    obj = torch.tensor([[[True, False], [False, True]]])
    valid = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    ow, bw = combine_masks(obj, valid)
    assert ow.tolist() == [[[1.0, 0.0], [0.0, 0.0]]] and bw.tolist() == [[[0.0, 0.0], [1.0, 0.0]]]
    ow, bw = combine_masks(obj, None)
    assert (ow + bw).min() == 1.0


def test_valid_threshold_rule():
    st = warp.WarpState(tiles=[], patch=16)
    # a 16x32 image whose tile shows only its top-left 16x8 pixels: cell 0 half covered, cell 1 empty
    st.tiles.append(warp.Tile(np.ones((2, 1, 2), np.float32), np.eye(3), (0.0, 0.0), "t", (0, 0, 16, 8)))
    src, geom = warp.collate_geometry([np.ones((1, 2, 1, 2), np.float32)], [warp.geometry_rows(st, (16, 32))])
    _, v = render_batch(src, geom, valid_threshold=0.5)
    assert v.tolist() == [[[1.0, 0.0]]]
    _, v = render_batch(src, geom, valid_threshold=0.75)
    assert v.tolist() == [[[0.0, 0.0]]]
    with pytest.raises(WarpError):
        warp.AttachGeometry(valid_threshold=0.0)


def test_sample_without_geometry_is_a_clear_error(dataset):
    """Warp mode given a plain map (no geometry): refused, never used as if it were warped."""
    batch = {TEACHER_KEY: torch.zeros(2, 3, 8, 8), "img": torch.zeros(2, 3, 128, 128)}
    with pytest.raises(WarpError, match="carries no teacher geometry.*plain 'teacher_feat'.*AttachGeometry"):
        warp_batch(batch)
    src, geom = torch.zeros(2, 1, 3, 8, 8), torch.zeros(2, 1, warp.GEOM_FIELDS, dtype=torch.float64)
    with pytest.raises(WarpError, match="has no tile geometry"):
        render_batch(src, geom)
    with pytest.raises(WarpError, match="needs maps"):
        render_batch(src[:, 0], geom)


def test_batch_warp_equals_per_sample_warp(dataset):
    """A collated batch (tiles padded to the largest sample) warps like each sample on its own."""
    tf = _albu_off(build_warp_transforms(dataset, hyp(mosaic=0.5, degrees=10.0, fliplr=0.5), 128))
    samples = []
    for i in range(6):
        random.seed(i)
        samples.append(tf(dataset.get_image_and_label(i % 4)))
    assert {len(s[warp.SRC_KEY]) for s in samples} == {1, 4}  # mixed single images and mosaics
    batch = {warp.SRC_KEY: None, warp.GEOM_KEY: None}
    batch[warp.SRC_KEY], batch[warp.GEOM_KEY] = warp.collate_geometry(
        [s[warp.SRC_KEY] for s in samples], [s[warp.GEOM_KEY] for s in samples]
    )
    warp_batch(batch)
    for i, s in enumerate(samples):
        one = RenderTeacher()(dict(s))
        assert torch.equal(batch[TEACHER_KEY][i], torch.from_numpy(one[TEACHER_KEY]))
        assert torch.equal(batch[VALID_KEY][i], torch.from_numpy(one[VALID_KEY]))


def test_mosaic9_and_perspective_follow_the_image(dataset):
    """3x3 mosaic and a perspective warp: whole-cell-aligned cells exact where possible, error bounded elsewhere."""
    mos = WarpMosaic(dataset, imgsz=128, p=1.0, n=9)
    mos.buffer_enabled = False
    persp = WarpPerspective(degrees=5.0, translate=0.1, scale=0.2, perspective=0.0005, size=(128, 128))
    tf = wrap_transforms(Compose([mos, persp]), keep_params=True)
    for seed in range(3):
        out = run(dataset, tf, seed, seed)
        assert [p["op"] for p in out[PARAMS_KEY]] == ["mosaic", "affine"]
        assert len(out[PARAMS_KEY][0]["tiles"]) == 9 and out[PARAMS_KEY][1]["perspective"]
        v = out[VALID_KEY] > 0
        want = pool_teacher(out["img"])
        if v.any():
            assert np.abs(out[TEACHER_KEY][:, v] - want[:, v]).mean() < 0.5 * want.std()


class _GeomSamples(torch.utils.data.Dataset):
    """Samples as AttachGeometry leaves them: T x (D, h, w) maps (T = 1 or 4) and (T, GEOM_FIELDS) rows."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        t = 4 if i % 2 else 1
        maps = tuple(np.full((3, 2, 2), i * 10 + j, np.float16) for j in range(t))
        return {warp.SRC_KEY: maps, warp.GEOM_KEY: np.full((t, warp.GEOM_FIELDS), float(i))}


def _collate(batch: list[dict]) -> tuple:
    return warp.collate_geometry([b[warp.SRC_KEY] for b in batch], [b[warp.GEOM_KEY] for b in batch])


def test_collate_geometry_same_in_workers() -> None:
    """The batch a DataLoader worker collates (its tensors allocated in shared memory) equals the main process's:
    each map in its place, padding tiles zero with present = 0."""
    ds = _GeomSamples()
    main = [_collate([ds[i] for i in range(b, b + 3)]) for b in (0, 3)]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=_collate)
    got = list(loader)
    for (s0, g0), (s1, g1) in zip(main, got):
        assert s1.dtype == torch.float16 and s1.shape == (3, 4, 3, 2, 2)
        assert torch.equal(s0, s1) and torch.equal(g0, g1)
    src, geom = main[0]
    assert src[0, 0].eq(0).all() and src[0, 1:].eq(0).all() and src[1, 3].eq(13).all()
    assert geom[0, 1:].eq(0).all() and geom[1, :, 0].eq(1).all()
