"""cache_flips: precompute also stores the teacher's map of every horizontally flipped image (`features_flip`).

The unflipped `features` are bit for bit those of a cache made without flips (same PCA, same batches); each
flipped row is the teacher's map of the mirrored image, which for a ViT is NOT the mirrored map; verify,
repair and the trainer's per-read check cover the flipped array too; a resume with another cache_flips is
refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dinocache.cache.check import scan, shard_file
from dinocache.cache.errors import CacheCorrupt, CacheError
from dinocache.cache.store import CacheWriter
from dinocache.precompute.run import main as precompute_main

from dinocache import cache

IMGSZ = 128


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):  # tests/conftest.py
    yield


def test_flipped_views_are_the_teachers_map_of_the_mirrored_image(
    flip_caches: dict[str, Path], demo_data: Path, tiny_teacher_dir: Path
) -> None:
    from dinocache.teacher.registry import load_teacher

    flips, plain = flip_caches["flips"], flip_caches["plain"]
    fc, fp = cache.open(str(flips)), cache.open(str(plain))
    assert fc.flips and not fp.flips and fc.done.all()
    assert json.loads((flips / "zarr.json").read_text())["attributes"]["dinocache"]["flips"] is True
    # features: identical bits with and without cache_flips (PCA fit on the unflipped views only)
    np.testing.assert_array_equal(fc.read(range(fc.n)).view(np.uint16), fp.read(range(fp.n)).view(np.uint16))
    np.testing.assert_array_equal(fc.pca.components, fp.pca.components)
    teacher = load_teacher(tiny_teacher_dir)
    files = sorted((demo_data.parent / "images" / "train").glob("*.png"))[:4]
    rgb = np.stack([cv2.imread(str(f))[..., ::-1] for f in files])
    x = torch.from_numpy(rgb[:, :, ::-1].copy()).permute(0, 3, 1, 2).float() / 255  # mirrored images
    want = fc.pca.project(teacher.extract_feature_map(x)).numpy()  # (4, K, h, w)
    keys = [f.relative_to(demo_data.parent).as_posix() for f in files]
    got = np.stack([fc.get(k, flipped=True) for k in keys]).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    # ... and not the mirrored map of the unflipped image (a ViT is not flip-equivariant)
    mirrored = np.stack([fc.get(k)[..., ::-1] for k in keys]).astype(np.float32)
    assert np.abs(mirrored - got).max() > 0.05 * np.abs(got).max()
    # the zarr-python reference path reads the same bits
    ref = cache.open(str(flips), read_path="zarr")
    np.testing.assert_array_equal(ref.read([0, 3], flipped=True), fc.read([0, 3], flipped=True))


def test_plain_cache_refuses_flipped_reads(flip_caches: dict[str, Path]) -> None:
    fp = cache.open(str(flip_caches["plain"]))
    with pytest.raises(CacheError, match="no flipped views.*cache_flips=true"):
        fp.read([0], flipped=True)


def test_resume_with_other_cache_flips_is_refused(
    flip_caches: dict[str, Path], precompute_argv, capsys
) -> None:
    plain = flip_caches["plain"]
    assert precompute_main([*precompute_argv(plain), "cache_flips=true"]) == 2
    assert "flips: cache false, wanted true" in capsys.readouterr().err
    assert not cache.open(str(plain)).flips  # untouched


def test_writer_needs_both_views(flip_caches: dict[str, Path]) -> None:
    w = CacheWriter(str(flip_caches["flips"]))
    x = np.zeros((2, w.spec.k, *w.spec.grid), np.float16)
    with pytest.raises(CacheError, match="features_flip was not given"):
        w.write_shard(0, x, ["00" * 32] * 2, np.ones(2, np.uint8))


def test_damaged_flipped_view_is_found_and_repaired(
    flip_caches: dict[str, Path], precompute_argv, tmp_path: Path, capsys
) -> None:
    import shutil

    store = tmp_path / "c.zarr"
    shutil.copytree(flip_caches["flips"], store)
    fc = cache.open(str(store))
    good = fc.read(range(fc.n), flipped=True).view(np.uint16).copy()
    f = Path(shard_file(fc, 1, flipped=True))
    raw = bytearray(f.read_bytes())
    raw[40] ^= 0xFF  # one flipped bit in the first image of shard 1 (rows 2-3)
    f.write_bytes(bytes(raw))
    bad, _, _ = scan(cache.open(str(store)))
    assert [b.row for b in bad] == [2] and "flipped-view image chunk" in bad[0].reason
    assert bad[0].file.endswith("features_flip/c.1.0.0.0")
    # the trainer's per-read check names the flipped view, the image and the repair command
    from dinocache.cache.check import checked_map

    with pytest.raises(CacheCorrupt, match=r"flipped-view teacher map of image .* \(row 2.*cache repair"):
        checked_map(cache.open(str(store)), fc.keys[2], flipped=True)
    # a deleted flipped shard is found as well
    g = Path(shard_file(fc, 2, flipped=True))
    g.unlink()
    bad, _, _ = scan(cache.open(str(store)))
    assert {b.row for b in bad} == {2, 4, 5}
    assert any("flipped-view shard file is missing" in b.reason for b in bad)
    # repair recomputes exactly those shards: same bits as the fresh cache
    assert precompute_main([*precompute_argv(store), "cache_flips=true", "repair=true"]) == 0
    fixed = cache.open(str(store))
    assert scan(fixed)[0] == []
    np.testing.assert_array_equal(fixed.read(range(fixed.n), flipped=True).view(np.uint16), good)


def test_info_and_verify_show_the_flipped_views(
    flip_caches: dict[str, Path], demo_data: Path, capsys
) -> None:
    from dinocache.cache.cli import main as cache_main

    flips, plain = flip_caches["flips"], flip_caches["plain"]
    assert cache_main(["info", str(flips)]) == 0
    assert "flipped views stored" in capsys.readouterr().out
    assert cache_main(["info", str(plain), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["flips"] is False
    assert cache_main(["verify", str(flips), "--data", str(demo_data)]) == 0
