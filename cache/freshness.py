"""Which cached maps still belong to the images on disk: a size+mtime record per image, checked at start.

The cache stores each row's image sha256, but hashing every image at every training start reads the whole
dataset (`verify_images=true` does that). Instead precompute records each image's size and mtime (ns) next to
the cache, for the images whose bytes it hashed in that run (`images.stat.json`, or
`images.stat.shard{i}of{N}.json` per writer), and the trainer compares them with one `stat` per image:

- same size and mtime: the bytes are the ones hashed (an edit that keeps both is what `verify_images` is for);
- other size: other bytes, the map is stale;
- same size, other mtime (a copy without `-p`, a `touch`): that image alone is hashed and compared with the
  stored sha256;
- no record for the image (a cache written before the record existed, or the image changed while precompute
  ran): hashed as well.

A re-augmented dataset (`augment overwrite=true seed=7`), another dataset with the same file names or
resized images are refused by name before the first step, at the cost of one `stat` per image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RECORD = "images.stat.json"
RECORD_FORMAT = "dinocache.image_stat"


def record_name(rank: int, world: int) -> str:
    return RECORD if world == 1 else f"images.stat.shard{rank}of{world}.json"


def stat_of(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of `path`, None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def snapshot(files: Sequence[Path]) -> list[tuple[int, int] | None]:
    return [stat_of(f) for f in files]


def write_record(
    cache: str,
    name: str,
    keys: Sequence[str],
    before: Sequence[tuple[int, int] | None],
    after: Sequence[tuple[int, int] | None],
    rows: Sequence[int],
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Record `rows` whose image kept its size and mtime while precompute ran (`before`: taken before any
    image was hashed, `after`: once every row was written), so the stat matches the stored sha256."""
    from dinocache.cache.locations import write_sidecar

    files = {keys[r]: list(before[r]) for r in rows if before[r] is not None and before[r] == after[r]}
    text = json.dumps({"format": RECORD_FORMAT, "version": 1, "files": files}, separators=(",", ":"))
    write_sidecar(cache, name, text, storage_options)


def read_record(
    cache: str, storage_options: dict[str, Any] | None = None
) -> dict[str, list[tuple[int, int]]] | None:
    """key -> every recorded (size, mtime_ns) of it (several writers' records merged); None without a record."""
    from dinocache.cache.locations import filesystem, local_path

    lp = local_path(cache)
    if lp is not None:  # a local folder: os calls, no fsspec import at start-up
        try:
            names = os.listdir(lp)
        except OSError:
            return None

        def cat(name: str) -> bytes:
            return (lp / name).read_bytes()
    else:
        fs, root = filesystem(cache, storage_options)
        root = root.rstrip("/")
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
        except (FileNotFoundError, OSError):
            return None

        def cat(name: str) -> bytes:
            return fs.cat(f"{root}/{name}")

    names = sorted(
        n for n in names if n == RECORD or (n.startswith("images.stat.shard") and n.endswith(".json"))
    )
    if not names:
        return None
    out: dict[str, list[tuple[int, int]]] = {}
    for n in names:
        try:
            doc = json.loads(cat(n).decode())
        except (OSError, ValueError):
            continue  # an unreadable record only costs hashing: the images it would vouch for are hashed
        if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
            continue
        for k, v in (doc.get("files") or {}).items():
            if isinstance(v, list) and len(v) == 2:
                out.setdefault(k, []).append((int(v[0]), int(v[1])))
    return out


def stale_images(
    files: Sequence[Path],
    keys: Sequence[str],
    stored_sha: Sequence[str],
    record: dict[str, list[tuple[int, int]]],
) -> tuple[list[str], int]:
    """(keys whose image is not the one cached, number of images hashed to decide). `stored_sha[i]` is the
    cache's sha256 of `files[i]`."""
    from dinocache.core.data import file_sha256

    stale, hashed = [], 0
    for f, k, sha in zip(files, keys, stored_sha, strict=True):
        now = stat_of(f)
        seen = record.get(k, [])
        if now is not None and now in seen:
            continue
        if now is not None and seen and all(now[0] != s[0] for s in seen):
            stale.append(k)  # another size: other bytes, no need to read them
            continue
        hashed += 1
        try:
            same = file_sha256(f) == sha
        except OSError:
            same = False
        if not same:
            stale.append(k)
    return stale, hashed
