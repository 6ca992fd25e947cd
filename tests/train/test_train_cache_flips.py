"""cache_flips in the trainer's data path: a horizontal flip reads the teacher's map of the mirrored image from
the cache instead of mirroring the map (warp mode and off mode), with the geometry of every tile re-expressed
in the mirrored source image, so mosaic + affine + flip still line up; the flipped view is read only when a
flip happens; distill_cache_flips=on refuses a cache without flipped views by name.

The stand-in teachers are exact: `pool` (16x16 block means, equivariant to whole-cell moves) plus either a
fixed left-to-right ramp (a teacher that is NOT flip-equivariant, like a ViT) or a marker channel that is 0 in
the unflipped view and 1 in the flipped view (which view reached each output cell).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from dinocache.train.dataset import DistillDataset
from dinocache.train.warp import (
    FLIP_KEY,
    PARAMS_KEY,
    TEACHER_KEY,
    VALID_KEY,
    RenderTeacher,
    build_warp_transforms,
    warp_batch,
)
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.data.augment import Compose
from ultralytics.data.dataset import YOLODataset
from ultralytics.utils import IterableSimpleNamespace

from dinocache.core.data import load_data_yaml

S = 16
RAMP = np.arange(8, dtype=np.float32)[None, None, :] * 10.0  # (1, 1, w): not mirror-symmetric


def pool(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    x = img[: h // S * S, : w // S * S].astype(np.float32).reshape(h // S, S, w // S, S, -1)
    return np.ascontiguousarray(x.mean(axis=(1, 3)).transpose(2, 0, 1))  # (3, h/16, w/16)


def ramp_teacher(img: np.ndarray) -> np.ndarray:
    """A teacher with a position bias: its map of a mirrored image is not its mirrored map."""
    return pool(img) + RAMP


def marker_teacher(img: np.ndarray, flipped: bool) -> np.ndarray:
    """(4, h, w): pool channels + channel 3 = 1 for the flipped view, 0 for the unflipped one."""
    p = pool(img)
    return np.concatenate([p, np.full((1, *p.shape[1:]), float(flipped), np.float32)])


class FlipDataset(YOLODataset):
    """Attaches the unflipped map and a flipped-view reader, the way DistillDataset does with cache_flips."""

    teacher = "ramp"
    views = True
    flip_reads = 0

    def get_image_and_label(self, index: int) -> dict:
        label = super().get_image_and_label(index)
        img = label["img"]
        if self.teacher == "ramp":
            label[TEACHER_KEY] = ramp_teacher(img)
            view = lambda: ramp_teacher(img[:, ::-1])  # noqa: E731
        else:
            label[TEACHER_KEY] = marker_teacher(img, False)
            view = lambda: marker_teacher(img[:, ::-1], True)  # noqa: E731
        if self.views:

            def read():
                type(self).flip_reads += 1
                return view()

            label[FLIP_KEY] = read
        return label


def hyp(**kw: float) -> IterableSimpleNamespace:
    base = dict(vars(DEFAULT_CFG))
    base.update(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, mosaic=0.0, degrees=0.0, translate=0.0, scale=0.0)
    base.update(shear=0.0, perspective=0.0, fliplr=0.0, flipud=0.0, augmentations=[])
    base.update(kw)
    return IterableSimpleNamespace(**base)


@pytest.fixture
def dataset(demo_data) -> FlipDataset:
    info = load_data_yaml(demo_data)
    ds = FlipDataset(
        img_path=info["train"], imgsz=128, augment=True, hyp=hyp(), data=info, task="obb", batch_size=4
    )
    FlipDataset.flip_reads = 0
    return ds


def _tf(ds, **kw: float) -> Compose:
    tf = build_warp_transforms(ds, hyp(**kw), 128, keep_params=True)
    tf.transforms = [t for t in tf.transforms if type(t).__name__ != "Albumentations"]  # geometry only
    return tf


def run(ds, tf: Compose, index: int, seed: int = 0) -> dict:
    random.seed(seed)
    np.random.seed(seed)
    out = tf(ds.get_image_and_label(index))
    assert FLIP_KEY not in out  # the reader never reaches the batch
    return RenderTeacher()(out)


def test_flip_reads_the_cached_view_exactly(dataset):
    """fliplr=1: the map reaching the loss IS the teacher's map of the flipped image (all 64 cells)."""
    out = run(dataset, _tf(dataset, fliplr=1.0), 1)
    np.testing.assert_array_equal(out[TEACHER_KEY], ramp_teacher(out["img"]))
    assert out[VALID_KEY].min() == 1.0 and FlipDataset.flip_reads == 1
    rec = [p for p in out[PARAMS_KEY] if p["op"] == "flip" and p["flip"]]
    assert rec[0]["flipped_views"] == 1
    # without the cached view the map is mirrored, which for this teacher (like a ViT) is NOT its view
    dataset.views = False
    mirrored = run(dataset, _tf(dataset, fliplr=1.0), 1)
    np.testing.assert_array_equal(mirrored["img"], out["img"])
    assert not np.array_equal(mirrored[TEACHER_KEY], ramp_teacher(out["img"]))
    np.testing.assert_array_equal(mirrored[TEACHER_KEY], ramp_teacher(out["img"][:, ::-1])[..., ::-1])


def test_no_flip_no_read(dataset):
    """The flipped view costs a read only when a horizontal flip happens (vertical flips mirror the map)."""
    out = run(dataset, _tf(dataset, flipud=1.0), 2)
    assert FlipDataset.flip_reads == 0
    np.testing.assert_array_equal(out[TEACHER_KEY], ramp_teacher(out["img"][::-1])[:, ::-1])
    run(dataset, _tf(dataset, mosaic=1.0), 2)
    assert FlipDataset.flip_reads == 0


def test_mosaic_and_flip_conjugate_every_tile(dataset, monkeypatch):
    """Aligned mosaic + fliplr=1: every tile uses its flipped view (marker 1 everywhere) and the pool channels
    still equal the augmented image's exactly, so A' = F_out A F_src puts each view where its pixels went."""
    dataset.teacher = "marker"
    centres = iter([80.0, 112.0])

    def uniform(a: float, b: float) -> float:
        if a == b:
            return a
        if (a, b) == (0, 1):
            return 0.5  # p-gates: Mosaic and the flip (p=1) run, MixUp/CutMix (p=0) do not
        return next(centres)

    tf = _tf(dataset, mosaic=1.0, fliplr=1.0)
    random.seed(0)
    label = dataset.get_image_and_label(3)
    monkeypatch.setattr(random, "uniform", uniform)
    out = RenderTeacher()(tf(label))
    monkeypatch.undo()
    valid = out[VALID_KEY] > 0
    assert valid.all()
    np.testing.assert_array_equal(out[TEACHER_KEY][:3], pool(out["img"]))
    np.testing.assert_array_equal(out[TEACHER_KEY][3], np.ones((8, 8), np.float32))
    assert FlipDataset.flip_reads == 4
    assert next(p for p in out[PARAMS_KEY] if p["op"] == "flip" and p["flip"])["flipped_views"] == 4


def test_random_mosaic_affine_flips_within_the_warp_bound(dataset):
    """Random mosaic + affine + fliplr 0.5: flipped samples read views (marker 1), others don't (marker 0), and
    the pool channels stay within the same bound as without cache_flips."""
    dataset.teacher = "marker"
    tf = _tf(dataset, mosaic=1.0, fliplr=0.5, degrees=10.0, translate=0.1, scale=0.2)
    seen = set()
    for seed in range(8):
        out = run(dataset, tf, seed % 4, seed)
        flipped = any(p["op"] == "flip" and p["flip"] for p in out[PARAMS_KEY])
        seen.add(flipped)
        valid = out[VALID_KEY] > 0
        assert valid.any()
        marker = out[TEACHER_KEY][3][valid]
        np.testing.assert_allclose(marker, 1.0 if flipped else 0.0, atol=1e-6)
        err = np.abs(out[TEACHER_KEY][:3] - pool(out["img"]))[:, valid].mean()
        assert err < 64  # test_train_warp.py's bound for unaligned mosaics
    assert seen == {True, False}


class ViewLookup:
    """TeacherLookup stand-in with flipped views: (3, 8, 8) pool maps of the file, + 1000 in the flipped view."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, im_file: str, flipped: bool = False) -> np.ndarray:
        import cv2

        self.calls.append(flipped)
        img = cv2.imread(im_file)
        return pool(img[:, ::-1]) + 1000.0 if flipped else pool(img)


def _distill_ds(demo_data, mode: str, flips: bool, **kw: float) -> DistillDataset:
    info = load_data_yaml(demo_data)
    return DistillDataset(
        img_path=info["train"], imgsz=128, augment=True, hyp=hyp(**kw), data=info, task="obb", batch_size=4,
        teacher=ViewLookup(), geometric_aug=mode, cache_flips=flips,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["off", "warp"])
def test_distill_dataset_uses_views_in_both_modes(demo_data, mode):
    """The trainer's dataset: fliplr=1 -> every map in the collated batch is the cached flipped view."""
    ds = _distill_ds(demo_data, mode, True, fliplr=1.0)
    random.seed(0)
    np.random.seed(0)
    b = DistillDataset.collate_fn([ds[i] for i in range(4)])
    if mode == "warp":
        warp_batch(b)
    feat = b[TEACHER_KEY].float()
    assert bool((feat > 500).all())  # the +1000 of the flipped view reached every cell
    assert ds.teacher.calls.count(True) == 4
    # the view itself, unmoved (no other geometry): equals the lookup's flipped map
    want = torch.stack([torch.from_numpy(ds.teacher(f, True)) for f in ds.im_files[:4]])
    assert torch.allclose(feat, want, atol=1e-3)
    # vertical + horizontal flip in off mode: the view, flipped vertically
    ds = _distill_ds(demo_data, mode, True, fliplr=1.0, flipud=1.0)
    random.seed(0)
    b = DistillDataset.collate_fn([ds[i] for i in range(2)])
    if mode == "warp":
        warp_batch(b)
    want = torch.stack([torch.from_numpy(ds.teacher(f, True).copy()).flip(-2) for f in ds.im_files[:2]])
    assert torch.allclose(b[TEACHER_KEY].float(), want, atol=1e-3)


def test_without_cache_flips_no_view_is_read(demo_data):
    ds = _distill_ds(demo_data, "warp", False, fliplr=1.0, mosaic=1.0)
    DistillDataset.collate_fn([ds[i] for i in range(4)])
    assert True not in ds.teacher.calls


# ------------------------------------------------------------------------------------------ the trainer


def _argv(tmp_path, demo_data, teacher, cache, *extra: str) -> list[str]:
    (tmp_path / "c.json").write_text("{}")
    return [
        "--config", str(tmp_path / "c.json"), f"data={demo_data}", f"dino_root={teacher}", f"cache={cache}",
        "imgsz=128", "batch=4", "workers=0", "device=cpu", "epochs=1", "dino_distill_channels=8",
        f"artifacts_root={tmp_path / 'artifacts'}", "eval_enabled=false", "dino_viz_enabled=false",
        "wandb_enabled=false", *extra,
    ]  # fmt: skip


def test_bad_distill_cache_flips_values_name_the_key(
    tmp_path, demo_data, tiny_teacher_dir, flip_caches, capsys
):
    from dinocache.train.cli import main

    base = _argv(tmp_path, demo_data, tiny_teacher_dir, flip_caches["flips"])
    assert main([*base, "distill_cache_flips=sideways"]) == 2
    assert "distill_cache_flips" in capsys.readouterr().err
    assert main([*base, "distill_cache_flips=on", "teacher_source=online"]) == 2
    err = capsys.readouterr().err
    assert "distill_cache_flips" in err and "teacher_source=cache" in err


def test_on_refuses_a_cache_without_flipped_views(tmp_path, demo_data, tiny_teacher_dir, flip_caches, capsys):
    from dinocache.train.cli import main

    argv = _argv(tmp_path, demo_data, tiny_teacher_dir, flip_caches["plain"], "distill_cache_flips=on")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "distill_cache_flips=on" in err and str(flip_caches["plain"]) in err and "cache_flips=true" in err
    assert not (tmp_path / "artifacts").exists() or not list((tmp_path / "artifacts").rglob("*.pt"))


@pytest.mark.parametrize("setting, reads", [("auto", True), ("off", False)])
def test_training_reads_flipped_views(
    tmp_path, demo_data, tiny_teacher_dir, flip_caches, monkeypatch, setting, reads
):
    """A real (1-epoch) training run on a flips cache: auto reads flipped views for the flipped samples (default
    fliplr 0.5), off never does; both train to a finite loss."""
    from dinocache.train.cli import main
    from dinocache.train.dataset import TeacherLookup

    calls: list[bool] = []
    orig = TeacherLookup.__call__

    def spy(self, im_file, flipped=False):
        calls.append(flipped)
        return orig(self, im_file, flipped)

    monkeypatch.setattr(TeacherLookup, "__call__", spy)
    argv = _argv(
        tmp_path, demo_data, tiny_teacher_dir, flip_caches["flips"], f"distill_cache_flips={setting}"
    )
    assert main([*argv, "extra={plots: false, val: false}"]) == 0
    assert (True in calls) is reads and False in calls


def test_flipped_views_are_buffered_like_the_maps(demo_data):
    """Mosaic + fliplr=1: a tile from Mosaic's buffer reuses its flipped view too, so a flipped mosaic costs about
    one view read per sample, not one per tile (the loader's CPU, BENCHMARKS.md `loader.flips_*`)."""
    ds = _distill_ds(demo_data, "warp", True, fliplr=1.0, mosaic=1.0)
    random.seed(0)
    np.random.seed(0)
    n = 48
    for i in range(n):
        ds[i % len(ds)]
    views, maps = ds.teacher.calls.count(True), ds.teacher.calls.count(False)
    print(f"reads per sample: {maps / n:.2f} maps, {views / n:.2f} flipped views (4 tiles per sample)")
    assert views <= maps <= 1.1 * n  # as many as the maps' (buffered) reads, not 4 * n
