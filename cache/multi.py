"""Multi-teacher caches (format version 2): one store, several teachers' arrays.

    CACHE/                       zarr group; attribute `dinocache_teachers` (the manifest below)
    CACHE/teachers/NAME/         a complete single-teacher store (format.py): its own features, done,
                                 sha256, keys, channel stats, PCA, fingerprint and teacher_files

Manifest: {format "dinocache.teachers", version 2, imgsz, n, teachers {NAME: {fingerprint_id, family,
k, grid, patch_size, teacher_channels}}}. Every teacher of one cache covers the same images at the same
imgsz (the rows are the same pixels); a teacher with another imgsz or another image listing is refused by
name. `dinocache precompute teacher_name=NAME` writes one teacher; the trainer's `teachers` list reads
several (train/run.py). NAME: 1-8 of [a-z0-9_] (it also names the loss column d_NAME, <= 10 chars).
"""

from __future__ import annotations

import re
from typing import Any

from dinocache.cache import format as fmt
from dinocache.cache.errors import CacheFormatError, CacheMismatch

MANIFEST_KEY = "dinocache_teachers"
MANIFEST_FORMAT = "dinocache.teachers"
TEACHERS_DIR = "teachers"
NAME_RE = re.compile(r"^[a-z0-9_]{1,8}$")


def check_name(name: str, key: str = "teacher_name") -> str:
    if not NAME_RE.match(str(name)):
        raise CacheFormatError(
            f"{key}: {name!r} must be 1-8 characters of a-z, 0-9 and _ (it names the cache folder "
            "teachers/NAME and the loss column d_NAME)"
        )
    return str(name)


def teacher_path(cache: str, name: str) -> str:
    """Location of teacher NAME's single-teacher store inside the multi-teacher cache `cache`."""
    return f"{str(cache).rstrip('/')}/{TEACHERS_DIR}/{check_name(name)}"


def read_manifest(cache: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of a multi-teacher cache; None when `cache` holds none (yet)."""
    from dinocache.cache.locations import read_attrs

    attrs = read_attrs(cache, storage_options) or {}
    m = attrs.get(MANIFEST_KEY)
    if m is None:
        return None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise CacheFormatError(f"{cache}: attribute '{MANIFEST_KEY}' is not a dinocache teacher manifest")
    if m.get("version") != fmt.FORMAT_VERSION:
        raise CacheFormatError(
            f"{cache}: teacher manifest version {m.get('version')!r}, this dinocache reads {fmt.FORMAT_VERSION}. "
            f"{fmt.UPGRADE_HINT}"
        )
    return m


def names(cache: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    m = read_manifest(cache, storage_options)
    return sorted((m or {}).get("teachers", {}))


def check_joinable(
    cache: str, name: str, imgsz: int, keys: list[str], storage_options: dict[str, Any] | None = None
) -> None:
    """Refuse adding teacher `name` at `imgsz` with this image listing when the cache's other teachers
    were made at another imgsz or over other images (both named)."""
    m = read_manifest(cache, storage_options)
    if not m:
        return
    others = {k: v for k, v in m.get("teachers", {}).items() if k != name}
    if not others:
        return
    if int(m["imgsz"]) != int(imgsz):
        raise CacheMismatch(
            f"{cache} holds teacher(s) {sorted(others)} at imgsz={m['imgsz']}; teacher '{name}' asks for "
            f"imgsz={imgsz}. One cache holds one image size (every teacher sees the same pixels): use "
            f"imgsz={m['imgsz']} or another cache path"
        )
    if int(m["n"]) != len(keys):
        raise CacheMismatch(
            f"{cache} holds {m['n']} images per teacher ({sorted(others)}); teacher '{name}' lists "
            f"{len(keys)}: every teacher of one cache covers the same images (same data and split)"
        )
    from dinocache.cache.reader import FeatureCache

    first = sorted(others)[0]
    stored = FeatureCache(teacher_path(cache, first), storage_options).keys
    if list(stored) != list(keys):
        i = next(i for i, (a, b) in enumerate(zip(stored, keys)) if a != b)
        raise CacheMismatch(
            f"{cache}: teacher '{name}' lists other images than teacher '{first}' (row {i}: "
            f"{stored[i]!r} vs {keys[i]!r}); every teacher of one cache covers the same images"
        )


def register(cache: str, name: str, spec: fmt.Spec, storage_options: dict[str, Any] | None = None) -> None:
    """Add/replace teacher `name` in the manifest (after its store is created)."""
    import zarr
    from dinocache.cache.locations import zarr_store

    m = read_manifest(cache, storage_options) or {
        "format": MANIFEST_FORMAT,
        "version": fmt.FORMAT_VERSION,
        "imgsz": int(spec.imgsz),
        "n": int(spec.n),
        "teachers": {},
    }
    m["teachers"][check_name(name)] = {
        "fingerprint_id": spec.fingerprint_id,
        "family": spec.teacher.get("family", "dinov3_vit"),
        "k": int(spec.k),
        "grid": list(spec.grid),
        "patch_size": int(spec.patch_size),
        "teacher_channels": int(spec.teacher_channels),
    }
    group = zarr.open_group(zarr_store(cache, storage_options, read_only=False), mode="a")
    group.attrs[MANIFEST_KEY] = fmt.normalize_json(m)


def open_teacher(cache: str, name: str, storage_options: dict[str, Any] | None = None) -> Any:
    """FeatureCache of teacher `name`; a cache without that teacher is refused naming the ones it holds."""
    from dinocache.cache.reader import FeatureCache

    m = read_manifest(cache, storage_options)
    if m is None:
        raise CacheFormatError(
            f"{cache} is not a multi-teacher cache (no '{MANIFEST_KEY}' manifest); build one with "
            f"`dinocache precompute teacher_name={name} ...` per teacher"
        )
    held = sorted(m.get("teachers", {}))
    if name not in held:
        raise CacheFormatError(
            f"{cache} has no teacher '{name}' (it holds {held}); run `dinocache precompute "
            f"cache={cache} teacher_name={name} dino_root=...` first"
        )
    return FeatureCache(teacher_path(cache, name), storage_options)
