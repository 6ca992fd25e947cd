"""The store side of a precompute run, before any row is computed: the teacher's file digest, the checks
that refuse to write into a store made for other images, teacher or writer layout, waiting for shard 0 to
create the store, repair's reset of bad shards, and the precompute.yaml sidecar."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from dinocache.precompute.config import PrecomputeConfig

from dinocache.core.config import ConfigError, to_dict
from dinocache.core.secrets import scrub


def teacher_files(dino_root: str) -> dict[str, Any]:
    """File-level digest of dino_root's weight files (the trainer checks it without loading the teacher)."""
    from dinocache.teacher.digest import DigestError, digest, locate

    folder = locate(dino_root)
    if folder is None:
        raise ConfigError(f"dino_root: cannot find the files of {dino_root!r} on disk to digest them")
    try:
        return digest(folder)
    except DigestError as e:
        raise ConfigError(f"dino_root: {e}") from None


def check_multi(root: str, cfg: PrecomputeConfig, keys: list[str]) -> None:
    """A multi-teacher cache: the root is not a single-teacher store, and the other teachers cover the
    same images at the same imgsz."""
    import dinocache.cache.format as fmt
    from dinocache.cache.errors import CacheError
    from dinocache.cache.locations import read_attrs
    from dinocache.cache.multi import check_joinable

    so = cfg.storage_options
    if fmt.ATTRS_KEY in (read_attrs(root, so) or {}):
        raise CacheError(
            f"{root} is a single-teacher cache; teacher_name={cfg.teacher_name} needs a multi-teacher "
            "cache: choose another `cache` path (or drop teacher_name)"
        )
    check_joinable(root, cfg.teacher_name, cfg.imgsz, keys, so)


def wait_ready(cfg: PrecomputeConfig, world: int, log: Callable[[str], None]) -> None:
    """Writer i > 0: wait until shard 0 has created the store (its `ready` attribute), at most wait_timeout."""
    import dinocache.cache.format as fmt
    from dinocache.cache.errors import CacheError
    from dinocache.cache.locations import read_attrs

    t0 = time.monotonic()
    said = False
    while True:
        attrs = read_attrs(cfg.cache, cfg.storage_options) or {}
        block = attrs.get(fmt.ATTRS_KEY)
        if isinstance(block, dict) and block.get("ready"):
            return
        if time.monotonic() - t0 > cfg.wait_timeout:
            raise CacheError(
                f"gave up after {cfg.wait_timeout:.0f}s waiting for shard 0 to create {cfg.cache}; "
                f"start `dinocache precompute --shard 0/{world}` (it creates the store)"
            )
        if not said:
            log(f"waiting for shard 0/{world} to create {cfg.cache}")
            said = True
        time.sleep(1.0)


def check_compatible(writer: Any, spec: Any, keys: list[str], cache: str) -> None:
    """Refuse an existing store made with other settings or for other images, naming every difference."""
    import dinocache.cache.format as fmt

    lines = fmt.compat_diff(writer.spec, spec)
    stored = writer.stored_keys()
    if stored != keys and writer.spec.n == spec.n:
        first = next(i for i, (a, b) in enumerate(zip(stored, keys)) if a != b)
        lines.append(
            f"keys: the dataset listing differs from the cache's (row {first}: cache {stored[first]!r}, now {keys[first]!r})"
        )
    elif writer.spec.n != spec.n:
        # name the images: a count alone leaves the user to diff two listings
        gone, new = sorted(set(stored) - set(keys)), sorted(set(keys) - set(stored))
        for what, names in (
            ("in the cache but no longer in the dataset", gone),
            ("new in the dataset", new),
        ):
            if names:
                lines.append(
                    f"{len(names)} image(s) {what}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
                )
    hint = "rerun with --overwrite to delete it and rebuild (single writer), or point `cache` elsewhere"
    fmt.raise_mismatch(f"the existing cache {cache}", lines, hint)


def check_layout(writer: Any, cfg: PrecomputeConfig, world: int) -> None:
    """Refuse to join an unfinished store that writers of another world size N have been writing.

    Each writer leaves precompute.shard{i}of{N}.yaml (precompute.yaml when N = 1) in the store. Rows are
    owned by shard k % N, so writers of two layouts running at once would share zarr shards, and two
    writers of one shard silently lose images; the finished shards of an old layout are fine to keep,
    so `reshard=true` joins anyway once the old writers are gone.
    """
    from dinocache.cache.errors import CacheError
    from dinocache.cache.locations import list_files

    worlds: dict[int, list[str]] = {}
    for name in list_files(cfg.cache, cfg.storage_options):
        m = re.fullmatch(r"precompute\.shard(\d+)of(\d+)\.yaml", name)
        n = int(m.group(2)) if m else 1 if name == "precompute.yaml" else None
        if n is not None and n != world:
            worlds.setdefault(n, []).append(name)
    if not worlds or cfg.reshard or bool(writer.done_rows().all()):
        return
    old = ", ".join(f"{n} ({', '.join(sorted(v)[:3])})" for n, v in sorted(worlds.items()))
    raise CacheError(
        f"{cfg.cache} is unfinished and was written with a different number of writers: {old}, "
        f"but this launch has {world} (torchrun WORLD_SIZE, SLURM_NTASKS or --shard i/N). Relaunch "
        f"with {min(worlds)} process(es) to finish it, or, once none of the old writers is still running, "
        "pass reshard=true (finished shards are kept)"
    )


def repair(
    writer: Any, cfg: PrecomputeConfig, keys: list[str], log: Callable[[str], None]
) -> tuple[int, int]:
    """Find every bad row (every chunk re-read through its crc32c, shard files, NaN/inf) and reset its shard to
    not done; keys chunks that fail their checksum are rewritten from the dataset listing. Returns (bad rows,
    shards reset)."""
    import dinocache.cache.format as fmt
    from dinocache.cache.check import scan
    from dinocache.cache.reader import FeatureCache

    bad, _, _ = scan(FeatureCache(cfg.cache, cfg.storage_options))
    spec = writer.spec
    shards = sorted({b.row // spec.shard_size for b in bad})
    for b in bad:
        log(f"repair: {b.line()}")
    if len(keys) == spec.n:
        for s in sorted({b.row // spec.shard_size for b in bad if f"/{fmt.KEYS}/" in b.file}):
            writer.write_keys(s, keys)
    for s in shards:
        writer.reset_shard(s)
    log(
        f"repair: {len(bad)} bad row(s) in {len(shards)} shard(s) reset to not done"
        if bad
        else "repair: no damaged rows; recomputing only shards whose images changed (if any)"
    )
    return len(bad), len(shards)


def save_config(cfg: PrecomputeConfig, rank: int, world: int) -> str | None:
    """Write how the store was made (precompute.yaml, or precompute.shard{i}of{N}.yaml) into it; the reason
    it could not be written (e.g. a finished cache in a read-only folder: fine unless rows must be written),
    or None."""
    import yaml
    from dinocache.cache.locations import write_sidecar

    name = "precompute.yaml" if world == 1 else f"precompute.shard{rank}of{world}.yaml"
    saved = {k: v for k, v in to_dict(cfg).items() if k != "repair"}  # how it was made, not mended
    # anyone who can read the store reads this file: credentials stay where fsspec/boto found them
    saved["storage_options"] = scrub(saved["storage_options"])
    text = yaml.safe_dump(saved, sort_keys=False)
    try:
        write_sidecar(cfg.cache, name, text, cfg.storage_options)
    except OSError as e:
        return f"cannot write {cfg.cache}/{name} ({e.strerror or e})"
    return None


def is_empty_dir(path: str, so: dict[str, Any]) -> bool:
    from dinocache.cache.locations import filesystem

    fs, root = filesystem(path, so)
    try:
        return fs.isdir(root) and not fs.ls(root)
    except FileNotFoundError:
        return True


def rows_done(writer: Any) -> int:
    return int(np.count_nonzero(writer.done_rows()))
