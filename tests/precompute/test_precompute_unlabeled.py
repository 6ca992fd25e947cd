"""Unlabeled images through the cache: a folder of images, a .txt list of images, or a dataset yaml with only a
train split and no labels; keys, verify and repair as for a labelled dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from dinocache.cache.cli import verify
from dinocache.precompute.run import main as precompute_main

from dinocache import cache
from dinocache.core.data import DataError, list_images

IMGSZ = 128  # tests/conftest.py TEST_IMGSZ


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):  # tests/conftest.py
    yield


def _images(demo_data: Path, dst: Path, n: int = 6) -> list[Path]:
    """n of the demo's training images, without their labels, copied into dst/sub/ (a nested folder)."""
    src = sorted((demo_data.parent / "images" / "train").glob("*.png"))[:n]
    (dst / "sub").mkdir(parents=True)
    out = []
    for i, f in enumerate(src):
        q = dst / ("sub" if i % 2 else "") / f.name
        shutil.copy(f, q)
        out.append(q)
    return sorted(out)


def _run(data: Path | str, teacher: Path, store: Path, *extra: str) -> int:
    args = [f"data={data}", f"dino_root={teacher}", f"cache={store}", f"imgsz={IMGSZ}", "batch=4"]
    args += ["workers=1", "device=cpu", "channels=8", "shard_size=4", "pca_fit_images=6"]
    return precompute_main([*args, *extra])


def test_list_images_forms(demo_data: Path, tmp_path: Path) -> None:
    files = _images(demo_data, tmp_path / "u")
    root, listed = list_images(tmp_path / "u")
    assert root == (tmp_path / "u").resolve() and listed == [f.resolve() for f in files]
    lst = tmp_path / "u" / "list.txt"
    lst.write_text("\n".join(["./" + f.relative_to(tmp_path / "u").as_posix() for f in files[:3]]) + "\n")
    root, listed = list_images(lst)
    assert root == lst.parent.resolve() and listed == [f.resolve() for f in files[:3]]
    # a yaml with only a train split (no val, no labels anywhere) lists that split
    (tmp_path / "u" / "data.yaml").write_text("train: sub\nnames: {0: object}\n")
    root, listed = list_images(tmp_path / "u" / "data.yaml")
    assert listed == [f.resolve() for f in files if f.parent.name == "sub"]
    # a labelled dataset's yaml lists its split as before (labels are not read)
    assert len(list_images(demo_data)[1]) == 16


def test_list_images_refusals(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path / "empty")
    lst = tmp_path / "empty" / "l.txt"
    lst.write_text("/elsewhere/a.png\n")
    with pytest.raises(DataError, match="does not exist"):
        list_images(lst)


def test_precompute_folder_verify_repair(demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path) -> None:
    files = _images(demo_data, tmp_path / "u")
    store = tmp_path / "c.zarr"
    assert _run(tmp_path / "u", tiny_teacher_dir, store, "cache_flips=true") == 0
    fc = cache.open(str(store))
    assert sorted(fc.keys) == sorted(f.relative_to(tmp_path / "u").as_posix() for f in files)
    assert fc.done.all() and fc.flips
    ok, lines = verify(fc, str(tmp_path / "u"))
    assert ok, lines
    # the same images through a .txt list give the same rows, bit for bit
    lst = tmp_path / "u" / "all.txt"
    lst.write_text("\n".join(str(f) for f in files) + "\n")
    store2 = tmp_path / "c2.zarr"
    assert _run(lst, tiny_teacher_dir, store2, "cache_flips=true") == 0
    fc2 = cache.open(str(store2))
    assert list(fc2.keys) == list(fc.keys)
    for k in fc.keys:
        assert np.array_equal(fc.get(k), fc2.get(k)) and np.array_equal(
            fc.get(k, flipped=True), fc2.get(k, flipped=True)
        )
    # an edited image is found by verify and recomputed by a rerun (as for labelled data)
    files[0].write_bytes(files[1].read_bytes())
    ok, lines = verify(cache.open(str(store)), str(tmp_path / "u"))
    assert not ok
    assert _run(tmp_path / "u", tiny_teacher_dir, store, "cache_flips=true") == 0
    ok, lines = verify(cache.open(str(store)), str(tmp_path / "u"))
    assert ok, lines
