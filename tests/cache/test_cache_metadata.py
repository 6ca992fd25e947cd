"""Metadata and small arrays of a local cache read with json + numpy (cache/metadata.py): the same bits as
zarr-python on every array of a real cache, declining other layouts, damage still named, and no zarr import when
training opens a cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from dinocache.cache import format as fmt
from dinocache.cache import metadata

from dinocache import cache


def _small_arrays(path: Path) -> list[str]:
    return [
        p.name
        for p in sorted(path.iterdir())
        if p.is_dir() and p.name not in (fmt.FEATURES, fmt.FEATURES_FLIP)
    ]


@pytest.mark.parametrize("which", ["reference", "flips"])
def test_same_bits_as_zarr(reference_cache: Path, flip_caches: dict[str, Path], which: str) -> None:
    path = reference_cache if which == "reference" else flip_caches["flips"]
    group = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
    assert metadata.group_attrs(path) == dict(group.attrs)
    names = _small_arrays(path)
    assert {fmt.KEYS, fmt.DONE, fmt.SHA256, fmt.CHANNEL_MEAN, fmt.CHANNEL_STD} <= set(names)
    for name in [*names, fmt.FEATURES]:
        ref = group[name]
        assert metadata.shape_dtype(path / name) == (tuple(ref.shape), str(ref.dtype)), name
    for name in names:
        x, ref = metadata.read_array(path / name), np.asarray(group[name][...])
        assert x is not None, f"{name}: declined a precompute array"
        assert x.dtype == ref.dtype and x.shape == ref.shape
        assert np.array_equal(x.view(np.uint8), ref.view(np.uint8)), name
    fast, ref = cache.open(path), cache.open(path, read_path="zarr")
    assert fast.keys == ref.keys and fast.sha256() == ref.sha256()
    assert np.array_equal(fast.done, ref.done) and fast.spec == ref.spec
    for a, b in ((fast.channel_mean, ref.channel_mean), (fast.channel_std, ref.channel_std)):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    if ref.pca is not None:
        assert np.array_equal(fast.pca.components, ref.pca.components)


def test_declines_other_layouts(tmp_path: Path) -> None:
    from zarr.codecs import BloscCodec

    store = zarr.storage.LocalStore(tmp_path)
    zarr.create_array(
        store, name="blosc", shape=(8,), dtype="float32", chunks=(4,), compressors=[BloscCodec()]
    )
    zarr.create_array(store, name="nanfill", shape=(8,), dtype="float32", chunks=(4,), fill_value=np.nan)
    zarr.create_array(store, name="sharded", shape=(8,), dtype="uint8", chunks=(2,), shards=(4,))
    for name in ("blosc", "nanfill", "sharded", "absent"):
        assert metadata.read_array(tmp_path / name) is None, name
    a = zarr.create_array(store, name="plain", shape=(7, 3), dtype="float32", chunks=(4, 2), compressors=None)
    x = np.arange(21, dtype=np.float32).reshape(7, 3)
    x[4:, 2:] = 0  # a chunk equal to the fill value: zarr does not store it
    a[...] = x
    assert np.array_equal(metadata.read_array(tmp_path / "plain"), x)


def test_damaged_small_array_still_named(reference_cache: Path, tmp_path: Path) -> None:
    p = tmp_path / "c.zarr"
    shutil.copytree(reference_cache, p)
    f = p / fmt.KEYS / "c.0.0"
    b = bytearray(f.read_bytes())
    b[3] ^= 0x01
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="checksum"):
        metadata.read_array(p / fmt.KEYS)
    with pytest.raises(cache.CacheCorrupt, match=r"keys.*c\.0\.0|c\.0\.0.*keys"):
        _ = cache.open(p).keys


def test_training_open_imports_no_zarr(reference_cache: Path) -> None:
    """What a cache-mode training start does with the cache: open, keys, done, sha256, statistics, PCA, the
    stale-check record, the shard listing, one checked read: none of it imports zarr, tensorstore or fsspec."""
    code = (
        "import sys; from dinocache import cache; from dinocache.cache.check import checked_map, missing_shard_files; "
        "from dinocache.cache.freshness import read_record; "
        f"fc = cache.open({str(reference_cache)!r}); fc.warm(); fc.done; fc.sha256(); fc.channel_mean; "
        f"fc.channel_std; fc.pca; read_record({str(reference_cache)!r}); missing_shard_files(fc); "
        "checked_map(fc, fc.keys[0], view=True); "
        "print(sorted(m for m in ('zarr', 'tensorstore', 'fsspec') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
