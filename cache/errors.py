"""Errors of the cache package; every message names the cache path and what is wrong."""

from typing import Any

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


def repair_hint(fc: Any, data: Any = None) -> str:
    """The end of every damage message: the command that recomputes the bad rows of cache handle `fc`.
    `data`: the data.yaml the caller uses; else the one the cache was made from, when it exists on this
    machine (a copied cache names a path of the machine that built it)."""
    from pathlib import Path

    if data is None:
        made = (fc.spec.source or {}).get("data")
        data = made if made and Path(made).exists() else "DATA"
    return (
        f"repair it with `dinocache cache repair {fc.path} --data {data}` (recomputes only the bad rows), "
        "or rebuild it with `dinocache precompute --overwrite`"
    )


def damage_reason(e: BaseException) -> str:
    """Why stored bytes could not be used, from the exception their read raised."""
    text = str(e)
    if "checksum" in text.lower() or "digest" in text.lower():
        return "fails its crc32c checksum (bit rot, a torn or edited file)"
    return f"cannot be read ({type(e).__name__}: {text[:200]})"
