"""The Zarr v3 feature cache: format spec (`cache.format`), reader (`cache.open`), writer, CLI.

    from dinocache import cache
    fc = cache.open("artifacts/cache/features.zarr")
    x = fc.read([fc.row_of("images/train/a.png")], channels=32)   # float16 (1, 32, h, w)

This package is the only one that imports zarr.
"""

from dinocache.cache.errors import CacheCorrupt, CacheError, CacheFormatError, CacheMismatch
from dinocache.cache.format import FORMAT_NAME, FORMAT_VERSION
from dinocache.cache.store import CacheWriter, FeatureCache, check_fingerprint, open  # noqa: A004

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CacheCorrupt",
    "CacheError",
    "CacheFormatError",
    "CacheMismatch",
    "CacheWriter",
    "FeatureCache",
    "check_fingerprint",
    "open",
]
