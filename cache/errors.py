"""Errors of the cache package; every message names the cache path and what is wrong."""


class CacheError(Exception):
    """Base class for cache problems."""


class CacheFormatError(CacheError):
    """Not a dinocache cache, an unknown/newer format version, or a damaged store."""


class CacheMismatch(CacheError):
    """The cache was made by a different teacher/imgsz/layer/K or for a different dataset listing."""
