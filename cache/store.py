"""The feature cache's reader and writer under one import name: `FeatureCache` and `open` live in
cache/reader.py, `CacheWriter` in cache/writer.py, what they share (zarr arrays, key and digest encodings)
in cache/arrays.py. Format in cache/format.py; where the cache lives in cache/locations.py.
"""

from __future__ import annotations

from dinocache.cache.arrays import bytes_to_hex, decode_keys, encode_keys, hex_to_bytes
from dinocache.cache.errors import CacheCorrupt, CacheError, CacheFormatError, CacheMismatch
from dinocache.cache.reader import FeatureCache, check_fingerprint, open  # noqa: A004
from dinocache.cache.writer import CacheWriter

__all__ = [
    "CacheCorrupt",
    "CacheError",
    "CacheFormatError",
    "CacheMismatch",
    "CacheWriter",
    "FeatureCache",
    "bytes_to_hex",
    "check_fingerprint",
    "decode_keys",
    "encode_keys",
    "hex_to_bytes",
    "open",
]
