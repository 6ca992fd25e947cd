"""The cache format and reader/writer without a teacher: synthetic rows written shard by shard."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
from dinocache.cache import format as fmt
from dinocache.cache.store import CacheWriter, encode_keys

from dinocache import cache

N, K, G, S = 10, 6, 4, 4


def make_spec(**kw) -> fmt.Spec:
    values = dict(
        n=N,
        k=K,
        grid=[G, G],
        imgsz=G * 16,
        patch_size=16,
        teacher_channels=12,
        shard_size=S,
        codec="zstd",
        key_len=24,
        pca=True,
        pca_fit_images=N,
        teacher={"model_type": "dinov3_vit", "layer": -1, "imgsz": G * 16},
    )
    values.update(kw)
    return fmt.Spec(**values)


def keys(n: int = N) -> list[str]:
    return [f"images/train/{i:04d}.png" for i in range(n)]


def rows_data(n: int = N) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, K, G, G)).astype(np.float16)


def build(path: str, spec: fmt.Spec | None = None, write: bool = True) -> CacheWriter:
    from dinocache.cache.pca import PCABasis

    spec = spec or make_spec()
    basis = PCABasis(np.zeros(12), np.eye(12)[:K], np.arange(K, 0, -1))
    w = CacheWriter.create(path, spec, keys(spec.n), np.zeros(K), np.ones(K), basis if spec.pca else None)
    if write:
        x = rows_data(spec.n)
        for s in range(spec.n_shards):
            r = spec.shard_rows(s)
            w.write_shard(s, x[r.start : r.stop], ["ab" * 32] * len(r), np.ones(len(r), np.uint8))
    return w


@pytest.fixture
def store(tmp_path: Path) -> str:
    p = str(tmp_path / "c.zarr")
    build(p)
    return p


def test_round_trip_and_layout(store: str) -> None:
    fc = cache.open(store)
    x = rows_data()
    assert (fc.n, fc.k, fc.grid, fc.imgsz, fc.shard_size, fc.codec) == (N, K, (G, G), G * 16, S, "zstd")
    assert fc.done.all() and fc.keys == keys()
    np.testing.assert_array_equal(fc.read(range(N)), x)
    # any order, duplicates, subsets of channels
    rows = [7, 2, 2, 9, 0, 3]
    np.testing.assert_array_equal(fc.read(rows), x[rows])
    np.testing.assert_array_equal(fc.read(rows, channels=2), x[rows][:, :2])
    np.testing.assert_array_equal(fc.get("images/train/0005.png", channels=3), x[5, :3])
    assert fc.read([]).shape == (0, K, G, G)
    assert fc.pca.k == K and fc.channel_std.dtype == np.float32
    # the frozen layout: '.' chunk keys, one shard file per S images, attrs stamped
    shard_files = sorted(p.name for p in (Path(store) / "features").glob("c.*"))
    assert shard_files == ["c.0.0.0.0", "c.1.0.0.0", "c.2.0.0.0"]
    attrs = zarr.open_group(store, mode="r").attrs["dinocache"]
    assert (
        attrs["format"] == fmt.FORMAT_NAME
        and attrs["version"] == fmt.FORMAT_VERSION
        and attrs["ready"] is True
    )
    assert attrs["fingerprint_id"] == fmt.fingerprint_id(attrs["teacher"])
    assert fc.sha256()[0] == "ab" * 32


def test_errors_name_the_problem(store: str) -> None:
    fc = cache.open(store)
    with pytest.raises(KeyError, match="images/train/nope.png"):
        fc.row_of("images/train/nope.png")
    with pytest.raises(IndexError, match="row 10 out of range"):
        fc.read([1, 10])
    with pytest.raises(ValueError, match="channels=7"):
        fc.read([1], channels=7)


def test_unwritten_rows_read_nan(tmp_path: Path) -> None:
    p = str(tmp_path / "c.zarr")
    w = build(p, write=False)
    w.write_shard(1, rows_data()[4:8], ["00" * 32] * 4, np.ones(4, np.uint8))
    fc = cache.open(p)
    assert fc.done.tolist() == [False] * 4 + [True] * 4 + [False] * 2
    x = fc.read(range(N))
    assert np.isnan(x[:4]).all() and np.isnan(x[8:]).all() and np.isfinite(x[4:8]).all()
    with pytest.raises(cache.CacheError, match="expected"):
        w.write_shard(2, rows_data()[:3], ["00" * 32] * 3, np.ones(3, np.uint8))  # shard 2 holds 2 rows


def _set_block(path: str, **changes) -> None:
    g = zarr.open_group(path, mode="r+")
    block = dict(g.attrs["dinocache"])
    block.update(changes)
    g.attrs["dinocache"] = block


def test_version_and_format_refused(store: str, tmp_path: Path) -> None:
    _set_block(store, version=fmt.FORMAT_VERSION + 1)
    with pytest.raises(
        cache.CacheFormatError, match=f"version {fmt.FORMAT_VERSION + 1} was written by a newer dinocache"
    ):
        cache.open(store)
    _set_block(store, version=fmt.FORMAT_VERSION, format="something.else")
    with pytest.raises(cache.CacheFormatError, match="format is 'something.else'"):
        cache.open(store)
    _set_block(store, format=fmt.FORMAT_NAME, ready=False)
    with pytest.raises(cache.CacheFormatError, match="never finished"):
        cache.open(store)
    plain = str(tmp_path / "plain.zarr")
    zarr.open_group(plain, mode="w").create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(cache.CacheFormatError, match="not a dinocache feature cache"):
        cache.open(plain)
    with pytest.raises(cache.CacheFormatError, match="no feature cache there"):
        cache.open(str(tmp_path / "missing.zarr"))


def test_damaged_array_refused(store: str) -> None:
    g = zarr.open_group(store, mode="r+")
    del g["channel_std"]
    with pytest.raises(cache.CacheFormatError, match="'channel_std' is missing"):
        cache.open(store)


def test_check_fingerprint_names_fields(store: str) -> None:
    fc = cache.open(store)
    cache.check_fingerprint(fc, fc.fingerprint)
    other = dict(fc.fingerprint, layer=3)
    with pytest.raises(cache.CacheMismatch, match=r"teacher\.layer: cache -1, wanted 3"):
        cache.check_fingerprint(fc, other)


def test_compat_diff() -> None:
    a, b = make_spec(), make_spec(k=4, teacher={"model_type": "dinov3_vit", "layer": 2, "imgsz": G * 16})
    lines = fmt.compat_diff(a, b)
    assert "k: cache 6, wanted 4" in lines and "teacher.layer: cache -1, wanted 2" in lines
    assert fmt.compat_diff(a, make_spec(created_at="later")) == []


def _read_rows(fc: cache.FeatureCache) -> np.ndarray:
    return fc.read([1, 8])


def test_pickles_and_survives_fork(store: str) -> None:
    fc = cache.open(store)
    want = fc.read([1, 8])  # opens the arrays in the parent first, like a trainer would
    clone = pickle.loads(pickle.dumps(fc))
    assert clone._arrays == {}
    np.testing.assert_array_equal(clone.read([1, 8]), want)
    with mp.get_context("fork").Pool(1) as pool:
        np.testing.assert_array_equal(pool.apply(_read_rows, (fc,)), want)


def test_fsspec_url_store() -> None:
    url = "memory://dinocache-test/c.zarr"
    build(url, make_spec(codec="lz4"))
    fc = cache.open(url)
    assert fc.codec == "lz4"
    np.testing.assert_array_equal(fc.read([0, 9]), rows_data()[[0, 9]])
    assert fc.disk_bytes() > 0


def test_auto_shard_size_and_keys() -> None:
    assert fmt.auto_shard_size(8 * 8 * 2) == 256
    assert fmt.auto_shard_size(128 * 32 * 32 * 2) == 64  # 256 KiB/image -> 16 MiB shards
    assert fmt.auto_shard_size(1024 * 64 * 64 * 2) == 2
    assert fmt.auto_shard_size(1 << 30) == 1
    assert fmt.auto_shard_size(8 * 8 * 2, n=16) == 16 and fmt.auto_shard_size(8 * 8 * 2, n=17) == 32
    assert fmt.auto_shard_size(128 * 32 * 32 * 2, n=1000) == 64 and fmt.auto_shard_size(10, n=1) == 1
    raw = encode_keys(["a", "images/é.png"], 16)
    assert raw.shape == (2, 16) and raw.dtype == np.uint8
    from dinocache.cache.store import decode_keys

    assert decode_keys(raw) == ["a", "images/é.png"]
    with pytest.raises(cache.CacheError, match="longer than key_len"):
        encode_keys(["x" * 17], 16)


@pytest.mark.parametrize("codec", ["none", "zstd", "lz4"])
def test_tensorstore_reads_equal_zarr_python(tmp_path: Path, codec: str) -> None:
    """The tensorstore read path returns the very bits of the zarr-python reader, NaN rows included."""
    p = str(tmp_path / f"{codec}.zarr")
    w = build(p, make_spec(codec=codec), write=False)
    x = rows_data()
    w.write_shard(0, x[:S], ["ab" * 32] * S, np.ones(S, np.uint8))  # shards 1, 2 never written: NaN
    fast, ref = cache.open(p), cache.open(p, read_path="zarr")
    assert fast._ts_features() is not None and ref._ts_features() is None
    for rows in ([0], [3], [7], [2, 0, 2, 9, 1], list(range(N)), [5, 4], [9, 8, 7, 6]):
        for ch in (None, 2):
            a, b = fast.read(rows, ch), ref.read(rows, ch)
            assert a.dtype == np.float16 and a.shape == b.shape
            assert a.tobytes() == b.tobytes()  # bit-identical, NaN payloads too
    np.testing.assert_array_equal(fast.read([1, 3]), x[[1, 3]])
    assert np.isnan(fast.get(keys()[9])).all()
    assert fast.get(keys()[2], channels=3).shape == (3, G, G)


def test_new_caches_default_to_no_compression() -> None:
    from dinocache.precompute.run import PrecomputeConfig

    # no compression; the crc32c checksum of format version 2 stays on every chunk
    assert PrecomputeConfig().codec == "none" and [type(c).__name__ for c in fmt.compressors("none")] == [
        "Crc32cCodec"
    ]


def test_unsupported_codec_refused(store: str) -> None:
    g = zarr.open_group(store, mode="r+")
    block = dict(g.attrs[fmt.ATTRS_KEY])
    block["codec"] = "brotli"
    g.attrs[fmt.ATTRS_KEY] = block
    with pytest.raises(cache.CacheFormatError, match=r"codec 'brotli'.*does not read.*--overwrite"):
        cache.open(store)


def test_array_with_unknown_codec_refused(store: str) -> None:
    """A features array whose zarr metadata names a codec no reader knows: refused naming the array."""
    import json

    meta = Path(store) / fmt.FEATURES / "zarr.json"
    m = json.loads(meta.read_text())
    m["codecs"][0]["configuration"]["codecs"].append({"name": "no-such-codec", "configuration": {}})
    meta.write_text(json.dumps(m))
    with pytest.raises(cache.CacheFormatError, match=r"array 'features' cannot be opened.*no-such-codec"):
        cache.open(store)
    with pytest.raises(cache.CacheFormatError, match=r"array 'features' cannot be read with tensorstore"):
        from dinocache.cache.backend import open_array

        open_array(store, fmt.FEATURES)


def _read_in_child(fc: cache.FeatureCache) -> bytes:
    return fc.read([1, 8]).tobytes()


def test_forked_worker_after_parent_tensorstore_use_falls_back(store: str) -> None:
    """tensorstore cannot run in a child forked after its parent used it: the child reads via zarr-python."""
    fc = cache.open(store)
    want = fc.read([1, 8]).tobytes()  # parent uses tensorstore
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply(_read_in_child, (fc,)) == want


def test_version_1_cache_refused_with_upgrade_command(store: str) -> None:
    """A cache from before the weight-file digest (format 1): refused, the message gives the rebuild command."""
    g = zarr.open_group(store, mode="r+")
    block = dict(g.attrs["dinocache"])
    block.pop("teacher_files")
    block["version"] = 1
    g.attrs["dinocache"] = block
    with pytest.raises(cache.CacheFormatError) as e:
        cache.open(store)
    msg = str(e.value)
    assert "version 1 is older" in msg and "digest of the teacher's weight files" in msg
    assert "dinocache precompute --config config.json --overwrite" in msg and "precompute.yaml" in msg


def test_store_missing_teacher_digest_refused(store: str) -> None:
    g = zarr.open_group(store, mode="r+")
    block = dict(g.attrs["dinocache"])
    block.pop("teacher_files")
    g.attrs["dinocache"] = block
    with pytest.raises(cache.CacheFormatError, match=r"lacks the teacher's weight-file digest.*--overwrite"):
        cache.open(store)
