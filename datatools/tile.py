"""`dinocache dataset tile SRC --out OUT --imgsz 512 --overlap 0.2 --min-visible 0.6`

Cuts large images into imgsz x imgsz tiles. Window placement is Ultralytics' own
`ultralytics.data.split_dota.get_windows` (same stride rule, last window flush with the image edge).
Its `split_images_and_labels`/`crop_and_save` are not used: they need the DOTA folder layout with
only train/val, keep an object by the IoF of its *axis-aligned* hull, and write its corners unclipped
(outside [0, 1], which our validator and Ultralytics' label check reject). Here the polygon itself is
clipped to the tile with shapely, kept when at least `min_visible` of its area is inside, and a cut
box becomes the rotated box of its visible part. Tiles at the right/bottom edge of an image smaller
than imgsz are padded with grey 114 so every tile is exactly imgsz square.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from dinocache.core.data import DataError

from .convert import dest_name
from .formats import decode_image, format_yolo_line, load_yolo, staged_dir, write_data_yaml
from .geometry import PAD_VALUE, clip_polygons


def tile_windows(w: int, h: int, imgsz: int, overlap: float) -> np.ndarray:
    """(N, 4) windows [x0, y0, x1, y1] in pixels (may extend past the image; padded later)."""
    from ultralytics.data.split_dota import get_windows

    return get_windows((h, w), crop_sizes=[imgsz], gaps=[int(round(imgsz * overlap))])


def tile(
    src: str | Path,
    out: str | Path,
    imgsz: int = 512,
    overlap: float = 0.2,
    min_visible: float = 0.6,
    drop_empty: bool = False,
    overwrite: bool = False,
    log=print,
) -> Path:
    if imgsz < 32:
        raise DataError(f"--imgsz must be >= 32, got {imgsz}")
    if not 0 <= overlap < 1:
        raise DataError(f"--overlap must be in [0, 1), got {overlap}")
    if not 0 < min_visible <= 1:
        raise DataError(f"--min-visible must be in (0, 1], got {min_visible}")
    col = load_yolo(src)
    if col.n_errors:
        first = "\n  ".join(str(p) for p in col.problems if p.severity == "error")
        raise DataError(
            f"{src}: {col.n_errors} errors; run `dinocache dataset validate --fix` first:\n  {first}"
        )
    counts: dict[str, Counter] = defaultdict(Counter)
    with staged_dir(Path(out), overwrite, protect=[col.root]) as tmp:
        for it in col.items:
            img = decode_image(it.image)  # the displayed frame, the one the labels are in
            if img is None:
                raise DataError(f"{it.image}: image cannot be decoded")
            h, w = img.shape[:2]
            name = Path(dest_name(it, col.root))
            polys = [o.poly for o in it.objects]
            for x0, y0, x1, y1 in tile_windows(w, h, imgsz, overlap).tolist():
                xe, ye = min(x1, w), min(y1, h)
                shifted = [p - [x0, y0] for p in polys]
                keep, boxes, _ = clip_polygons(
                    shifted, imgsz, imgsz, min_visible, region=(0, 0, xe - x0, ye - y0)
                )
                if drop_empty and not keep:
                    continue
                crop = img[y0:ye, x0:xe]
                pad = [(0, imgsz - crop.shape[0]), (0, imgsz - crop.shape[1])] + [(0, 0)] * (crop.ndim - 2)
                crop = np.pad(crop, pad, constant_values=PAD_VALUE)
                stem = f"{name.stem}__{imgsz}__{x0}___{y0}"
                ip = tmp / "images" / it.split / name.parent / f"{stem}{name.suffix}"
                lp = tmp / "labels" / it.split / name.parent / f"{stem}.txt"
                ip.parent.mkdir(parents=True, exist_ok=True)
                lp.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(ip), crop):
                    raise DataError(f"cannot write {ip}")
                lines = [format_yolo_line(it.objects[i].cls, b, imgsz, imgsz) for i, b in zip(keep, boxes)]
                lp.write_text("".join(ln + "\n" for ln in lines))
                counts[it.split]["tiles"] += 1
                counts[it.split]["boxes"] += len(lines)
            counts[it.split]["images"] += 1
        write_data_yaml(tmp, col.names, list(counts))
    for split, c in counts.items():
        log(f"{split}: {c['images']} images -> {c['tiles']} tiles, {c['boxes']} boxes")
    root = Path(out).resolve()
    log(f"wrote {root}")
    return root
