"""The memory-mapped read path (cache/mapped.py): bit-identical to tensorstore on every array and layout it accepts,
declining the ones it does not, fork-safe, and no tensorstore import when it serves."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from dinocache.cache import format as fmt
from dinocache.cache import mapped
from dinocache.cache.mapped import MappedArray
from dinocache.cache.store import CacheWriter

from dinocache import cache


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.uint16)


def _same_as_tensorstore(path: Path, flips: bool) -> None:
    fast = cache.open(path)
    ts = cache.open(path, read_path="tensorstore")
    rng = np.random.default_rng(0)
    for flipped in (False, True) if flips else (False,):
        name = fmt.FEATURES_FLIP if flipped else fmt.FEATURES
        assert fast._mapped_reader(name) is not None, f"{name}: the mapped reader declined a precompute cache"
        assert ts._mapped_reader(name) is None
        rows = np.arange(fast.n)
        for d in (None, 1, fast.k // 2):
            a, b = fast.read(rows, channels=d, flipped=flipped), ts.read(rows, channels=d, flipped=flipped)
            assert a.dtype == b.dtype == np.float16 and a.shape == b.shape
            assert np.array_equal(_bits(a), _bits(b))
        shuffled = rng.integers(0, fast.n, 3 * fast.n)  # duplicates, any order
        assert np.array_equal(
            _bits(fast.read(shuffled, flipped=flipped)), _bits(ts.read(shuffled, flipped=flipped))
        )
        for key in fast.keys:
            for d in (None, 3):
                a, b = fast.get(key, channels=d, flipped=flipped), ts.get(key, channels=d, flipped=flipped)
                assert a.shape == b.shape and np.array_equal(_bits(a), _bits(b)), key
                v = fast.get(key, channels=d, flipped=flipped, view=True)  # the training dataset's read
                assert not v.flags.writeable and v.shape == b.shape and np.array_equal(_bits(v), _bits(b)), (
                    key
                )


def test_precompute_cache_same_bits_as_tensorstore(reference_cache: Path) -> None:
    _same_as_tensorstore(reference_cache, flips=False)


def test_flipped_views_same_bits_as_tensorstore(flip_caches: dict[str, Path]) -> None:
    _same_as_tensorstore(flip_caches["flips"], flips=True)


def _store(path: Path, codec: str = "none", n: int = 10, write: tuple[int, ...] = (0, 2)) -> np.ndarray:
    """A K=4, 3x3, S=4 cache with shards `write` written (shard 1 never: its file does not exist), row 3 all NaN
    (an all-fill chunk zarr does not store: an absent index entry)."""
    k, g = 4, 3
    spec = fmt.Spec(
        n=n, k=k, grid=[g, g], imgsz=g * 16, patch_size=16, teacher_channels=k, shard_size=4, codec=codec,
        key_len=16, pca=False, pca_fit_images=1, teacher={"t": 1}, teacher_files={},
    )  # fmt: skip
    w = CacheWriter.create(str(path), spec, [f"k{i:04d}" for i in range(n)], np.zeros(k), np.ones(k))
    x = np.random.default_rng(1).standard_normal((n, k, g, g)).astype(np.float16)
    x[3] = np.nan
    for sh in write:
        r = spec.shard_rows(sh)
        w.write_shard(sh, x[r.start : r.stop], ["0" * 64] * len(r), np.ones(len(r), np.uint8))
    return x


def test_missing_chunks_and_shards_read_as_fill(tmp_path: Path) -> None:
    p = tmp_path / "c.zarr"
    x = _store(p)
    assert not (p / "features" / "c.1.0.0.0").exists()
    offsets = MappedArray.open(p / "features")._shard(0).offsets
    assert offsets[3] == 2**64 - 1, "the all-NaN row was stored; the absent-chunk case is not tested"
    fast, ts = cache.open(p), cache.open(p, read_path="tensorstore")
    rows = np.arange(10)
    a, b = fast.read(rows), ts.read(rows)
    assert np.array_equal(_bits(a), _bits(b))
    assert np.isnan(a[3]).all() and np.isnan(a[4:8]).all()
    assert np.array_equal(_bits(a[[0, 1, 2, 8, 9]]), _bits(x[[0, 1, 2, 8, 9]]))


def test_compressed_cache_declines_to_tensorstore(tmp_path: Path) -> None:
    p = tmp_path / "z.zarr"
    x = _store(p, codec="zstd", write=(0, 1, 2))
    fc = cache.open(p)
    assert fc._mapped_reader(fmt.FEATURES) is None
    ok = [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert np.array_equal(_bits(fc.read(ok)), _bits(x[ok]))


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("checksums", [True, False])
@pytest.mark.parametrize("separator", [".", "/"])
def test_index_location_codecs_and_separator(
    tmp_path: Path, location: str, checksums: bool, separator: str
) -> None:
    """Layouts precompute does not write but the sharding codec allows: the reader follows the metadata."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    crc = [Crc32cCodec()] if checksums else []
    x = np.random.default_rng(2).standard_normal((7, 3, 2, 5)).astype(np.float16)
    x[5] = 0.5  # the fill value: not stored
    arr = zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "a"),
        shape=x.shape,
        dtype="float16",
        chunks=(4, 3, 2, 5),
        serializer=ShardingCodec(
            chunk_shape=(1, 3, 2, 5),
            codecs=[BytesCodec(), *crc],
            index_codecs=[BytesCodec(), *crc],
            index_location=location,
        ),
        compressors=None,
        fill_value=0.5,
        chunk_key_encoding={"name": "default", "separator": separator},
    )
    arr[...] = x
    m = MappedArray.open(tmp_path / "a")
    assert m is not None and m.index_at_end == (location == "end") and m.chunk_crc == checksums
    assert np.array_equal(_bits(m.read(np.arange(7), 3)), _bits(x))
    assert np.array_equal(_bits(m.read(np.array([6, 0]), 1)), _bits(x[[6, 0], :1]))


def test_declines_other_layouts(tmp_path: Path) -> None:
    from zarr.codecs import BloscCodec, TransposeCodec

    base = dict(shape=(4, 2, 3, 3), dtype="float16", fill_value=0)
    cases = {
        "unsharded": dict(chunks=(1, 2, 3, 3)),
        "blosc": dict(chunks=(1, 2, 3, 3), shards=(4, 2, 3, 3), compressors=[BloscCodec()]),
        "split channels": dict(chunks=(1, 1, 3, 3), shards=(4, 2, 3, 3)),
        "transpose": dict(
            chunks=(1, 2, 3, 3), shards=(4, 2, 3, 3), filters=[TransposeCodec(order=(0, 1, 3, 2))]
        ),
    }
    for name, kw in cases.items():
        zarr.create_array(zarr.storage.LocalStore(tmp_path / name), **base, **kw)
        assert MappedArray.open(tmp_path / name) is None, name
    zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "f32"), shape=(4, 2), dtype="float32", chunks=(1, 2), shards=(4, 2)
    )
    assert MappedArray.open(tmp_path / "f32") is None
    assert MappedArray.open(tmp_path / "absent") is None


def test_damaged_chunk_and_index_raise(tmp_path: Path) -> None:
    p = tmp_path / "c.zarr"
    _store(p, write=(0, 1, 2))
    f = p / "features" / "c.0.0.0.0"
    good = f.read_bytes()
    b = bytearray(good)
    b[5] ^= 0x10  # row 0's data
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="checksum"):
        cache.open(p).read([0])
    assert np.isfinite(cache.open(p).read([1])).all()  # the other rows of the shard still read
    b = bytearray(good)
    b[-10] ^= 0x10  # the index
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="checksum"):
        cache.open(p).read([1])
    f.write_bytes(good[:20])
    with pytest.raises(ValueError, match="truncated"):
        cache.open(p).read([1])


def _child_read(path: str, q) -> None:
    fc_rows = cache.open(path).read(np.arange(10))
    q.put(fc_rows.tobytes())


def test_forked_workers_map_their_own(tmp_path: Path) -> None:
    """A handle used before fork reads correctly in the child (its maps are per process)."""
    p = tmp_path / "c.zarr"
    _store(p, write=(0, 1, 2))
    fc = cache.open(p)
    parent = fc.read(np.arange(10))
    reader = fc._mapped_reader(fmt.FEATURES)
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child() -> None:
        inherited = dict(reader._shards)
        data = fc.read(np.arange(10)).tobytes()
        own = reader._gen == mapped._generation and all(
            reader._shards[k] is not inherited.get(k) for k in reader._shards
        )
        q.put((not own, data))

    proc = ctx.Process(target=child)
    proc.start()
    stale, data = q.get(timeout=60)
    proc.join(60)
    assert proc.exitcode == 0 and not stale
    assert data == parent.tobytes()


def test_no_tensorstore_import_when_mapped(tmp_path: Path) -> None:
    p = tmp_path / "c.zarr"
    _store(p, write=(0, 1, 2))
    code = (
        "import sys; from dinocache import cache; from dinocache.cache.check import checked_map; "
        f"fc = cache.open({str(p)!r}); checked_map(fc, 'k0001'); fc.read([0, 5, 9]); "
        "print('tensorstore' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_copied_store_reads_its_own_files(tmp_path: Path) -> None:
    """Maps belong to the handle: a second store with other bits reads its own."""
    p = tmp_path / "c.zarr"
    x = _store(p, write=(0, 1, 2))
    q = tmp_path / "d.zarr"
    shutil.copytree(p, q)
    w = CacheWriter(str(q))
    w.write_shard(0, -x[:4], ["0" * 64] * 4, np.ones(4, np.uint8))
    assert np.array_equal(_bits(cache.open(q).read([0])), _bits(-x[:1]))
    assert np.array_equal(_bits(cache.open(p).read([0])), _bits(x[:1]))


def test_views_read_only_checked_and_outlive_the_handle(tmp_path: Path) -> None:
    """view_one: the mapped bytes themselves (no copy), checksum checked, fill for absent chunks, valid after the
    handle is closed and after the shard file is replaced by a rename (precompute's way of rewriting)."""
    p = tmp_path / "c.zarr"
    x = _store(p, write=(0, 1, 2))
    m = MappedArray.open(p / "features")
    v = m.view_one(1, 2)
    assert not v.flags.writeable and not v.flags.owndata
    assert np.array_equal(_bits(v), _bits(x[1, :2]))
    with pytest.raises(ValueError):
        v[0, 0, 0] = 1.0
    assert np.isnan(m.view_one(3, 4)).all()  # absent chunk: the fill value
    m.close()
    f = p / "features" / "c.0.0.0.0"
    tmp = f.with_name("new")
    tmp.write_bytes(f.read_bytes())
    tmp.replace(f)
    assert np.array_equal(_bits(v), _bits(x[1, :2]))
    b = bytearray(f.read_bytes())
    b[5] ^= 0x10  # row 0's data
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="checksum"):
        MappedArray.open(p / "features").view_one(0, 4)


def test_view_finite_scans_each_chunk_once_per_checksum(tmp_path: Path) -> None:
    """view_finite: NaN/inf maps come back as None every time; a finite chunk is scanned once per channel count and
    checksum value, and bytes rewritten in place with a matching checksum are scanned again."""
    import google_crc32c
    from dinocache.cache.check import all_finite

    p = tmp_path / "c.zarr"
    x = _store(p, write=(0, 1, 2))
    y = x[4:8].copy()
    y[1, 2, 1, 1] = np.inf  # row 5: one inf in a stored chunk
    CacheWriter(str(p)).write_shard(1, y, ["0" * 64] * 4, np.ones(4, np.uint8))
    scans: list[int] = []

    def finite(a: np.ndarray) -> bool:
        scans.append(a.shape[0])
        return all_finite(a)

    m = MappedArray.open(p / "features")
    v = m.view_finite(4, finite, 0)
    assert v is not None and not v.flags.writeable and np.array_equal(_bits(v), _bits(x[0]))
    assert np.array_equal(_bits(m.view_finite(4, finite, 0)), _bits(x[0])) and scans == [4]
    assert np.array_equal(_bits(m.view_finite(2, finite, 0)), _bits(x[0, :2])) and scans == [4, 2]
    assert (
        m.view_finite(4, finite, 5) is None and m.view_finite(4, finite, 5) is None and scans == [4, 2, 4, 4]
    )
    assert m.view_finite(2, finite, 5) is not None  # the inf sits in channel 2
    assert m.view_finite(4, finite, 3) is None  # never written (all fill)
    # row 0 rewritten in place (same file, so this mapping sees it) with a NaN and a matching checksum
    off, nbytes = m._shard(0).offsets[0], m.chunk_bytes
    data = bytearray(Path(p / "features" / "c.0.0.0.0").read_bytes()[off : off + nbytes - 4])
    data[0:2] = np.array([np.nan], np.float16).tobytes()
    with open(p / "features" / "c.0.0.0.0", "r+b") as f:
        f.seek(off)
        f.write(bytes(data) + google_crc32c.value(bytes(data)).to_bytes(4, "little"))
    n = len(scans)
    assert m.view_finite(4, finite, 0) is None and len(scans) == n + 1
    with open(p / "features" / "c.0.0.0.0", "r+b") as f:  # and with a checksum that does not match: an error
        f.seek(off + nbytes - 4)
        f.write(b"\0\0\0\0")
    with pytest.raises(ValueError, match="checksum"):
        m.view_finite(4, finite, 0)
