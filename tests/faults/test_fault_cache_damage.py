"""Damage catalogue: each way a cache can go bad after precompute, through `cache verify`, the trainer's reader
(every map checked as it is read) and `dinocache train` itself. Every case must give a clear error naming the
row/image key and the file; no NaN reaches a loss; a failed run leaves no run folder behind.

The cache (tests/faults/conftest.py) has 16 rows in shards of 4: row r lives in features/c.{r // 4}.0.0.0.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr
from dinocache.cache.cli import main as cache_main


def flip(path: Path, start: int, n: int = 64) -> None:
    b = bytearray(path.read_bytes())
    for i in range(start, min(len(b), start + n)):
        b[i] ^= 0x5A
    path.write_bytes(bytes(b))


def flip_shard(data: Path, store: Path) -> list[str]:
    flip(store / "features" / "c.1.0.0.0", 16)  # inside the first inner chunk = row 4
    return ["row 4", "images/train/000004.png", "c.1.0.0.0"]


def truncate_shard(data: Path, store: Path) -> list[str]:
    f = store / "features" / "c.2.0.0.0"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # the shard index at the end is gone
    return ["row 8", "images/train/000008.png", "c.2.0.0.0"]


def delete_shard(data: Path, store: Path) -> list[str]:
    (store / "features" / "c.3.0.0.0").unlink()
    return ["images/train/000012.png", "c.3.0.0.0"]


def nan_row(data: Path, store: Path) -> list[str]:
    a = zarr.open_group(str(store), mode="r+")["features"]
    x = a[4:8]
    x[1, 0, 2, 3] = np.nan  # row 5, a valid chunk (checksum recomputed) holding a NaN
    a[4:8] = x
    return ["row 5", "images/train/000005.png", "NaN"]


def inf_row(data: Path, store: Path) -> list[str]:
    a = zarr.open_group(str(store), mode="r+")["features"]
    x = a[0:4]
    x[2, 0, 0, 0] = np.inf
    a[0:4] = x
    return ["row 2", "images/train/000002.png", "NaN/inf"]


def flip_done(data: Path, store: Path) -> list[str]:
    flip(store / "done" / "c.0", 1, 1)
    return ["done/c.0", "checksum"]


def flip_keys(data: Path, store: Path) -> list[str]:
    flip(store / "keys" / "c.3.0", 3, 2)
    return ["keys/c.3.0", "checksum"]


def flip_sha(data: Path, store: Path) -> list[str]:
    flip(store / "sha256" / "c.1.0", 5, 3)
    return ["sha256/c.1.0", "checksum"]


DAMAGE: dict[str, Callable[[Path, Path], list[str]]] = {
    "64 bytes flipped in a shard": flip_shard,
    "truncated shard": truncate_shard,
    "deleted shard": delete_shard,
    "NaN written into a row": nan_row,
    "inf written into a row": inf_row,
    "byte flipped in done": flip_done,
    "bytes flipped in keys": flip_keys,
    "bytes flipped in sha256": flip_sha,
}


def edit_image(data: Path, store: Path) -> list[str]:
    f = data.parent / "images" / "train" / "000006.png"
    cv2.imwrite(str(f), 255 - cv2.imread(str(f)))
    return ["row 6", "images/train/000006.png", "changed"]


def broken_features_meta(data: Path, store: Path) -> list[str]:
    (store / "features" / "zarr.json").write_text('{"shape": [16, 8, 8')
    return ["features/zarr.json"]


def broken_root_meta(data: Path, store: Path) -> list[str]:
    (store / "zarr.json").write_text("{not json")
    return [f"{store}/zarr.json"]


def deleted_done_chunk(data: Path, store: Path) -> list[str]:
    (store / "done" / "c.1").unlink()  # reads as fill 0: rows 4-7 not done
    return ["row 4", "images/train/000004.png", "not done"]


VERIFY_ONLY = {
    "image edited after precompute": edit_image,
    "broken features/zarr.json": broken_features_meta,
    "broken root zarr.json": broken_root_meta,
    "deleted done chunk": deleted_done_chunk,
}


@pytest.mark.parametrize("name", [*DAMAGE, *VERIFY_ONLY])
def test_verify_names_each_damage(name: str, work, faults) -> None:
    data, store = work
    must = {**DAMAGE, **VERIFY_ONLY}[name](data, store)
    r = faults.expect_clear(
        "cache verify", name, cache_main, ["verify", str(store), "--data", str(data)], must
    )
    assert r.rc in (1, 2)
    if r.rc == 1:
        assert "dinocache cache repair" in r.err


def test_bit_rot_count_is_exact(work, capsys) -> None:
    """64 flipped bytes inside one shard: verify fails and names exactly that row."""
    data, store = work
    flip_shard(data, store)
    assert cache_main(["verify", str(store), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "damaged row (row, key, file): 1\n" in err
    assert "row 4 images/train/000004.png: image chunk fails its crc32c checksum" in err
    assert f"({store}/features/c.1.0.0.0)" in err


READ_TIME = [k for k in DAMAGE if "done" not in k and "sha256" not in k]  # those two: at the start of train


@pytest.mark.parametrize("prepared", [False, True], ids=["unprepared", "prepared"])
@pytest.mark.parametrize("name", READ_TIME)
def test_reader_refuses_damaged_maps(name: str, prepared: bool, work) -> None:
    """The trainer's per-image read (train.dataset.TeacherLookup) refuses every damaged row by key, shard file and
    repair command, or the cache refuses to open; the healthy rows still read. `prepared`: the dataset's lookup,
    whose images' rows are indexed up front (its per-sample path views the memory-mapped shard directly)."""
    from dinocache.train.dataset import TeacherLookup

    from dinocache import cache

    data, store = work
    must = DAMAGE[name](data, store)
    root = data.parent
    lookup = TeacherLookup(str(store), root, channels=8)
    files = [str(root / "images" / "train" / f"{i:06d}.png") for i in range(16)]
    if prepared:
        try:
            lookup.prepare(files)
        except cache.CacheError:
            pass  # a cache that refuses to open: every read below refuses it too
    errors = []
    for f in files:
        try:
            x = lookup(f)
            assert np.isfinite(x).all()
        except cache.CacheError as e:
            errors.append(str(e))
    assert errors, f"{name}: every row read without an error"
    text = "\n".join(errors)
    for s in must:
        if s not in ("checksum", "NaN", "NaN/inf", "row 4", "row 5", "row 2", "row 8"):
            assert s in text, f"{name}: {s!r} not in {text[:2000]}"
    assert "dinocache cache repair" in text
    if prepared:  # the same refusals, word for word, as the general path's
        plain = TeacherLookup(str(store), root, channels=8)
        again = []
        for f in files:
            try:
                plain(f)
            except cache.CacheError as e:
                again.append(str(e))
        assert errors == again


# -- the real `dinocache train`: refused at start (missing shard), or at the first damaged read -----------------
def _train_cfg(tiny_train, tmp_path: Path, data: Path, store: Path, teacher: Path, **kw) -> Path:
    sec = tiny_train(
        tmp_path,
        **{
            "data": str(data),
            "dino_root": str(teacher),
            "cache": str(store),
            "epochs": 1,
            "name": "x",
            "distill_geometric_aug": "off",
            **kw,
        },
    )
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"train": sec}))
    return p


TRAIN_CASES = {
    "deleted shard": (delete_shard, {}),
    "NaN written into a row": (nan_row, {}),
    "64 bytes flipped in a shard": (flip_shard, {}),
    "image edited after precompute": (edit_image, {"verify_images": True}),
    "byte flipped in done": (flip_done, {}),
}


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_train_refuses_damaged_cache(
    name: str, work, tmp_path: Path, tiny_teacher_dir: Path, tiny_train, faults
) -> None:
    from dinocache.train.cli import main as train_main

    data, store = work
    damage, kw = TRAIN_CASES[name]
    must = [
        s for s in damage(data, store) if s not in ("row 4", "row 5", "row 6", "NaN", "changed", "checksum")
    ]
    cfg = _train_cfg(tiny_train, tmp_path, data, store, tiny_teacher_dir, **kw)
    r = faults.expect_clear(
        "train", f"cache: {name}", train_main, ["--config", str(cfg)], [*must, "cache repair"]
    )
    assert r.rc == 2 and "Traceback" not in r.err
    runs = tmp_path / "artifacts" / "yolo26n-obb" / "runs"
    assert not list(runs.glob("*/train")), "a failed run before its first checkpoint left a run folder"
    if name == "NaN written into a row":
        assert "nan" not in "".join(p.read_text() for p in runs.rglob("results.csv")).lower()


def test_damaged_metadata_open_names_file(work, tmp_path: Path) -> None:
    from dinocache import cache

    data, store = work
    broken_features_meta(data, store)
    with pytest.raises(cache.CacheError, match="features/zarr.json"):
        cache.open(str(store))
    shutil.rmtree(store)
