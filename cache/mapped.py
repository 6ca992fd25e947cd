"""One image's map copied straight out of a memory-mapped shard file: `FeatureCache`'s read path for local,
uncompressed caches, at close to the cost of a numpy memmap of the same bytes.

How a `features` array of this format sits on disk (Zarr v3 `sharding_indexed` codec, zarr-python's
`zarr/codecs/sharding.py`, the same bytes tensorstore reads):

- a shard file `c{sep}{s}{sep}0{sep}0{sep}0` holds the images s*S .. s*S+S-1 (S = the outer chunk's first
  dimension; the outer chunk spans every channel and cell, so one index coordinate per image);
- each image is one inner chunk: with the inner codecs `bytes` (little endian) and optionally `crc32c`, its bytes
  are the image's C-order float16 values followed by the little-endian uint32 crc32c of those values;
- the shard index is S pairs of little-endian uint64 (offset, nbytes) in image order, (2**64-1, 2**64-1) for a
  chunk never written (it reads as the fill value); with the index codecs `bytes` + `crc32c` the 16*S index
  bytes are followed by their crc32c. `index_location` puts it at the end of the file (zarr's default, what
  precompute writes) or at the start;
- a shard file that does not exist reads as the fill value (every image of the shard never written).

`MappedArray.open(folder)` reads the array's zarr.json with the json module (no zarr, no tensorstore) and returns
None, declining, for any other layout: a compressor (Blosc), a transpose, a big-endian or non-float16 dtype,
another chunk grid or key encoding, storage transformers. `FeatureCache` then reads through tensorstore as before.

Fork safety: nothing is opened until the first read, and the shard maps are per process (a fork bumps a
module-level generation in the child, `os.register_at_fork`, so a read needs no `getpid` system call), so a
DataLoader worker forked after the main process read maps its own files. A handle keeps a shard file mapped once
it has read it: a shard rewritten later (precompute writes a new file and renames it) is seen by a new handle.

`view_one` returns the image's values as a read-only view of the map itself, checksum checked, with nothing
copied or allocated: the training dataset keeps such views while their image is in Mosaic's buffer and copies
each tile once, into the collated batch. A view stays valid while anything references it, even after the handle
is closed or the shard file replaced by a rename (the map keeps the old file's pages).
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dinocache.core.errors import DinocacheError

# an absent inner chunk in the shard index: offset and nbytes both 2**64 - 1
_ABSENT = np.uint64(2**64 - 1)
_ABSENT_INT = 2**64 - 1

# bumped in every forked child: a handle whose maps were made in another generation drops them (per-process maps)
_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class ChecksumMismatch(DinocacheError, ValueError):
    """Stored and computed crc32c of a chunk or shard index differ (bit rot, a torn or edited file)."""


class ShardDamaged(DinocacheError, ValueError):
    """A shard file whose index points outside the file or at a chunk of the wrong size."""


def _crc32c() -> Any:
    # google_crc32c is zarr's own crc32c dependency (C implementation): the same function zarr checks with
    import google_crc32c

    return google_crc32c.value


def _little_bytes(codec: Any) -> bool:
    return (
        isinstance(codec, dict)
        and codec.get("name") == "bytes"
        and (codec.get("configuration") or {}).get("endian", "little") == "little"
    )


def _codec_chain(codecs: Any) -> bool | None:
    """True: [bytes little, crc32c]; False: [bytes little]; None: anything else (a compressor, a transpose)."""
    if not isinstance(codecs, list) or not codecs or not _little_bytes(codecs[0]):
        return None
    rest = [c.get("name") if isinstance(c, dict) else c for c in codecs[1:]]
    if rest == []:
        return False
    if rest == ["crc32c"]:
        return True
    return None


def _fill(value: Any) -> np.float16 | None:
    """Zarr v3's JSON fill value of a float16 array as float16 (same bits), None when it is not one."""
    if isinstance(value, str):
        if value.startswith("0x"):
            return np.array([int(value, 16)], np.uint16).view(np.float16)[0]
        named = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
        return np.float16(named[value]) if value in named else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.float16(value)
    return None


class MappedArray:
    """Reads rows (images) of one sharded, uncompressed float16 array by memory-mapping its shard files."""

    def __init__(
        self,
        folder: Path,
        shape: tuple[int, ...],
        shard_size: int,
        separator: str,
        fill: np.float16,
        chunk_crc: bool,
        index_crc: bool,
        index_at_end: bool,
    ) -> None:
        self.folder = folder
        self.shape = shape  # (N, K, h, w)
        self.shard_size = shard_size  # S images per shard file
        self.separator = separator
        self.fill = fill
        self.chunk_crc = chunk_crc
        self.index_crc = index_crc
        self.index_at_end = index_at_end
        self.values = int(np.prod(shape[1:]))  # float16 values per image
        self.chunk_bytes = 2 * self.values + (4 if chunk_crc else 0)
        self.index_bytes = 16 * shard_size + (4 if index_crc else 0)
        self._tail = "".join(f"{separator}0" for _ in shape[1:])
        self._gen: int | None = None  # the process generation (_generation) the maps below belong to
        # shard -> _Shard, None for a shard file that does not exist
        self._shards: dict[int, _Shard | None] = {}
        self._crc: Any = _crc32c()
        self.cell_values = int(np.prod(shape[2:]))  # values of one channel
        self._cell_shape = tuple(shape[2:])  # (h, w): one channel's shape

    @classmethod
    def open(cls, folder: str | Path) -> MappedArray | None:
        """The reader of the array in `folder` (its zarr.json), or None when this layout is not one it reads."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "zarr.json").read_text())
        except (OSError, ValueError):
            return None  # the zarr path reports a missing or damaged zarr.json in its own words
        try:
            return cls._from_meta(folder, meta)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return None

    @classmethod
    def _from_meta(cls, folder: Path, meta: dict[str, Any]) -> MappedArray | None:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            return None
        if meta.get("data_type") != "float16" or meta.get("storage_transformers"):
            return None
        shape = tuple(int(v) for v in meta["shape"])
        grid = meta["chunk_grid"]
        if grid.get("name") != "regular" or len(shape) < 2:
            return None
        outer = [int(v) for v in grid["configuration"]["chunk_shape"]]
        enc = meta["chunk_key_encoding"]
        separator = (enc.get("configuration") or {}).get("separator", "/")
        if enc.get("name") != "default" or separator not in (".", "/"):
            return None
        codecs = meta["codecs"]
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        cfg = codecs[0]["configuration"]
        inner = [int(v) for v in cfg["chunk_shape"]]
        # one index entry per image: outer chunk = S whole images, inner chunk = one whole image
        if len(outer) != len(shape) or outer[1:] != list(shape[1:]) or inner != [1, *shape[1:]]:
            return None
        chunk_crc = _codec_chain(cfg.get("codecs"))
        index_crc = _codec_chain(cfg.get("index_codecs", [{"name": "bytes"}, {"name": "crc32c"}]))
        location = cfg.get("index_location", "end")
        fill = _fill(meta.get("fill_value"))
        if chunk_crc is None or index_crc is None or location not in ("start", "end") or fill is None:
            return None
        return cls(folder, shape, outer[0], separator, fill, chunk_crc, index_crc, location == "end")

    # -- shard files
    def shard_file(self, shard: int) -> Path:
        return self.folder / f"c{self.separator}{shard}{self._tail}"

    def _shard(self, shard: int) -> _Shard | None:
        if self._gen != _generation:  # a forked child: the parent's maps are not this process's to use
            self._shards, self._gen = {}, _generation
        try:
            return self._shards[shard]
        except KeyError:
            pass
        entry = self._map(shard)
        self._shards[shard] = entry
        return entry

    def _map(self, shard: int) -> _Shard | None:
        path = self.shard_file(shard)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed right after mapping (the map keeps its own handle)
        except FileNotFoundError:
            return None  # a shard never written: every image reads as the fill value
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < self.index_bytes:
                raise ShardDamaged(
                    f"shard file {path} is {size} bytes, shorter than its {self.index_bytes}-byte index (truncated)"
                )
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        at = size - self.index_bytes if self.index_at_end else 0
        raw = np.frombuffer(m, np.uint8, count=self.index_bytes, offset=at)
        if self.index_crc:
            self._check(raw[:-4], raw[-4:], f"the index of shard file {path}")
        index = raw[: 16 * self.shard_size].view("<u8").reshape(self.shard_size, 2).copy()
        present = index[:, 0] != _ABSENT
        lo = self.index_bytes if not self.index_at_end else 0
        hi = size - self.index_bytes if self.index_at_end else size
        offs, lens = index[present, 0], index[present, 1]
        if ((offs < lo) | (offs + lens > hi) | (lens != self.chunk_bytes)).any():
            raise ShardDamaged(
                f"shard file {path}: its index points outside the file or at chunks of the wrong size "
                f"(expected {self.chunk_bytes} bytes each)"
            )
        return _Shard(m, index)

    def _check(self, data: np.ndarray, stored: np.ndarray, what: str) -> None:
        if self._crc(data) != int(stored.view("<u4")[0]):
            raise ChecksumMismatch(f"{what}: stored and computed crc32c checksum do not match")

    # -- reads
    def _located(self, row: int, d: int) -> tuple[_Shard, int, np.ndarray, int | None] | None:
        """(its shard, its index in the shard, the first d channels as a flat read-only float16 view of the shard's
        map, the chunk's crc32c, checked against the stored one; None without chunk checksums) of row `row`; None for
        a chunk never written (it reads as the fill value)."""
        shard, local = divmod(row, self.shard_size)
        entry = self._shard(shard)
        offset = _ABSENT_INT if entry is None else entry.offsets[local]
        if offset == _ABSENT_INT:
            return None
        crc = None
        if self.chunk_crc:
            end = offset + self.chunk_bytes - 4
            crc = self._crc(entry.u8[offset:end])
            if crc != int.from_bytes(entry.map[end : end + 4], "little"):
                raise ChecksumMismatch(
                    f"shard file {self.shard_file(shard)}, image {row}: stored and computed crc32c checksum do not match"
                )
        if offset & 1:  # zarr's writer packs chunks of even size from an even start; another may not
            values = np.frombuffer(entry.map, np.float16, count=d * self.cell_values, offset=offset)
        else:
            start = offset >> 1
            values = entry.f16[start : start + d * self.cell_values]
        return entry, local, values, crc

    def _values(self, row: int, d: int) -> np.ndarray | None:
        """The first d channels of row `row` as a flat read-only float16 view of its shard's map, checksum checked;
        None for a chunk never written (it reads as the fill value)."""
        found = self._located(row, d)
        return None if found is None else found[2]

    def view_one(self, row: int, d: int) -> np.ndarray:
        """float16 (d, h, w), read-only: the first d channels of row `row` viewed in the map (nothing copied; a fill
        array for a chunk never written)."""
        values = self._values(row, d)
        if values is None:
            return np.full((d, *self.shape[2:]), self.fill, np.float16)
        return values.reshape((d, *self._cell_shape))

    def view_written(self, d: int, row: int) -> np.ndarray | None:
        """`view_one` for a loader's hot path: None instead of a fill array for a chunk never written."""
        values = self._values(row, d)
        return None if values is None else values.reshape((d, *self._cell_shape))

    def view_finite(self, d: int, finite: Callable[[np.ndarray], bool], row: int) -> np.ndarray | None:
        """`view_written` for a loader that must not pass NaN/inf on: the (d, h, w) view when `finite` accepts it, else
        None (a chunk never written, or NaN/inf: the caller reads it again through its general path, which names the
        damage); a checksum failure raises ChecksumMismatch as every read does.

        The crc32c of the chunk is checked on every call. With chunk checksums, a chunk `finite` accepted is remembered
        per mapping with that crc32c, and a later read whose bytes checksum to the same value is not scanned again:
        this process maps the shard read-only and never writes it, precompute replaces a shard by renaming a new file
        (this mapping keeps the old one), and bytes changed in place fail the stored checksum, or, stored checksum
        rewritten too, checksum to another value (all but 2**-32 of changes) and are scanned again. Without chunk
        checksums every read is scanned."""
        found = self._located(row, d)
        if found is None:
            return None
        entry, local, values, crc = found
        x = values.reshape((d, *self._cell_shape))
        if crc is None:
            return x if finite(x) else None
        seen = entry.finite.setdefault(d, {})
        if seen.get(local) == crc:
            return x
        if not finite(x):
            return None
        seen[local] = crc
        return x

    def read_one(self, row: int, d: int, out: np.ndarray | None = None) -> np.ndarray:
        """float16 (d, h, w): the first d channels of row `row`, in a new array or copied into `out`."""
        values = self._values(row, d)
        if values is None:
            if out is None:
                return np.full((d, *self.shape[2:]), self.fill, np.float16)
            out.fill(self.fill)
            return out
        if out is not None:  # a batch: straight into its row, no array per image
            out.reshape(-1)[:] = values
            return out
        one = np.array(values)
        one.shape = (d, *self.shape[2:])
        return one

    def read(self, rows: np.ndarray, d: int) -> np.ndarray:
        """(B,) rows -> float16 (B, d, h, w): the first d channels of each row."""
        out = np.empty((len(rows), d, *self.shape[2:]), np.float16)
        for j, r in enumerate(rows):
            self.read_one(int(r), d, out[j])
        return out

    def close(self) -> None:
        self._shards = {}  # the maps close once no array made from them is alive

    def __getstate__(self) -> dict[str, Any]:
        # maps do not cross a pickle (spawned DataLoader workers): the other side maps its own
        return {**self.__dict__, "_shards": {}, "_gen": None, "_crc": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._crc = _crc32c()


class _Shard:
    """One mapped shard file: the map, byte and float16 views of all of it, and each image's chunk offset."""

    __slots__ = ("map", "u8", "f16", "offsets", "finite")

    def __init__(self, m: mmap.mmap, index: np.ndarray) -> None:
        self.map = m
        self.u8 = np.frombuffer(m, np.uint8)
        self.f16 = np.frombuffer(m, np.float16, count=len(m) // 2)
        # Python ints: a list lookup per read instead of numpy scalar work
        self.offsets: list[int] = index[:, 0].tolist()
        # channels checked -> {image: crc32c of its chunk when found finite} (MappedArray.view_finite)
        self.finite: dict[int, dict[int, int]] = {}
