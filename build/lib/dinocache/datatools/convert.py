"""Convert DOTA labelTxt / COCO JSON to YOLO-OBB (and YOLO-OBB to DOTA), and the shared YOLO writer.

Ultralytics' `convert_dota_to_yolo_obb` is not used: it hard-codes the 18 DOTA-v1.5 class names
(KeyError on any other name), reads only `.png`, only `images/{train,val}` + `labels/*_original`, and
silently drops `difficult`. Our parser takes any class names (sorted, or the order given with
`--names`), any image type, both common DOTA layouts, and reports bad lines as `file:line`.
"""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dinocache.core.data import DataError

from .formats import Collection, Item, load_any, staged_dir, write_data_yaml, write_dota, write_yolo_labels
from .geometry import clip_polygons, min_area_box


def dest_name(item: Item, root: Path) -> str:
    """File path below images/<split>/ for `item` (sub-folders kept, a leading images/<split>/ dropped)."""
    try:
        parts = item.image.resolve().relative_to(root).parts
    except ValueError:
        return item.image.name
    if len(parts) > 2 and parts[0] == "images" and parts[1] == item.split:
        parts = parts[2:]
    elif len(parts) > 1 and parts[0] in ("images", item.split):
        parts = parts[1:]
        if len(parts) > 1 and parts[0] == "images":
            parts = parts[1:]
    return Path(*parts).as_posix()


def clean_boxes(item: Item, min_visible: float = 0.5) -> list[tuple[int, np.ndarray]]:
    """Objects as (cls, 4 pixel corners) inside the image: polygons -> rotated boxes; boxes that leave
    the image are clipped and replaced by the rotated box of their visible part (dropped below
    `min_visible`)."""
    out = []
    polys = [o.poly if len(o.poly) == 4 else min_area_box(o.poly) for o in item.objects]
    keep, boxes, _ = clip_polygons(polys, item.width, item.height, min_visible)
    for i, b in zip(keep, boxes):
        out.append((item.objects[i].cls, b))
    return out


def write_yolo(
    col: Collection,
    out: Path,
    split_of: Callable[[Item], str] | None = None,
    skip: set[int] | None = None,
    min_visible: float = 0.5,
) -> dict[str, Counter]:
    """Copy images and write YOLO-OBB labels + data.yaml into `out` (a fresh folder).
    Returns split -> Counter of class id (instances), with key "images" holding the image count."""
    counts: dict[str, Counter] = defaultdict(Counter)
    used: dict[str, Path] = {}
    for k, it in enumerate(col.items):
        if not it.ok or (skip and k in skip):
            continue
        split = split_of(it) if split_of else it.split
        name = dest_name(it, col.root)
        if f"{split}/{name}" in used:
            name = f"{it.split}_{name}"  # same file name in two source splits
        if f"{split}/{name}" in used:
            raise DataError(f"{it.image} and {used[f'{split}/{name}']} map to the same output name {name}")
        used[f"{split}/{name}"] = it.image
        dst = out / "images" / split / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(it.image, dst)
        boxes = clean_boxes(it, min_visible)
        write_yolo_labels((out / "labels" / split / name).with_suffix(".txt"), boxes, it.width, it.height)
        counts[split]["images"] += 1
        counts[split].update(c for c, _ in boxes)
    write_data_yaml(out, col.names, list(counts))
    return dict(counts)


def parse_names(arg: str | None) -> list[str] | None:
    """`--names a,b,c` or `--names names.txt` (one per line)."""
    if not arg:
        return None
    p = Path(arg)
    if p.is_file():
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    else:
        names = [n.strip() for n in arg.split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"--names: duplicate class names in {names}")
    return names


def convert(
    src: str | Path,
    out: str | Path,
    fmt: str,
    to: str = "yolo",
    names: list[str] | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    log=print,
) -> Path:
    """`src` (dota | coco | yolo) -> `out` as YOLO-OBB (or DOTA with to="dota"). Returns the output root."""
    col = load_any(src, fmt, decode=True, names=names)
    for p in col.problems:
        if p.severity == "error":
            log(str(p))
    if col.n_errors and not skip_bad:
        raise DataError(
            f"{src}: {col.n_errors} errors (listed above); fix them or pass --skip-bad to drop them"
        )
    if not col.items:
        raise DataError(f"{src}: no images found")
    with staged_dir(Path(out), overwrite, protect=[col.root]) as tmp:
        if to == "dota":
            write_dota(col, tmp)
            log(f"wrote {len(col.items)} images in DOTA layout")
        else:
            counts = write_yolo(col, tmp)
            for split, c in counts.items():
                log(f"{split}: {c['images']} images, {sum(v for k, v in c.items() if k != 'images')} boxes")
    root = Path(out).resolve()
    log(f"classes: {col.names}\nwrote {root}")
    return root
