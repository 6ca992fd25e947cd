"""What the reader and the writer of a feature cache share: the lazily opened zarr group and arrays, the
format's array list checked against the stored shapes, whole-array reads that name a bad chunk, and the
encodings of keys and sha256 digests. `FeatureCache` (cache/reader.py) and `CacheWriter` (cache/writer.py)
are the two handles built on `ZarrArrays`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from dinocache.cache import format as fmt
from dinocache.cache.errors import CacheCorrupt, CacheError, CacheFormatError, damage_reason, repair_hint
from dinocache.cache.locations import local_path, read_attrs, zarr_store


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


def expected_arrays(spec: fmt.Spec) -> dict[str, tuple[tuple[int, ...], str]]:
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


class ZarrArrays:
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
        for name, (shape, dtype) in expected_arrays(spec).items():
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
