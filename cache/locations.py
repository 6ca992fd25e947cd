"""Where a cache lives: a local folder or an fsspec URL (s3://, gs://, ...). Existence, listing, deletion, sidecar
files next to the zarr group, the group's attributes, and the check that an object store is reachable before
anything is computed. No zarr array is read here (cache/store.py reads and writes them)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from dinocache.cache.errors import CacheError, CacheFormatError


def local_path(path: str | Path) -> Path | None:
    """The local folder of `path` (plain path or file:// URL), None for other fsspec URLs."""
    s = str(path)
    if s.startswith("file://"):
        return Path(s[len("file://") :])
    if "://" in s:
        return None
    return Path(s)


def zarr_store(path: str | Path, storage_options: dict[str, Any] | None, read_only: bool) -> Any:
    from zarr.storage import FsspecStore, LocalStore

    lp = local_path(path)
    if lp is not None:
        # LocalStore writes temp file + rename, so a killed writer never leaves a torn chunk.
        return LocalStore(lp, read_only=read_only)
    return FsspecStore.from_url(str(path), storage_options=storage_options or {}, read_only=read_only)


def filesystem(path: str | Path, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec.core

    lp = local_path(path)
    if lp is not None:
        return fsspec.core.url_to_fs(str(lp.resolve()))
    return fsspec.core.url_to_fs(str(path), **(storage_options or {}))


def exists(path: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
    fs, root = filesystem(path, storage_options)
    return bool(fs.exists(root))


def delete(path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
    fs, root = filesystem(path, storage_options)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def list_files(path: str | Path, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names of the entries directly inside the store folder (fresh listing, no cached directory)."""
    fs, root = filesystem(path, storage_options)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(root)  # s3fs & co. cache listings; other writers add files meanwhile
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    except FileNotFoundError:
        return []


def folder_names(
    path: str | Path, sub: str, storage_options: dict[str, Any] | None = None
) -> set[str] | None:
    """Names of the files in the folder `sub` of the store at `path`, None when it cannot be listed."""
    lp = local_path(path)
    if lp is not None:  # one directory listing, no fsspec import
        try:
            return set(os.listdir(lp / sub))
        except OSError:
            return None
    fs, root = filesystem(path, storage_options)
    try:
        return {
            str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{root.rstrip('/')}/{sub}", detail=False)
        }
    except (FileNotFoundError, OSError):
        return None


def disk_bytes(path: str | Path, storage_options: dict[str, Any] | None = None, sub: str = "") -> int:
    """Bytes stored under `path/sub` (all files, chunk + metadata)."""
    fs, root = filesystem(path, storage_options)
    p = f"{root.rstrip('/')}/{sub}" if sub else root
    return int(fs.du(p)) if fs.exists(p) else 0


def write_sidecar(
    path: str | Path, name: str, text: str, storage_options: dict[str, Any] | None = None
) -> str:
    """Write a small text file inside the store folder (zarr ignores it); atomic for local folders."""
    lp = local_path(path)
    if lp is not None:
        lp.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=lp, prefix=f".{name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, lp / name)
        return str(lp / name)
    fs, root = filesystem(path, storage_options)
    target = f"{root.rstrip('/')}/{name}"
    fs.pipe(target, text.encode())
    return target


REMOTE_HINT = (
    "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or key/secret in "
    "storage_options) and the endpoint (AWS_ENDPOINT_URL or storage_options.endpoint_url)"
)


def _remote_error(path: str | Path, e: BaseException, storage_options: Any = None) -> CacheError:
    from dinocache.core.secrets import mask

    why = mask(f"{type(e).__name__}: {e}", storage_options)  # a client may quote an option it rejects
    return CacheError(f"{path}: cannot reach the object store ({why}); {REMOTE_HINT}")


def check_reachable(path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
    """For an object-store URL (s3://, gs://, ...): the credentials work and the bucket exists.

    CacheError naming the URL otherwise, raised before anything is computed or written (a bucket is never
    created on the user's behalf). Local paths: nothing to check.
    """
    if local_path(path) is not None:
        return
    try:
        fs, root = filesystem(path, storage_options)
        bucket = root.split("/", 1)[0]
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache(bucket)
        # the store's own path first: s3fs answers a bucket lookup without credentials with "absent"
        found = fs.exists(root) or fs.exists(bucket)
    except Exception as e:
        raise _remote_error(path, e, storage_options) from None
    if not found:
        raise CacheError(
            f"{path}: bucket '{bucket}' does not exist (or these credentials cannot see it); create it first, "
            f"e.g. `aws s3 mb s3://{bucket}`, or {REMOTE_HINT}"
        )


def read_attrs(path: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The group attributes of `path`, or None when there is no zarr group there (yet)."""
    import zarr

    try:
        group = zarr.open_group(zarr_store(path, storage_options, read_only=True), mode="r")
    except FileNotFoundError:  # no folder, or a folder without a group (zarr's NodeNotFoundError)
        return None
    except Exception as e:
        if local_path(path) is None and not isinstance(e, (ValueError, KeyError, TypeError)):
            raise _remote_error(path, e, storage_options) from None  # credentials, network, permissions
        raise CacheFormatError(
            f"{str(path).rstrip('/')}/zarr.json: cannot open {path} as a zarr group ({type(e).__name__}: {e})"
        ) from None
    return dict(group.attrs)
