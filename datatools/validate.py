"""`dinocache dataset validate DATA [--fix OUT]`: every problem as `file:line: severity: message`.

Errors (exit 1): image does not decode fully (truncated files too); wrong field count (not 9, or a
polygon of more corners); data.yaml without train or names (no val: a warning); non-numbers; class id out of range;
a box Ultralytics' label check refuses (the xywh of the corners' axis-aligned box: centre outside
[-0.01, 1.01] or a side over 1.01); zero-area polygon; the same image (sha256) in two
splits (leakage). Warnings: corners outside [0, 1] by more than 1e-3 on a line
Ultralytics accepts (clipped to the image at load, as Ultralytics does), duplicate label line, polygon with more than 4 points, duplicate image
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


# what `dinocache train` (Ultralytics' check_det_dataset with a val split) needs from a YOLO data.yaml
REQUIRED_KEYS = ("train", "val", "names")


def check_yaml_keys(col: Collection, data: str | Path) -> None:
    """A YOLO data.yaml without train/val/names is an error naming the key (the dataset tools read any
    subset of splits, training does not)."""
    import yaml

    from dinocache.core.data import find_data_yaml

    p = find_data_yaml(data)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # load_any already refused it by name
    for k in REQUIRED_KEYS:
        if not raw.get(k):
            # a missing val is a warning: `convert` writes the splits it was given and `split` adds val later
            col.add(
                p.name,
                None,
                "warning" if k == "val" else "error",
                f"no '{k}' key: training needs {', '.join(REQUIRED_KEYS)} "
                f"({'add the class names' if k == 'names' else 'add the split'} to {p}"
                + ("; `dinocache dataset split` makes one" if k == "val" else "")
                + ")",
            )


def validate(data: str | Path, fmt: str | None = None) -> tuple[Collection, set[int]]:
    col = load_any(data, fmt, decode=True)
    if col.format == "yolo-obb":
        check_yaml_keys(col, data)
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
