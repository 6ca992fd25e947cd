"""Reading and writing a feature cache's arrays (format in cache/format.py; where the cache lives in
cache/locations.py, the tensorstore read path in cache/backend.py, the memory-mapped one in cache/mapped.py).

`FeatureCache` is the read-only handle the trainer uses; it opens the zarr arrays lazily and drops them
when pickled, so it can be built in the main process and survive DataLoader fork/spawn. `CacheWriter`
is what `dinocache precompute` uses: one creator, then whole-shard writes by each shard owner.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from dinocache.cache import format as fmt
from dinocache.cache.backend import READ_PATHS, open_array, s3_kvstore, tensorstore_usable, warn_url_fallback
from dinocache.cache.errors import (
    CacheCorrupt,
    CacheError,
    CacheExists,
    CacheFormatError,
    CacheMismatch,
    damage_reason,
    repair_hint,
)
from dinocache.cache.locations import disk_bytes, exists, filesystem, local_path, read_attrs, zarr_store


def decode_keys(raw: np.ndarray) -> list[str]:
    # (N, L) uint8 zero padded -> fixed-width bytes strings; numpy drops the trailing NULs.
    if raw.shape[0] == 0:
        return []
    fixed = np.ascontiguousarray(raw).view(f"S{raw.shape[1]}").reshape(-1)
    return [b.decode("utf-8") for b in fixed]


def encode_keys(keys: Sequence[str], key_len: int) -> np.ndarray:
    """Keys -> (N, key_len) uint8, zero padded; refuses a key that does not fit."""
    enc = [k.encode("utf-8") for k in keys]
    for k in enc:
        if len(k) > key_len:
            raise CacheError(f"key {k.decode()!r} is longer than key_len={key_len}")
    if not enc:
        return np.zeros((0, key_len), np.uint8)
    return np.array(enc, dtype=f"S{key_len}").view(np.uint8).reshape(len(enc), key_len)


def hex_to_bytes(digests: Sequence[str]) -> np.ndarray:
    """sha256 hex digests -> (N, 32) uint8."""
    return np.array([np.frombuffer(bytes.fromhex(d), np.uint8) for d in digests], np.uint8).reshape(-1, 32)


def bytes_to_hex(raw: np.ndarray) -> list[str]:
    return [bytes(r).hex() for r in np.asarray(raw, np.uint8)]


def _expected_arrays(spec: fmt.Spec) -> dict[str, tuple[tuple[int, ...], str]]:
    h, w = spec.grid
    out = {
        fmt.FEATURES: ((spec.n, spec.k, h, w), fmt.FEATURE_DTYPE),
        **({fmt.FEATURES_FLIP: ((spec.n, spec.k, h, w), fmt.FEATURE_DTYPE)} if spec.flips else {}),
        fmt.DONE: ((spec.n,), "uint8"),
        fmt.SHA256: ((spec.n, 32), "uint8"),
        fmt.KEYS: ((spec.n, spec.key_len), "uint8"),
        fmt.CHANNEL_MEAN: ((spec.k,), "float32"),
        fmt.CHANNEL_STD: ((spec.k,), "float32"),
    }
    if spec.pca:
        out[fmt.PCA_MEAN] = ((spec.teacher_channels,), "float32")
        out[fmt.PCA_COMPONENTS] = ((spec.k, spec.teacher_channels), "float32")
        out[fmt.PCA_EXPLAINED_VARIANCE] = ((spec.k,), "float32")
    return out


class _Store:
    """Shared plumbing: path, lazily opened group/arrays, spec checks."""

    def __init__(self, path: str | Path, storage_options: dict[str, Any] | None, read_only: bool) -> None:
        self.path = str(path)
        self.storage_options = dict(storage_options or {})
        self._read_only = read_only
        self._group: Any = None
        self._arrays: dict[str, Any] = {}

    def _open_group(self) -> Any:
        import zarr

        if self._group is None:
            attrs = read_attrs(self.path, self.storage_options)
            if attrs is None:
                raise CacheFormatError(f"{self.path}: no feature cache there (run `dinocache precompute`)")
            store = zarr_store(self.path, self.storage_options, read_only=self._read_only)
            self._group = zarr.open_group(store, mode="r" if self._read_only else "r+")
        return self._group

    def _array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            group = self._open_group()
            try:
                arr = group[name]
            except KeyError:
                raise CacheFormatError(
                    f"{self.path}: array '{name}' is missing; the cache is damaged"
                ) from None
            except Exception as e:  # noqa: BLE001 - unreadable metadata (truncated/edited JSON, unknown codec)
                raise CacheFormatError(
                    f"{self.path.rstrip('/')}/{name}/zarr.json: array '{name}' cannot be opened "
                    f"({type(e).__name__}: {e}); the cache is damaged or uses a codec this reader does not "
                    "support: rebuild it (`dinocache precompute --overwrite`)"
                ) from None
            self._arrays[name] = arr
        return arr

    def _plain_folder(self) -> Path | None:
        """The local folder whose metadata and small arrays cache/metadata.py may read without zarr (read-only
        handles of local stores, unless zarr-python is asked for), else None."""
        if not self._read_only or not getattr(self, "_plain_meta", False):
            return None
        return local_path(self.path)

    @staticmethod
    def _plain_array(folder: Path, name: str) -> bool:
        from dinocache.cache import metadata
        from dinocache.cache.mapped import MappedArray

        if name in (fmt.FEATURES, fmt.FEATURES_FLIP):
            return MappedArray.open(folder / name) is not None
        return metadata.plain(folder / name)

    def _load_spec(self) -> fmt.Spec:
        from dinocache.cache import metadata

        folder = self._plain_folder()
        attrs = metadata.group_attrs(folder) if folder is not None else None
        if attrs is None:  # not local, or not a plain group: zarr-python opens it (and words its errors)
            folder = None
            attrs = dict(self._open_group().attrs)
        spec = fmt.Spec.from_attrs(attrs, self.path)
        if not spec.ready:
            raise CacheFormatError(
                f"{self.path}: the cache was never finished being created (ready=false); "
                "rerun `dinocache precompute` (shard 0 recreates it)"
            )
        for name, (shape, dtype) in _expected_arrays(spec).items():
            # json only where a zarr-free reader reads the array (the mapped reader for features, the plain
            # small-array reader for the rest); any other codec is opened, and checked, by zarr-python
            got = None
            if folder is not None and self._plain_array(folder, name):
                got = metadata.shape_dtype(folder / name)
            if got is None:
                arr = self._array(name)
                got = (tuple(arr.shape), str(arr.dtype))
            if got != (shape, dtype):
                raise CacheFormatError(
                    f"{self.path}: array '{name}' is {got[0]} {got[1]}, the format says "
                    f"{shape} {dtype}; the cache is damaged"
                )
        return spec

    def _whole(self, name: str) -> np.ndarray:
        """A whole small array; a chunk failing its checksum is a CacheCorrupt naming the chunk file."""
        folder = self._plain_folder()
        if folder is not None:  # json + numpy, no zarr import; declined or damaged: zarr-python below
            from dinocache.cache import metadata

            try:
                x = metadata.read_array(folder / name)
            except ValueError:  # a checksum mismatch: the path below names the chunk
                x = None
            if x is not None:
                return x
        try:
            return np.asarray(self._array(name)[...])
        except Exception:  # noqa: BLE001 - find and name the bad chunk
            out, bad = self.read_chunked(name)
            if not bad:
                return out
            c, why = next(iter(bad.items()))
            r = self.spec.shard_rows(c)
            raise CacheCorrupt(
                f"cache {self.path}: chunk {fmt.chunk_file(self.path, name, c)} of '{name}' (rows {r.start}-{r.stop - 1}) "
                f"{why}"
                + (f" (and {len(bad) - 1} more chunk(s))" if len(bad) > 1 else "")
                + f"; {repair_hint(self)}"
            ) from None

    def read_chunked(self, name: str) -> tuple[np.ndarray, dict[int, str]]:
        """The whole small array `name` read chunk by chunk; chunks failing their checksum read as zeros and are
        returned as {chunk: reason}."""
        arr = self._array(name)
        out = np.zeros(arr.shape, arr.dtype)
        bad: dict[int, str] = {}
        try:
            out[...] = np.asarray(arr[...])
            return out, bad
        except Exception:  # noqa: BLE001 - find which chunk, below
            pass
        for c in range(self.spec.n_shards):
            r = self.spec.shard_rows(c)
            try:
                out[r.start : r.stop] = np.asarray(arr[r.start : r.stop])
            except Exception as e:  # noqa: BLE001 - any read failure of stored bytes is damage
                bad[c] = damage_reason(e)
        return out, bad

    def __getstate__(self) -> dict[str, Any]:
        # zarr handles and their event loop must not cross a fork/spawn: reopen lazily on the other side.
        state = self.__dict__.copy()
        state["_group"] = None
        state["_arrays"] = {}
        if "_ts" in state:
            state["_ts"], state["_ts_pid"] = {}, None
        return state


class FeatureCache(_Store):
    """Read-only view of a cache: lookup by image key, batched fp16 reads. See `cache.open`.

    Feature reads of a local store whose `features` are uncompressed copy each image straight out of its
    memory-mapped shard file, crc32c checked (cache/mapped.py; no tensorstore import); compressed local stores
    and s3:// stores go through tensorstore (zarr3 driver), opened lazily in each process; metadata, keys and
    statistics (read once) and other URL stores go through zarr-python. `read_path="tensorstore"` skips the
    mapped reader, `read_path="zarr"` forces zarr-python for everything (the reference the tests compare against).
    """

    def __init__(
        self, path: str | Path, storage_options: dict[str, Any] | None = None, read_path: str = "auto"
    ) -> None:
        if read_path not in READ_PATHS:
            raise ValueError(f"read_path={read_path!r}, expected one of {list(READ_PATHS)}")
        super().__init__(path, storage_options, read_only=True)
        # metadata and small arrays of a local store read with json + numpy (cache/metadata.py), not zarr-python
        self._plain_meta = read_path != "zarr"
        self.spec = self._load_spec()
        self._keys: list[str] | None = None
        self._row: dict[str, int] | None = None
        self._stats: dict[str, np.ndarray] = {}
        # "auto"/"tensorstore": tensorstore for local and s3:// stores, zarr-python otherwise; "zarr": always zarr-python
        self._ts_mode = "zarr" if read_path == "zarr" else "auto"
        # array name -> its memory-mapped reader (None: declined, read through tensorstore); "auto" only
        self._mapped: dict[str, Any] = (
            {} if read_path == "auto" else {fmt.FEATURES: None, fmt.FEATURES_FLIP: None}
        )
        self._ts: dict[str, Any] = {}  # array name -> tensorstore handle, opened in process _ts_pid
        self._ts_pid: int | None = None

    # -- attributes
    n = property(lambda self: self.spec.n)
    k = property(lambda self: self.spec.k)
    imgsz = property(lambda self: self.spec.imgsz)
    shard_size = property(lambda self: self.spec.shard_size)
    codec = property(lambda self: self.spec.codec)
    fingerprint_id = property(lambda self: self.spec.fingerprint_id)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.spec.grid[0]), int(self.spec.grid[1])

    @property
    def attrs(self) -> dict[str, Any]:
        return self.spec.to_attrs()[fmt.ATTRS_KEY]

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.spec.teacher)

    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = decode_keys(self._whole(fmt.KEYS))
        return self._keys

    def row_of(self, key: str) -> int:
        if self._row is None:
            self._row = {k: i for i, k in enumerate(self.keys)}
        try:
            return self._row[key]
        except KeyError:
            raise KeyError(
                f"image {key!r} has no row in the feature cache {self.path} ({self.n} rows); "
                "was the cache built from this dataset? (`dinocache cache verify`)"
            ) from None

    @property
    def done(self) -> np.ndarray:
        """(N,) bool, read fresh from the store."""
        return self._whole(fmt.DONE).astype(bool)

    def sha256(self) -> list[str]:
        """Hex sha256 of each row's image file when it was computed ('00..' for rows never written)."""
        return bytes_to_hex(self._whole(fmt.SHA256))

    def _stat(self, name: str) -> np.ndarray:
        if name not in self._stats:
            self._stats[name] = self._whole(name).astype(np.float32)
        return self._stats[name]

    @property
    def channel_mean(self) -> np.ndarray:
        return self._stat(fmt.CHANNEL_MEAN)

    @property
    def channel_std(self) -> np.ndarray:
        return self._stat(fmt.CHANNEL_STD)

    @property
    def pca(self) -> Any:
        """precompute.pca.PCABasis, or None for a raw-channel (channels=full) cache."""
        if not self.spec.pca:
            return None
        from dinocache.cache.pca import PCABasis

        return PCABasis(
            self._stat(fmt.PCA_MEAN), self._stat(fmt.PCA_COMPONENTS), self._stat(fmt.PCA_EXPLAINED_VARIANCE)
        )

    @property
    def flips(self) -> bool:
        """Whether the store holds `features_flip`, the maps of the horizontally flipped images."""
        return bool(self.spec.flips)

    def read(
        self, rows: Sequence[int] | np.ndarray, channels: int | None = None, flipped: bool = False
    ) -> np.ndarray:
        """(B,) rows -> float16 (B, D, h, w) with D = channels (the first D components) or K.

        `flipped`: the maps of the horizontally flipped images (`features_flip`; only when `flips`).
        Rows never written read as NaN. Duplicates and any order are fine: the mapped reader copies each row
        straight into its place; tensorstore and zarr-python read the unique rows sorted (tensorstore: one
        index-array read), then put them back in the asked order.
        """
        if flipped and not self.spec.flips:
            raise CacheError(
                f"cache {self.path} holds no flipped views (it was made without cache_flips=true); rebuild it "
                "with `dinocache precompute ... cache_flips=true --overwrite` or set distill_cache_flips=off"
            )
        name = fmt.FEATURES_FLIP if flipped else fmt.FEATURES
        d = self.k if channels is None else int(channels)
        if not 1 <= d <= self.k:
            raise ValueError(f"channels={channels} but the cache {self.path} stores K={self.k}")
        mapped = self._mapped_reader(name)
        if mapped is not None and len(rows) == 1 and 0 <= int(rows[0]) < self.n:
            return mapped.read_one(int(rows[0]), d)[None]  # one image: no sorting or gathering to do
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        h, w = self.grid
        if idx.size == 0:
            return np.empty((0, d, h, w), np.float16)
        bad = idx[(idx < 0) | (idx >= self.n)]
        if bad.size:
            raise IndexError(f"row {int(bad[0])} out of range for cache {self.path} with {self.n} rows")
        if mapped is not None:  # each row copied straight into its place: no sorting, no reordering copy
            return mapped.read(idx, d)
        if idx.size == 1:
            uniq, inverse = idx, None
        else:
            uniq, inverse = np.unique(idx, return_inverse=True)
            if inverse.size == uniq.size:  # no duplicates: identity order if already sorted
                inverse = None if (np.diff(idx) > 0).all() else inverse
        t = self._ts_features(name)
        if t is not None:
            block = (
                t[uniq, :d].read().result() if uniq.size > 1 else t[int(uniq[0]), :d].read().result()[None]
            )
            block = np.asarray(block)
        else:
            block = self._zarr_read(uniq, d, name)
        return block if inverse is None else block[inverse]

    # -- read paths
    def _mapped_reader(self, name: str) -> Any:
        """The memory-mapped reader of array `name` (cache/mapped.py), None when it declines the store (not local,
        compressed, another layout) or read_path is not auto. Decided once per handle; maps open per process."""
        try:
            return self._mapped[name]
        except KeyError:
            pass
        lp = local_path(self.path)
        reader = None
        if lp is not None:
            from dinocache.cache.mapped import MappedArray

            reader = MappedArray.open(lp / name)
            if reader is not None and reader.shape != (self.n, self.k, *self.grid):
                reader = None  # _load_spec checked the shape through zarr: never read what it did not check
        self._mapped[name] = reader
        return reader

    def _ts_features(self, name: str = fmt.FEATURES) -> Any:
        """The tensorstore handle of array `name` (features or features_flip), opened on first use in this process; None -> zarr-python.

        Local folders and s3:// stores (tensorstore's s3 kvstore, same AWS_* settings as s3fs) use it; None
        for other fsspec URLs (gs://, az://, ...), s3 storage options tensorstore cannot express (explicit
        keys, anon, profile), and in a process forked from one that already used tensorstore (its thread
        pools do not survive fork(): the child would abort, see docs/cache.md).
        """
        pid = os.getpid()
        if self._ts_pid != pid:
            self._ts = {}
        if name in self._ts:
            return self._ts[name]
        if self._ts_mode == "zarr" or not tensorstore_usable():
            return None
        if local_path(self.path) is None:
            if s3_kvstore(self.path, self.storage_options) is None:
                return None  # other object stores (gs://, az://, ...): zarr-python + fsspec
            try:
                self._ts[name] = open_array(self.path, name, self.storage_options)
            except CacheFormatError as e:  # e.g. an endpoint tensorstore cannot reach: zarr-python still can
                warn_url_fallback(self.path, str(e))
                self._ts_mode = "zarr"
                return None
        else:
            self._ts[name] = open_array(self.path, name)
        self._ts_pid = pid
        return self._ts[name]

    def _zarr_read(self, uniq: np.ndarray, d: int, name: str = fmt.FEATURES) -> np.ndarray:
        """zarr-python fallback: contiguous runs of the sorted unique rows, gathered in one sync call."""
        from zarr.core.sync import sync

        cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [uniq.size]])
        arr = self._array(name)._async_array
        ch = slice(0, d)

        async def _gather() -> list[Any]:
            return await asyncio.gather(
                *[arr.getitem((slice(int(uniq[s]), int(uniq[e - 1]) + 1), ch)) for s, e in zip(starts, ends)]
            )

        parts = [np.asarray(p) for p in sync(_gather())]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def warm(self) -> None:
        """Build the key -> row index and choose the read path now: done before DataLoader workers fork, they inherit
        both instead of each decoding the keys again."""
        if self.n:
            self.row_of(self.keys[0])
        for name in (fmt.FEATURES, fmt.FEATURES_FLIP) if self.spec.flips else (fmt.FEATURES,):
            self._mapped_reader(name)

    def get(
        self, key: str, channels: int | None = None, flipped: bool = False, view: bool = False
    ) -> np.ndarray:
        """float16 (D, h, w) of one image by key (`flipped`: the map of the mirrored image). `view`: the memory-mapped
        reader may return a read-only view of the shard's map instead of a copy (cache/mapped.py: `view_one`)."""
        row = self.row_of(key)
        mapped = self._mapped_reader(fmt.FEATURES_FLIP if flipped else fmt.FEATURES)
        if (
            mapped is None
            or (flipped and not self.spec.flips)
            or not (channels is None or 1 <= channels <= self.k)
        ):
            return self.read([row], channels, flipped)[0]  # checks and messages of the general path
        d = self.k if channels is None else int(channels)
        return mapped.view_one(row, d) if view else mapped.read_one(row, d)

    def disk_bytes(self) -> int:
        """Bytes the `features` array takes in the store (chunks + shard indexes)."""
        return disk_bytes(self.path, self.storage_options, fmt.FEATURES)


def open(  # noqa: A001
    path: str | Path, storage_options: dict[str, Any] | None = None, read_path: str = "auto"
) -> FeatureCache:
    """Open a cache read-only; refuses foreign/newer formats and unfinished stores (CacheFormatError)."""
    return FeatureCache(path, storage_options, read_path)


def check_fingerprint(fc: FeatureCache, expected: dict[str, Any]) -> None:
    """CacheMismatch naming every teacher field where the cache differs from `expected`."""
    if fmt.fingerprint_id(fmt.normalize_json(expected)) == fc.fingerprint_id:
        return
    lines = fmt.diff(fc.fingerprint, expected, "teacher.") or ["fingerprint_id differs"]
    fmt.raise_mismatch(
        f"the teacher of cache {fc.path}",
        lines,
        "rebuild the cache for this teacher (`dinocache precompute ... --overwrite`) or use the teacher it was made with",
    )


class CacheWriter(_Store):
    """Read-write handle used by precompute. Create once (`create`), then any owner writes whole shards."""

    def __init__(self, path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(path, storage_options, read_only=False)
        self.spec = self._load_spec()

    @classmethod
    def create(
        cls,
        path: str | Path,
        spec: fmt.Spec,
        keys: Sequence[str],
        channel_mean: np.ndarray,
        channel_std: np.ndarray,
        pca: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> CacheWriter:
        """Make a fresh store at `path` (which must not exist): arrays, keys, stats, PCA, attrs last."""
        import zarr

        if len(keys) != spec.n:
            raise CacheError(f"{len(keys)} keys for a cache of n={spec.n}")
        if exists(path, storage_options):
            raise CacheExists(
                f"{path} appeared while this precompute was preparing to create it: another precompute is (or "
                "was) writing it. Do not delete it; wait for that run to end, then rerun this command: it resumes "
                "and computes only the shards still missing"
            )
        h, w = spec.grid
        s = spec.shard_size
        try:
            group = zarr.open_group(zarr_store(path, storage_options, read_only=False), mode="w-")
        except Exception:  # noqa: BLE001 - zarr's ContainsGroupError: lost the race to another creator
            if exists(path, storage_options) and read_attrs(path, storage_options) is not None:
                raise CacheExists(
                    f"{path} was created by another precompute a moment ago: it is (or was) writing it. Do not "
                    "delete it; wait for that run to end, then rerun this command: it resumes and computes only "
                    "the shards still missing"
                ) from None
            raise
        # Attributes first with ready=false, so a crash during creation leaves a store we recognise
        # as ours and unfinished (the next run recreates it), never one that looks complete.
        unfinished = fmt.Spec(**{**spec.__dict__, "ready": False})
        group.attrs.update(unfinished.to_attrs())
        kw = {"chunk_key_encoding": fmt.CHUNK_KEY_ENCODING}
        for name in (fmt.FEATURES, fmt.FEATURES_FLIP) if spec.flips else (fmt.FEATURES,):
            group.create_array(
                name,
                shape=(spec.n, spec.k, h, w),
                dtype=fmt.FEATURE_DTYPE,
                chunks=(1, spec.k, h, w),
                shards=(s, spec.k, h, w),
                compressors=fmt.compressors(spec.codec),
                fill_value=np.nan,
                dimension_names=("image", "channel", "y", "x"),
                chunk_key_encoding=fmt.CHUNK_KEY_ENCODING,
            )
        kw["compressors"] = fmt.checksum()  # every other array: crc32c on each chunk, no compression
        group.create_array(fmt.DONE, shape=(spec.n,), dtype="uint8", chunks=(s,), fill_value=0, **kw)
        group.create_array(fmt.SHA256, shape=(spec.n, 32), dtype="uint8", chunks=(s, 32), fill_value=0, **kw)
        karr = group.create_array(
            fmt.KEYS,
            shape=(spec.n, spec.key_len),
            dtype="uint8",
            chunks=(s, spec.key_len),
            fill_value=0,
            **kw,
        )
        if spec.n:
            karr[:] = encode_keys(keys, spec.key_len)
        vectors = {fmt.CHANNEL_MEAN: channel_mean, fmt.CHANNEL_STD: channel_std}
        if spec.pca:
            if pca is None:
                raise CacheError("spec.pca is true but no PCA basis was given")
            vectors |= {
                fmt.PCA_MEAN: pca.mean,
                fmt.PCA_COMPONENTS: pca.components,
                fmt.PCA_EXPLAINED_VARIANCE: pca.explained_variance,
            }
        for name, value in vectors.items():
            value = np.asarray(value, np.float32)
            a = group.create_array(
                name, shape=value.shape, dtype="float32", chunks=value.shape, fill_value=0.0, **kw
            )
            a[...] = value
        done = fmt.Spec(**{**spec.__dict__, "ready": True})
        group.attrs.update(done.to_attrs())
        return cls(path, storage_options)

    def stored_keys(self) -> list[str]:
        return decode_keys(self._whole(fmt.KEYS))

    def basis(self) -> Any:
        """The stored PCA basis (float32) or None; writers project with exactly these numbers."""
        if not self.spec.pca:
            return None
        from dinocache.cache.pca import PCABasis

        return PCABasis(
            *(
                self._whole(n).astype(np.float32)
                for n in (fmt.PCA_MEAN, fmt.PCA_COMPONENTS, fmt.PCA_EXPLAINED_VARIANCE)
            )
        )

    def shard_state(self, shard: int) -> tuple[np.ndarray, list[str]]:
        """(done (m,) bool, sha256 hex list) of the rows of `shard`."""
        r = self.spec.shard_rows(shard)
        try:
            done = np.asarray(self._array(fmt.DONE)[r.start : r.stop]).astype(bool)
            sha = bytes_to_hex(np.asarray(self._array(fmt.SHA256)[r.start : r.stop]))
        except CacheError:
            raise
        except Exception as e:  # noqa: BLE001 - a chunk failing its checksum
            raise CacheCorrupt(
                f"cache {self.path}: the done/sha256 chunk of shard {shard} ({fmt.chunk_file(self.path, fmt.DONE, shard)}) "
                f"{damage_reason(e)}; {repair_hint(self)}"
            ) from None
        return done, sha

    def reset_shard(self, shard: int) -> None:
        """Repair: delete the shard's features file and write its done/sha256 chunks as zeros (not done), so the
        next write pass recomputes the whole shard with its usual batch boundaries (same bits as a fresh run)."""
        fs, _ = filesystem(self.path, self.storage_options)
        for f in [fmt.chunk_file(self.path, fmt.FEATURES, shard)] + (
            [fmt.chunk_file(self.path, fmt.FEATURES_FLIP, shard)] if self.spec.flips else []
        ):
            target = str(local_path(f).resolve()) if local_path(f) is not None else f
            if fs.exists(target):
                fs.rm(target)
        r = self.spec.shard_rows(shard)
        self._array(fmt.SHA256)[r.start : r.stop] = np.zeros((len(r), 32), np.uint8)
        self._array(fmt.DONE)[r.start : r.stop] = np.zeros(len(r), np.uint8)

    def write_keys(self, shard: int, keys: Sequence[str]) -> None:
        """Repair: rewrite the keys chunk of `shard` from the dataset listing (`keys` = all N keys)."""
        r = self.spec.shard_rows(shard)
        self._array(fmt.KEYS)[r.start : r.stop] = encode_keys(list(keys)[r.start : r.stop], self.spec.key_len)

    def write_shard(
        self,
        shard: int,
        features: np.ndarray,
        sha256_hex: Sequence[str],
        done: np.ndarray,
        features_flip: np.ndarray | None = None,
    ) -> None:
        """Write one whole shard in one call per array: features (and features_flip), then sha256, then done
        (last), so a row is marked done only once both of its maps are written."""
        r = self.spec.shard_rows(shard)
        m = len(r)
        h, w = self.spec.grid
        if (features_flip is not None) != bool(self.spec.flips):
            raise CacheError(
                f"shard {shard}: the cache {'holds' if self.spec.flips else 'has no'} flipped views "
                f"(flips={self.spec.flips}) but features_flip was {'not ' if features_flip is None else ''}given"
            )
        for name, x in ((fmt.FEATURES, features), (fmt.FEATURES_FLIP, features_flip)):
            if x is not None and (x.shape != (m, self.spec.k, h, w) or x.dtype != np.float16):
                raise CacheError(
                    f"shard {shard}: {name} {x.shape} {x.dtype}, expected {(m, self.spec.k, h, w)} float16"
                )
        if len(sha256_hex) != m or len(done) != m:
            raise CacheError(f"shard {shard}: {len(sha256_hex)} hashes / {len(done)} flags for {m} rows")
        self._array(fmt.FEATURES)[r.start : r.stop] = features
        if features_flip is not None:
            self._array(fmt.FEATURES_FLIP)[r.start : r.stop] = features_flip
        self._array(fmt.SHA256)[r.start : r.stop] = hex_to_bytes([h or "0" * 64 for h in sha256_hex])
        self._array(fmt.DONE)[r.start : r.stop] = np.asarray(done, np.uint8)


__all__ = [
    "CacheCorrupt",
    "CacheError",
    "CacheFormatError",
    "CacheMismatch",
    "CacheWriter",
    "FeatureCache",
    "check_fingerprint",
    "open",
]
