"""A local cache's group attributes, array metadata and small arrays read with json and numpy: no zarr import.

Opening a cache for training reads its attributes, checks each array's shape and dtype, and reads the small arrays
(`keys`, `done`, `sha256`, channel statistics, the PCA basis). zarr-python's import alone costs more CPU than all
of that, in the main process of every run. For a local folder whose arrays use the layout precompute writes (a
regular chunk grid, the `bytes` codec, optionally `crc32c`, no compressor) these functions read the same bytes
zarr reads: each chunk file is `c{sep}i{sep}j...` holding the chunk's C-order little-endian values (edge chunks
padded to the full chunk shape) followed by their crc32c when the codec chain has one; a chunk file that does not
exist reads as the fill value.

Every function returns None, declining, for anything else (another layout, a compressor, unreadable or odd
metadata, an object-store URL): the caller then goes through zarr-python, which also words the errors about damaged
metadata. A chunk whose crc32c does not match raises `ChecksumMismatch` (the caller re-reads through zarr to name
the chunk).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
from dinocache.cache.mapped import ChecksumMismatch, _codec_chain, _crc32c

# zarr v3 data types this reader knows -> numpy little-endian dtype
_DTYPES = {
    "uint8": "u1",
    "int8": "i1",
    "uint16": "<u2",
    "int16": "<i2",
    "uint32": "<u4",
    "int32": "<i4",
    "uint64": "<u8",
    "int64": "<i8",
    "float16": "<f2",
    "float32": "<f4",
    "float64": "<f8",
}


def _json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def group_attrs(folder: Path) -> dict[str, Any] | None:
    """The attributes of the zarr v3 group in `folder`, None when there is none or its zarr.json is not plain."""
    doc = _json(folder / "zarr.json")
    if doc is None or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        return None
    attrs = doc.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def array_meta(folder: Path) -> dict[str, Any] | None:
    """zarr.json of the array in `folder` when it is a zarr v3 array, else None."""
    doc = _json(folder / "zarr.json")
    if doc is None or doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
        return None
    return doc


def shape_dtype(folder: Path) -> tuple[tuple[int, ...], str] | None:
    """(shape, data type name) of the array in `folder`, None when its metadata is not a plain zarr v3 array."""
    meta = array_meta(folder)
    try:
        if meta is None or not isinstance(meta["data_type"], str):
            return None
        return tuple(int(v) for v in meta["shape"]), meta["data_type"]
    except (KeyError, TypeError, ValueError):
        return None


def plain(folder: Path) -> bool:
    """Whether the array in `folder` has the layout `read_array` reads (its metadata only; no chunk is read)."""
    meta = array_meta(folder)
    try:
        return meta is not None and _layout(meta) is not None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return False


def read_array(folder: Path) -> np.ndarray | None:
    """The whole array in `folder`, read chunk file by chunk file; None when its layout is not the plain one."""
    meta = array_meta(folder)
    if meta is None:
        return None
    try:
        layout = _layout(meta)
        return None if layout is None else _read(folder, *layout)
    except ChecksumMismatch:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OSError):
        return None


def _layout(meta: dict[str, Any]) -> tuple | None:
    """(dtype, shape, chunk shape, separator, crc, fill) of a plain array, None for any other layout."""
    dtype = _DTYPES.get(meta["data_type"])
    if dtype is None or meta.get("storage_transformers"):
        return None
    shape = tuple(int(v) for v in meta["shape"])
    grid = meta["chunk_grid"]
    enc = meta["chunk_key_encoding"]
    separator = (enc.get("configuration") or {}).get("separator", "/")
    if grid.get("name") != "regular" or enc.get("name") != "default" or separator not in (".", "/"):
        return None
    chunks = tuple(int(v) for v in grid["configuration"]["chunk_shape"])
    codecs = meta["codecs"]
    if np.dtype(dtype).itemsize == 1 and codecs and codecs[0].get("name") == "bytes":
        # one-byte types carry no endianness: the bytes codec may omit it
        codecs = [{"name": "bytes", "configuration": {"endian": "little"}}, *codecs[1:]]
    crc = _codec_chain(codecs)
    fill = meta.get("fill_value")
    if crc is None or not shape or len(chunks) != len(shape) or min(chunks) < 1:
        return None
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        return None  # NaN/inf/hex fill values: zarr's reading of them is the reference
    return np.dtype(dtype), shape, chunks, separator, crc, fill


def _read(
    folder: Path, dtype: np.dtype, shape: tuple, chunks: tuple, separator: str, crc: bool, fill: float
) -> np.ndarray | None:
    out = np.full(shape, fill, dtype)
    check = _crc32c() if crc else None
    per_chunk = int(np.prod(chunks)) * dtype.itemsize
    counts = [-(-s // c) for s, c in zip(shape, chunks)]
    for idx in itertools.product(*(range(n) for n in counts)):
        path = folder / ("c" + "".join(f"{separator}{i}" for i in idx))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # never written: the fill value
        if len(data) != per_chunk + (4 if crc else 0):
            return None  # not the plain layout (or damaged): zarr decides
        if check is not None and check(data[:per_chunk]) != int.from_bytes(data[per_chunk:], "little"):
            raise ChecksumMismatch(f"chunk file {path}: stored and computed crc32c checksum do not match")
        block = np.frombuffer(data, dtype, count=per_chunk // dtype.itemsize).reshape(chunks)
        at = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
        out[at] = block[tuple(slice(0, a.stop - a.start) for a in at)]
    return out.astype(dtype.newbyteorder("="), copy=False)
