"""Finding damage in a cache: every chunk re-read through its crc32c, missing shard files, NaN/inf rows.

`scan` is what `dinocache cache verify` and `cache repair` run (every row of every shard); `checked_map`
is what the trainer's dataset calls for each image it reads (one row, any read backend), and
`missing_shard_files` is the cheap start-of-training check. Every finding names the row, the image key
and the file, and every error names the repair command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from dinocache.cache import format as fmt
from dinocache.cache.arrays import decode_keys
from dinocache.cache.errors import CacheCorrupt, CacheError, damage_reason, repair_hint
from dinocache.cache.locations import folder_names

_F16 = np.dtype(np.float16)


@dataclass
class BadRow:
    """One row whose stored data cannot be trusted."""

    row: int
    key: str
    file: str  # the shard (features) or chunk file holding the damage
    reason: str

    def line(self) -> str:
        return f"row {self.row} {self.key}: {self.reason} ({self.file})"


def shard_file(fc: Any, shard: int, flipped: bool = False) -> str:
    return fmt.chunk_file(fc.path, fmt.FEATURES_FLIP if flipped else fmt.FEATURES, shard)


def missing_shard_files(
    fc: Any, done: np.ndarray | None = None, flipped: bool = False
) -> list[tuple[int, str, list[int]]]:
    """(shard, file, done rows) for every shard that has done rows but no file: one folder listing.
    `flipped`: the shards of `features_flip` (caches with flips) instead of `features`."""
    names = folder_names(fc.path, fmt.FEATURES_FLIP if flipped else fmt.FEATURES, fc.storage_options)
    if names is None:
        return []
    done = np.asarray(fc.done if done is None else done, bool)
    out = []
    for s in range(fc.spec.n_shards):
        r = fc.spec.shard_rows(s)
        rows = [int(i) for i in np.flatnonzero(done[r.start : r.stop]) + r.start]
        if rows and f"c.{s}.0.0.0" not in names:
            out.append((s, shard_file(fc, s, flipped), rows))
    return out


def scan(fc: Any) -> tuple[list[BadRow], np.ndarray, list[str]]:
    """(bad rows, done flags, keys) after re-reading every chunk of `done`, `sha256`, `keys` and every done
    row of `features` (checksum, presence of the shard file, finiteness)."""
    bad: list[BadRow] = []
    raw_keys, bad_keys = fc.read_chunked(fmt.KEYS)
    keys = decode_keys(raw_keys)
    for c in bad_keys:
        for r in fc.spec.shard_rows(c):
            keys[r] = f"<key of row {r} unreadable>"
    done_raw, bad_done = fc.read_chunked(fmt.DONE)
    done = done_raw.astype(bool)
    _, bad_sha = fc.read_chunked(fmt.SHA256)
    flagged: set[int] = set()
    for name, chunks in ((fmt.KEYS, bad_keys), (fmt.DONE, bad_done), (fmt.SHA256, bad_sha)):
        for c, why in chunks.items():
            for r in fc.spec.shard_rows(c):
                if r not in flagged:
                    flagged.add(r)
                    bad.append(BadRow(r, keys[r], fmt.chunk_file(fc.path, name, c), f"'{name}' chunk {why}"))
    for flipped in (False, True) if fc.spec.flips else (False,):
        what = "flipped-view " if flipped else ""
        missing = {sh: rows for sh, _, rows in missing_shard_files(fc, done, flipped)}
        for sh in range(fc.spec.n_shards):
            r = fc.spec.shard_rows(sh)
            rows = [int(i) for i in np.flatnonzero(done[r.start : r.stop]) + r.start if int(i) not in flagged]
            if not rows:
                continue
            f = shard_file(fc, sh, flipped)
            if sh in missing:
                bad += [BadRow(i, keys[i], f, f"{what}shard file is missing (done says 1)") for i in rows]
                flagged.update(rows)
                continue
            try:
                x = fc.read(rows, flipped=flipped)
                per_row = dict(zip(rows, x))
                errors: dict[int, str] = {}
            except Exception:  # noqa: BLE001 - one bad chunk fails the whole read: find which, row by row
                per_row, errors = {}, {}
                for i in rows:
                    try:
                        per_row[i] = fc.read([i], flipped=flipped)[0]
                    except Exception as e:  # noqa: BLE001
                        errors[i] = damage_reason(e)
            for i in rows:
                if i in errors:
                    bad.append(BadRow(i, keys[i], f, f"{what}image chunk {errors[i]}"))
                    flagged.add(i)
                elif not all_finite(per_row[i]):
                    nbad = int(np.count_nonzero(~np.isfinite(per_row[i])))
                    held = f"{what}map holds" if flipped else "holds"
                    bad.append(BadRow(i, keys[i], f, f"{held} {nbad} NaN/inf value(s)"))
                    flagged.add(i)
    bad.sort(key=lambda b: b.row)
    return bad, done, keys


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of `x` is finite. float16 on its bits in one pass: a value is NaN or inf exactly when its
    5 exponent bits are all ones, i.e. when its bits without the sign are >= 0x7C00; np.isfinite on float16
    converts each value and costs ~20x more on a map. The masked bits go to a new temporary: in the training loader,
    where the image work between two reads evicts any buffer kept for this, a per-thread scratch buffer measured
    ~1.2x the time of the temporary (20 vs 14.5 us a 16 KiB map, 35 vs 29 us a 100 KiB one)."""
    if x.dtype == _F16 and x.size:
        bits = x.reshape(-1).view(np.uint16)  # a view of a C-contiguous map, else a copy
        # the ufunc's reduce itself: ndarray.max goes through a Python-level wrapper first (once per map read)
        return bool(np.maximum.reduce(np.bitwise_and(bits, 0x7FFF)) < 0x7C00)
    return bool(np.isfinite(x).all())


def checked_map(
    fc: Any, key: str, channels: int | None = None, flipped: bool = False, view: bool = False
) -> np.ndarray:
    """(D, h, w) float16 map of image `key` (`flipped`: of the mirrored image), or CacheCorrupt naming key, row,
    shard file and the repair command: a checksum failure, a missing shard (reads as NaN fill) or NaN/inf never
    reaches a loss. `view`: a read-only view of the memory-mapped shard may come back instead of a copy."""
    try:
        x = np.asarray(fc.get(key, channels=channels, flipped=flipped, **({"view": True} if view else {})))
    except CacheError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever backend reads it, a stored-bytes failure is damage
        raise CacheCorrupt(f"{_where(fc, key, flipped)} {damage_reason(e)}; {repair_hint(fc)}") from None
    if not all_finite(x):
        shard = fc.row_of(key) // fc.spec.shard_size
        gone = missing_shard_files(fc, flipped=flipped)
        why = (
            "is missing: its shard file was deleted although `done` says 1"
            if any(s == shard for s, _, _ in gone)
            else f"holds {int(np.count_nonzero(~np.isfinite(x)))} NaN/inf value(s)"
        )
        raise CacheCorrupt(f"{_where(fc, key, flipped)} {why}; {repair_hint(fc)}")
    return x


def _where(fc: Any, key: str, flipped: bool) -> str:
    row = fc.row_of(key)
    shard = row // fc.spec.shard_size
    what = "flipped-view teacher map" if flipped else "teacher map"
    return (
        f"cache {fc.path}: the {what} of image {key} (row {row}, shard file {shard_file(fc, shard, flipped)})"
    )
