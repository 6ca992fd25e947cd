"""The tensorstore read path of the `features` arrays (zarr3 driver): local folders through the `file` kvstore,
s3:// stores through the `s3` kvstore, and the guard that keeps a forked process off tensorstore. `FeatureCache`
(cache/store.py) decides per array whether to use it, the memory-mapped reader (cache/mapped.py) or
zarr-python."""

from __future__ import annotations

import functools
import os
from typing import Any

from dinocache.cache.errors import CacheFormatError
from dinocache.cache.locations import local_path

# auto: memory-mapped shards (cache/mapped.py) for local uncompressed stores, else tensorstore, else zarr-python;
# tensorstore: never the mapped reader; zarr: zarr-python for everything (the reference the tests compare against)
READ_PATHS = ("auto", "tensorstore", "zarr")
_TS_USED_BY: int | None = None  # pid of the first process that used tensorstore


def tensorstore_usable() -> bool:
    """False in a process forked from one that used tensorstore (the child would abort on first use)."""
    global _TS_USED_BY
    pid = os.getpid()
    if _TS_USED_BY is None:
        _TS_USED_BY = pid
        return True
    if _TS_USED_BY == pid:
        return True
    _warn_forked()
    return False


@functools.cache
def _warn_forked() -> None:
    import warnings

    warnings.warn(
        "dinocache: this process was forked after its parent read the cache through tensorstore, which "
        "cannot be used after fork(); reading with zarr-python instead (slower). Read features only in "
        "DataLoader workers, or start them with the spawn/forkserver method.",
        RuntimeWarning,
        stacklevel=3,
    )


# fsspec/s3fs storage options tensorstore's s3 driver cannot take: with them, URL reads stay on zarr-python
_S3_OPTIONS_ZARR_ONLY = ("key", "secret", "token", "anon", "profile", "session", "requester_pays")


def s3_kvstore(path: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """tensorstore's `s3` kvstore for an s3:// store (same endpoint, region and credentials as s3fs, from
    AWS_* variables or storage_options' endpoint_url/client_kwargs), or None when it cannot express them."""
    so = dict(storage_options or {})
    if not str(path).startswith(("s3://", "s3a://")) or any(so.get(k) for k in _S3_OPTIONS_ZARR_ONLY):
        return None
    bucket, _, prefix = str(path).split("://", 1)[1].partition("/")
    ck = so.get("client_kwargs") or {}
    kv: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": prefix.strip("/") + "/"}
    endpoint = so.get("endpoint_url") or ck.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3")
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kv["endpoint"] = endpoint
    region = ck.get("region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kv["aws_region"] = region
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kv["aws_credentials"] = {"type": "environment"}
    return kv


@functools.cache
def warn_url_fallback(path: str, why: str) -> None:
    import warnings

    warnings.warn(
        f"dinocache: tensorstore cannot read {path} ({why}); reading it with zarr-python + fsspec (slower)",
        RuntimeWarning,
        stacklevel=3,
    )


def open_array(path: str, name: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Open array `name` of the zarr group at `path` read-only with tensorstore's zarr3 driver: a local
    folder through the `file` kvstore, an s3:// store through the `s3` kvstore (None: use zarr-python)."""
    import tensorstore as ts

    lp = local_path(path)
    if lp is not None:
        kvstore = {"driver": "file", "path": str((lp / name).resolve())}
    else:
        kvstore = s3_kvstore(path, storage_options)
        if kvstore is None:
            return None
        kvstore["path"] += f"{name}/"
    spec = {"driver": "zarr3", "kvstore": kvstore}
    # One copy thread: reads are small and run inside DataLoader workers that already use every core.
    context = ts.Context({"data_copy_concurrency": {"limit": 1}})
    try:
        return ts.open(spec, read=True, open=True, context=context).result()
    except Exception as e:  # tensorstore raises ValueError/ts-specific errors for bad metadata or codecs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CacheFormatError(
            f"{path}: array '{name}' cannot be read with tensorstore ({first}); the cache is damaged or "
            "uses a codec this reader does not support: rebuild it (`dinocache precompute --overwrite`)"
        ) from None
