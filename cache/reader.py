"""Reading a feature cache: `FeatureCache`, the read-only handle the trainer uses, `open` and the teacher
fingerprint check. It opens the zarr arrays lazily and drops them when pickled, so it can be built in the
main process and survive DataLoader fork/spawn. Feature reads go through the memory-mapped reader
(cache/mapped.py), tensorstore (cache/backend.py) or zarr-python.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from dinocache.cache import format as fmt
from dinocache.cache.arrays import ZarrArrays, bytes_to_hex, decode_keys
from dinocache.cache.backend import READ_PATHS, open_array, s3_kvstore, tensorstore_usable, warn_url_fallback
from dinocache.cache.errors import CacheError, CacheFormatError
from dinocache.cache.locations import disk_bytes, local_path


class FeatureCache(ZarrArrays):
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

    def row_view(
        self,
        channels: int | None = None,
        flipped: bool = False,
        finite: Callable[[np.ndarray], bool] | None = None,
    ) -> Callable[[int], Any] | None:
        """For a loader that keeps its own image -> row index (the training dataset): row -> float16 (D, h, w), the
        read-only view `get(key, channels, flipped, view=True)` returns, checksum checked, or None for a chunk never
        written (a damaged chunk raises). `finite` (check.all_finite): also None for a map it rejects, each chunk
        scanned once per checksum value (mapped.py: `view_finite`). None when the memory-mapped reader does not serve
        these reads: `get` then."""
        mapped = self._mapped_reader(fmt.FEATURES_FLIP if flipped else fmt.FEATURES)
        if (
            mapped is None
            or (flipped and not self.spec.flips)
            or not (channels is None or 1 <= channels <= self.k)
        ):
            return None
        d = self.k if channels is None else int(channels)
        return (
            functools.partial(mapped.view_written, d)
            if finite is None
            else functools.partial(mapped.view_finite, d, finite)
        )

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
