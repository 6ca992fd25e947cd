"""`dinocache precompute` in-process: round trip against the teacher, fingerprint/spec refusal,
--overwrite, and every bad input (corrupt / wrong-size image, missing dino_root, unknown key, empty set)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dinocache.precompute.run import main as precompute_main

from dinocache import cache

IMGSZ = 128  # tests/conftest.py TEST_IMGSZ


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):  # tests/conftest.py
    yield


def run(data: Path, teacher: Path, store: Path, *extra: str) -> int:
    args = [
        f"data={data}",
        f"dino_root={teacher}",
        f"cache={store}",
        f"imgsz={IMGSZ}",
        "batch=4",
        "workers=1",
    ]
    args += ["device=cpu", "channels=8", "shard_size=4", "pca_fit_images=8"]
    return precompute_main([*args, *extra])


def copy_dataset(demo_data: Path, dst: Path) -> Path:
    shutil.copytree(demo_data.parent, dst)
    return dst / "data.yaml"


def train_images(data: Path) -> list[Path]:
    return sorted((data.parent / "images" / "train").glob("*.png"))


def test_round_trip_pca(demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path) -> None:
    from dinocache.teacher.registry import load_teacher

    store = tmp_path / "c.zarr"
    assert run(demo_data, tiny_teacher_dir, store) == 0
    fc = cache.open(str(store))
    files = train_images(demo_data)
    assert fc.n == len(files) and fc.k == 8 and fc.grid == (IMGSZ // 16, IMGSZ // 16) and fc.done.all()
    assert (store / "precompute.yaml").exists()
    teacher = load_teacher(tiny_teacher_dir)
    assert fc.fingerprint == json.loads(json.dumps(teacher.fingerprint(IMGSZ)))
    rgb = np.stack([cv2.imread(str(f))[..., ::-1] for f in files])
    x = torch.from_numpy(rgb.copy()).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W)
    want = fc.pca.project(teacher.extract_feature_map(x)).numpy()  # (N, K, h, w)
    rows = [fc.row_of(f.relative_to(demo_data.parent).as_posix()) for f in files]
    got = fc.read(rows).astype(np.float32)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * scale)
    # first D channels are the first D components; get() is one row
    np.testing.assert_array_equal(fc.read(rows[:3], channels=3), fc.read(rows[:3])[:, :3])
    np.testing.assert_array_equal(fc.get("images/train/" + files[5].name), fc.read([rows[5]])[0])
    assert fc.channel_std.shape == (8,) and (np.diff(fc.channel_std) <= 1e-6).all()  # sorted variances


def test_round_trip_full_channels(demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path) -> None:
    from dinocache.teacher.registry import load_teacher

    store = tmp_path / "full.zarr"
    assert run(demo_data, tiny_teacher_dir, store, "channels=full", "codec=none") == 0
    fc = cache.open(str(store))
    teacher = load_teacher(tiny_teacher_dir)
    assert fc.pca is None and fc.k == teacher.channels and fc.codec == "none"
    f = train_images(demo_data)[3]
    x = torch.from_numpy(cv2.imread(str(f))[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    want = teacher.extract_feature_map(x)[0].numpy()
    got = fc.get(f.relative_to(demo_data.parent).as_posix()).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_rerun_skips_and_mismatch_refused(
    demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, capsys
) -> None:
    store = tmp_path / "c.zarr"
    assert run(demo_data, tiny_teacher_dir, store) == 0
    before = cache.open(str(store)).read(range(16)).view(np.uint16).copy()
    capsys.readouterr()
    assert run(demo_data, tiny_teacher_dir, store) == 0  # nothing to do
    assert "already done, skipped" in capsys.readouterr().err
    # a different layer (fingerprint) and K: refused, naming the fields, nothing touched
    assert run(demo_data, tiny_teacher_dir, store, "dino_layer=1", "channels=4") == 2
    err = capsys.readouterr().err
    assert "teacher.layer" in err and "k: cache 8, wanted 4" in err and "--overwrite" in err
    np.testing.assert_array_equal(cache.open(str(store)).read(range(16)).view(np.uint16), before)
    # accepted with --overwrite
    assert run(demo_data, tiny_teacher_dir, store, "dino_layer=1", "channels=4", "--overwrite") == 0
    fc = cache.open(str(store))
    assert fc.k == 4 and fc.fingerprint["layer"] == 1 and fc.done.all()


def test_changed_image_is_recomputed(demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    data = copy_dataset(demo_data, tmp_path / "ds")
    store = tmp_path / "c.zarr"
    assert run(data, tiny_teacher_dir, store) == 0
    f = train_images(data)[6]
    img = cv2.imread(str(f))
    cv2.imwrite(str(f), 255 - img)
    capsys.readouterr()
    assert run(data, tiny_teacher_dir, store) == 0
    assert "1 image(s) changed" in capsys.readouterr().err
    from dinocache.cache.cli import verify

    ok, lines = verify(cache.open(str(store)), str(data))
    assert ok, lines


def test_corrupt_and_wrong_size_images(
    demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, capsys
) -> None:
    data = copy_dataset(demo_data, tmp_path / "ds")
    files = train_images(data)
    files[2].write_bytes(b"not a png at all")
    small = cv2.resize(cv2.imread(str(files[9])), (IMGSZ // 2, IMGSZ))
    cv2.imwrite(str(files[9]), small)
    store = tmp_path / "c.zarr"
    # raw channels, so the comparison below does not depend on the PCA sample (which skips bad files)
    assert run(data, tiny_teacher_dir, store, "channels=full") == 2
    err = capsys.readouterr().err
    assert "2 image(s) could not be cached" in err
    assert f"{files[2]}: cannot be decoded" in err
    assert (
        f"{files[9]}: is {IMGSZ // 2}x{IMGSZ}, expected {IMGSZ}x{IMGSZ}" in err and "dinocache augment" in err
    )
    fc = cache.open(str(store))
    done = fc.done
    assert not done[2] and not done[9] and done.sum() == len(files) - 2
    x = fc.read(range(len(files)))
    assert np.isnan(x[[2, 9]]).all()
    assert np.isfinite(x[done]).all()
    # same rows are bit-identical to a clean run's: bad images never change other rows' batches
    clean = tmp_path / "clean.zarr"
    assert run(demo_data, tiny_teacher_dir, clean, "channels=full") == 0
    np.testing.assert_array_equal(
        x[done].view(np.uint16), cache.open(str(clean)).read(np.flatnonzero(done)).view(np.uint16)
    )


def test_missing_dino_root(demo_data: Path, tmp_path: Path, capsys) -> None:
    store = tmp_path / "c.zarr"
    assert run(demo_data, tmp_path / "no_such_dinov3", store) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no_such_dinov3" in err and "make-tiny-teacher" in err
    assert not store.exists()


def test_unknown_config_key(demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    assert run(demo_data, tiny_teacher_dir, tmp_path / "c.zarr", "chanels=4") == 2
    err = capsys.readouterr().err
    assert "unknown config key 'chanels'" in err and "did you mean 'channels'" in err
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"precompute": {"pca_fit_image": 3}}))
    assert precompute_main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "pca_fit_image'" in err and str(cfg) in err and "pca_fit_images" in err


def test_bad_values(demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    assert run(demo_data, tiny_teacher_dir, tmp_path / "a.zarr", "channels=999") == 2
    assert "channels: 999 but the teacher has only 64" in capsys.readouterr().err
    assert run(demo_data, tiny_teacher_dir, tmp_path / "b.zarr", "--shard", "2/2") == 2
    assert "shard" in capsys.readouterr().err
    assert run(demo_data, tiny_teacher_dir, tmp_path / "b.zarr", "--shard", "0/2", "--overwrite") == 2
    assert "single writer" in capsys.readouterr().err
    assert run(demo_data, tiny_teacher_dir, tmp_path / "b.zarr", "imgsz=120") == 2
    assert "multiple of the teacher's patch size 16" in capsys.readouterr().err


def test_empty_dataset(tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "empty"
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: a\n")
    store = tmp_path / "c.zarr"
    assert run(root / "data.yaml", tiny_teacher_dir, store) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no images" in err and "train" in err
    assert not store.exists()


def test_foreign_folder_refused(demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    store = tmp_path / "not_a_cache"
    store.mkdir()
    (store / "important.txt").write_text("keep me")
    assert run(demo_data, tiny_teacher_dir, store) == 2
    assert "is not a dinocache feature cache" in capsys.readouterr().err
    assert (store / "important.txt").read_text() == "keep me"


def test_teacher_runs_once_per_image(
    demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The PCA-fit pass's teacher outputs are written as rows: with pca_fit_images >= N every image is seen
    once, and the cache equals one where every row was recomputed by the write pass."""
    from dinocache.precompute import run as R
    from dinocache.teacher.model import DinoV3Teacher

    seen: list[int] = []
    real = DinoV3Teacher.extract_feature_map
    monkeypatch.setattr(
        DinoV3Teacher, "extract_feature_map", lambda self, x: seen.append(x.shape[0]) or real(self, x)
    )
    n = len(train_images(demo_data))
    assert run(demo_data, tiny_teacher_dir, tmp_path / "a.zarr", f"pca_fit_images={n}") == 0
    assert sum(seen) == n
    err = capsys.readouterr().err
    assert "pca fit" in err and f"their {n} teacher outputs are written as rows" in err
    seen.clear()
    monkeypatch.setattr(R, "KEEP_BYTES", 0)  # keep nothing: the write pass recomputes every row
    assert run(demo_data, tiny_teacher_dir, tmp_path / "b.zarr", f"pca_fit_images={n}") == 0
    assert sum(seen) == 2 * n
    a, b = cache.open(tmp_path / "a.zarr"), cache.open(tmp_path / "b.zarr")
    assert a.read(range(n)).tobytes() == b.read(range(n)).tobytes()


def test_pca_fit_lists_the_images_it_could_not_use(
    demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, capsys
) -> None:
    """No usable PCA-fit image: the error itself lists each image and why (nothing 'above' to look for)."""
    data = copy_dataset(demo_data, tmp_path / "ds")
    for p in train_images(data):
        p.write_bytes(b"not an image")
    store = tmp_path / "c.zarr"
    assert run(data, tiny_teacher_dir, store) != 0
    err = capsys.readouterr().err
    assert "PCA-fit images" in err and "see errors above" not in err
    first = train_images(data)[0]
    assert f"\n  {first}: " in err
    assert not store.exists()
