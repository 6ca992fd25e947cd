"""`dinocache dataset validate DATA [--fix OUT]`: every problem as `file:line: severity: message`.

Errors (exit 1): image does not decode; wrong field count; non-numbers; class id out of range;
coordinate outside [0, 1] by more than 1e-3; zero-area polygon; the same image (sha256) in two
splits (leakage). Warnings: duplicate label line, polygon with more than 4 points, duplicate image
within one split, label without image, image without label (a background image, valid in Ultralytics).
`--fix OUT` writes a cleaned YOLO-OBB copy: bad lines and undecodable images dropped, out-of-range
boxes clipped to the image, polygons turned into rotated boxes, later duplicates dropped.
"""

from __future__ import annotations

from pathlib import Path

from dinocache.core.data import DataError, file_sha256

from .convert import write_yolo
from .formats import Collection, _rel, load_any, staged_dir


def find_duplicates(col: Collection) -> set[int]:
    """Record duplicate images (by sha256) as problems; returns the indices of the later copies."""
    first: dict[str, int] = {}
    dups: set[int] = set()
    for k, it in enumerate(col.items):
        if not it.ok:
            continue
        h = file_sha256(it.image)
        if h not in first:
            first[h] = k
            continue
        dups.add(k)
        orig = col.items[first[h]]
        rel, orel = _rel(it.image, col.root), _rel(orig.image, col.root)
        if orig.split != it.split:
            col.add(
                rel, None, "error", f"same image as {orel} ({orig.split} vs {it.split}: leaks between splits)"
            )
        else:
            col.add(rel, None, "warning", f"same image as {orel}")
    return dups


def validate(data: str | Path, fmt: str | None = None) -> tuple[Collection, set[int]]:
    col = load_any(data, fmt, decode=True)
    dups = find_duplicates(col)
    return col, dups


def fix(col: Collection, dups: set[int], out: str | Path, overwrite: bool = False) -> Path:
    if col.format != "yolo-obb":
        raise DataError(
            f"--fix writes YOLO-OBB from YOLO-OBB input; for {col.format} use `dinocache dataset convert`"
        )
    with staged_dir(Path(out), overwrite, protect=[col.root]) as tmp:
        write_yolo(col, tmp, skip=dups)
    return Path(out).resolve()
