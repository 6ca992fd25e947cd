"""Errors of the cache package; every message names the cache path and what is wrong."""

from dinocache.core.errors import DinocacheError


class CacheError(DinocacheError):
    """Base class for cache problems."""


class CacheFormatError(CacheError):
    """Not a dinocache cache, an unknown/newer format version, or a damaged store."""


class CacheMismatch(CacheError):
    """The cache was made by a different teacher/imgsz/layer/K or for a different dataset listing."""


class CacheCorrupt(CacheError):
    """Stored data fails its checksum, is missing (shard file gone) or holds NaN/inf: the message names the
    row, the image key, the file and the repair command. One message argument only, so a DataLoader worker
    can re-raise it in the main process."""


class CacheExists(CacheError):
    """A writer found the store already created by another writer (the loser of two simultaneous creators)."""
