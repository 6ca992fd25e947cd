"""Reading and writing the three label formats into one in-memory shape.

- YOLO-OBB: `data.yaml` + `labels/<split>/*.txt`, lines `cls x1 y1 x2 y2 x3 y3 x4 y4` normalised to [0, 1].
- DOTA: `labelTxt/*.txt` beside `images/`, lines `x1 y1 ... x4 y4 classname difficult` in pixels,
  optional `imagesource:` / `gsd:` header lines.
- COCO: one JSON per split; `bbox` or polygon `segmentation` (-> minimum-area rotated box).

Every loader returns a `Collection`: items (image, split, size, objects with pixel polygons and the
source line) plus the problems found, each `file:line: severity: message`, so `inspect`, `validate` and
`convert` share one parser and report the same lines.

Why one file of ~680 lines: the three readers and writers share the `Collection` shape, the problem-line
wording and the polygon helpers, and `convert` pairs any reader with any writer; split by format, each part
would import the others' helpers. Sections (`# ---` rules): the shared shape, YOLO, DOTA, COCO, any format.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from dinocache.core.data import (
    IMG_EXTS,
    DataError,
    dataset_root,
    is_dataset_yaml,
    load_data_yaml,
    split_images,
)
from dinocache.core.errors import DinocacheError

from .geometry import min_area_box, polygon_area

# Coordinates this far outside [0, 1] are rounding: kept as they are, without a warning.
COORD_TOL = 1e-3
# Ultralytics' own label check (ultralytics/data/utils.py, verify_image_label) turns a polygon into the xywh
# of its axis-aligned box and accepts the line when x, y, w, h <= 1 + 0.01 and x, y >= -0.01. Corners of an
# object cut by the tile border (common in published aerial sets) can lie well outside the image, 7 % and
# more, while that box passes; Ultralytics trains such lines with the corners clipped to the image
# (Instances.clip), and so does dinocache. What its check refuses is an error here too.
ULTRALYTICS_TOL = 0.01
# Polygons with less normalised area than this are degenerate (a line or a point).
MIN_AREA = 1e-8


@dataclass
class Problem:
    file: str
    line: int | None
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.severity}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "severity": self.severity, "message": self.message}


@dataclass
class Obj:
    cls: int
    poly: np.ndarray  # (K, 2) pixel polygon, K >= 3 (4 for OBB)
    line: int | None = None
    difficult: int = 0
    clipped: bool = False  # a coordinate was outside the image beyond tolerance


@dataclass
class Item:
    image: Path
    split: str
    width: int
    height: int
    objects: list[Obj] = field(default_factory=list)
    label_file: Path | None = None
    ok: bool = True  # image decodes (only checked when asked)


@dataclass
class Collection:
    format: str  # "yolo-obb" | "dota" | "coco"
    root: Path
    names: dict[int, str]
    items: list[Item]
    problems: list[Problem] = field(default_factory=list)
    orphan_labels: list[Path] = field(default_factory=list)
    # instance masks: YOLO-seg lines (polygons of more than 4 points), COCO polygons and RLE (coco_mask_kind)
    masks: int = 0
    clipped: int = 0  # label lines Ultralytics accepts with corners outside the image: clipped to it
    clipped_most: float = 0.0  # the farthest such corner lies outside [0, 1] (normalised units)

    def clipped_line(self) -> str:
        """The one line that counts the clipped label lines ('' when there are none)."""
        if not self.clipped:
            return ""
        return (
            f"{self.clipped} label line(s) have corners outside the image (up to {self.clipped_most:.1%}): "
            "clipped to it, as Ultralytics does with lines its check accepts "
            "(dinocache dataset validate lists them)"
        )

    def add(self, file: Path | str, line: int | None, severity: str, message: str) -> None:
        self.problems.append(Problem(str(file), line, severity, message))

    @property
    def n_errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)


def is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower().lstrip(".") in IMG_EXTS


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image(p))


# EXIF orientation (tag 0x0112) -> the numpy view of the stored pixels that shows the displayed frame (PIL's
# ImageOps.exif_transpose; a test compares every value with it)
_ORIENT = {
    2: lambda x: x[:, ::-1],
    3: lambda x: x[::-1, ::-1],
    4: lambda x: x[::-1],
    5: lambda x: x.swapaxes(0, 1),
    6: lambda x: np.rot90(x, -1),
    7: lambda x: np.rot90(x, 2).swapaxes(0, 1),
    8: lambda x: np.rot90(x, 1),
}


def _orientation(pim) -> int:  # noqa: ANN001 - a PIL image
    try:
        o = int(pim.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: the stored frame
        return 1
    return o if o in _ORIENT else 1


def decode_image(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray | None:
    """The whole image decoded in its displayed frame (EXIF orientation applied, as Ultralytics' loader reads
    it for training), or None. Strict: cv2 decodes a truncated JPEG with only a warning (grey bottom rows)
    where Ultralytics' loader and precompute refuse it, so PIL first decodes every byte (a truncated file
    raises there), then cv2 reads the pixels the way the trainer does."""
    from PIL import Image

    try:
        with Image.open(path) as pim:
            pim.load()
            orientation = _orientation(pim)
    except Exception:  # noqa: BLE001 - any decode failure means the image is unusable
        return None
    im = cv2.imread(str(path), flags)
    if (
        im is not None
        and orientation != 1
        and (flags == cv2.IMREAD_UNCHANGED or flags & cv2.IMREAD_IGNORE_ORIENTATION)
    ):
        # cv2 applies the orientation for IMREAD_COLOR/GRAYSCALE only: the same frame for every flag
        im = np.ascontiguousarray(_ORIENT[orientation](im))
    return im


def image_size(path: Path, decode: bool) -> tuple[int, int] | None:
    """(w, h) of the displayed frame (EXIF orientation applied: the frame of the labels, as Ultralytics'
    `exif_size`); with `decode` the whole image is decoded (None when it can't be, truncated files included)."""
    if decode:
        im = decode_image(path)
        return None if im is None else (im.shape[1], im.shape[0])
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)
    except Exception:
        return None


def label_path(image: Path) -> Path:
    """Ultralytics' rule (`ultralytics.data.utils.img2label_paths`, written out so that the dataset tools
    don't import torch; a test compares both): last `/images/` -> `/labels/`, extension -> `.txt`."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


@contextmanager
def staged_dir(out: Path, overwrite: bool, protect: list[Path] = ()) -> Iterator[Path]:
    """Write into a hidden sibling and rename it to `out` only on success, so a failure leaves
    nothing half-written. `protect`: input paths that `out` must neither be nor contain."""
    out = Path(out).expanduser().resolve()
    for p in protect:
        p = Path(p).resolve()
        if p == out or out in p.parents:
            raise DataError(f"output {out} would overwrite the input {p}; choose another --out")
    if out.exists() and not overwrite:
        raise DataError(f"output {out} exists; pass --overwrite (or overwrite=true) to replace it")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


# --------------------------------------------------------------------------------------------- YOLO


@dataclass
class DataSpec:
    yaml_file: Path
    root: Path
    names: dict[int, str]
    splits: dict[str, list[Path]]  # split -> sorted images


def read_data_yaml(path: str | Path) -> DataSpec:
    """The dataset as training will see it: core's one resolver (Ultralytics' check_det_dataset; any subset of
    train/val/test) and Ultralytics' image listing for each split that is set."""
    info = load_data_yaml(path, require_val=False)
    splits = {s: split_images(info, s) for s in ("train", "val", "test") if info.get(s)}
    names = {int(k): str(v) for k, v in sorted(info["names"].items())}
    return DataSpec(Path(info["yaml_file"]), dataset_root(info), names, splits)


def write_data_yaml(root: Path, names: dict[int, str], splits: list[str]) -> Path:
    """data.yaml without `path:` (resolved from its own folder, see dinocache.core.data)."""
    d = {s: f"images/{s}" for s in ("train", "val", "test") if s in splits}
    d["names"] = {int(k): v for k, v in sorted(names.items())}
    out = root / "data.yaml"
    out.write_text(yaml.safe_dump(d, sort_keys=False))
    return out


class LabelLineError(DinocacheError, ValueError):
    """A YOLO label line that cannot be an object; the message is the reason (no file:line, callers add it)."""


def parse_yolo_line(
    parts: list[str], nc: float, axis_boxes: bool = False, segments: bool = False
) -> tuple[int, np.ndarray]:
    """The one YOLO label-line parser: `cls x1 y1 ... xK yK` normalised (K >= 4; K = 4 is an OBB, more is a
    segment; with `segments`, YOLO-seg polygons of K >= 3 points too) and, with `axis_boxes`, Ultralytics'
    detection line `cls cx cy w h`. Returns (class id, (K, 2) float64 normalised corners). Coordinates are
    not range-checked: callers choose (error, clip). Every bad line raises LabelLineError; `validate`, the
    grader and fine-tuning all read labels here."""
    axis = axis_boxes and len(parts) == 5
    min_fields = 7 if segments else 9  # 7 fields = 3 corners: a segment, not a box
    if not axis and (len(parts) < min_fields or len(parts) % 2 == 0):
        also = " or 5 (class cx cy w h)" if axis_boxes else ""
        raise LabelLineError(f"{len(parts)} fields; expected 9 (class x1 y1 x2 y2 x3 y3 x4 y4){also}")
    try:
        vals = [float(v) for v in parts]
    except ValueError:
        bad = next(v for v in parts if not _is_number(v))
        raise LabelLineError(f"not a number: {bad!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise LabelLineError("non-finite value")
    c = vals[0]
    if c != int(c) or not 0 <= c < nc:
        raise LabelLineError(f"class id {parts[0]} out of range [0, {nc - 1}]")
    if axis:
        cx, cy, w, h = vals[1:]
        xy = np.array(
            [
                [cx - w / 2, cy - h / 2],
                [cx + w / 2, cy - h / 2],
                [cx + w / 2, cy + h / 2],
                [cx - w / 2, cy + h / 2],
            ]
        )
    else:
        xy = np.array(vals[1:], dtype=np.float64).reshape(-1, 2)
    if polygon_area(xy) <= MIN_AREA:
        raise LabelLineError("degenerate polygon (zero area)")
    return int(c), xy


def ultralytics_refuses(xy: np.ndarray) -> str:
    """Why Ultralytics' label check refuses the normalised polygon `xy` (K, 2), or '' when it accepts it:
    the xywh of its axis-aligned box must have x, y, w, h <= 1 + ULTRALYTICS_TOL and x, y >= -ULTRALYTICS_TOL."""
    lo, hi = xy.min(0), xy.max(0)
    (x, y), (w, h) = (lo + hi) / 2, hi - lo
    if min(x, y) >= -ULTRALYTICS_TOL and max(x, y, w, h) <= 1 + ULTRALYTICS_TOL:
        return ""
    return (
        f"box of the corners outside the image (centre {x:.4g}, {y:.4g}, size {w:.4g} x {h:.4g}; "
        f"the centre must lie in [{-ULTRALYTICS_TOL:g}, {1 + ULTRALYTICS_TOL:g}], the size at most "
        f"{1 + ULTRALYTICS_TOL:g})"
    )


def parse_yolo_label(
    path: Path, width: int, height: int, nc: int, col: Collection, rel: str | None = None
) -> list[Obj]:
    """Parse one YOLO-OBB label file, recording every bad line in `col.problems`."""
    where = rel or str(path)
    objs: list[Obj] = []
    seen: dict[tuple, int] = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        col.add(where, None, "error", f"cannot read label file: {e}")
        return objs
    for ln, raw in enumerate(text.splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        try:
            c, xy = parse_yolo_line(parts, nc)
        except LabelLineError as e:
            col.add(where, ln, "error", str(e))
            continue
        clipped = False
        lo, hi = float(xy.min()), float(xy.max())
        refused = ultralytics_refuses(xy)
        if refused:
            col.add(where, ln, "error", f"{refused}; Ultralytics refuses it too; --fix clips it")
            clipped = True
        elif lo < -COORD_TOL or hi > 1 + COORD_TOL:
            col.add(where, ln, "warning", f"corner outside [0, 1] (min {lo:.4g}, max {hi:.4g}): clipped")
            xy = xy.clip(0.0, 1.0)
            col.clipped += 1
            col.clipped_most = max(col.clipped_most, -lo, hi - 1)
        if len(xy) != 4:
            col.add(where, ln, "warning", f"polygon with {len(xy)} points; --fix makes it a rotated box")
        key = tuple(parts)
        if key in seen:
            col.add(where, ln, "warning", f"duplicate of line {seen[key]}")
            continue
        seen[key] = ln
        if len(xy) > 4:
            col.masks += 1
        objs.append(Obj(c, xy * [width, height], line=ln, clipped=clipped))
    return objs


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _rel(p: Path, root: Path) -> str:
    try:
        return p.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(p)


def load_yolo(data: str | Path, decode: bool = False) -> Collection:
    spec = read_data_yaml(data)
    col = Collection("yolo-obb", spec.root, spec.names, [])
    nc = len(spec.names)
    if sorted(spec.names) != list(range(nc)):
        col.add(_rel(spec.yaml_file, spec.root), None, "error", "class ids in 'names' must be 0..nc-1")
    label_dirs: set[Path] = set()
    used_labels: set[Path] = set()
    for split, images in spec.splits.items():
        for im in images:
            rel = _rel(im, spec.root)
            size = image_size(im, decode)
            item = Item(im, split, *(size or (0, 0)))
            if size is None:
                col.add(rel, None, "error", "image cannot be decoded")
                item.ok = False
            lp = label_path(im)
            label_dirs.add(lp.parent)
            if lp.is_file():
                used_labels.add(lp.resolve())
                item.label_file = lp
                if item.ok:
                    item.objects = parse_yolo_label(lp, item.width, item.height, nc, col, _rel(lp, spec.root))
            else:
                col.add(rel, None, "warning", "no label file (kept as a background image)")
            col.items.append(item)
    for d in sorted(label_dirs):
        if d.is_dir():
            for lp in sorted(d.glob("*.txt")):
                if lp.resolve() not in used_labels:
                    col.orphan_labels.append(lp)
                    col.add(_rel(lp, spec.root), None, "warning", "label file without an image")
    return col


def format_yolo_line(cls: int, corners: np.ndarray, width: float, height: float) -> str:
    xy = (np.asarray(corners, dtype=np.float64) / [width, height]).clip(0.0, 1.0).reshape(-1)
    return f"{int(cls)} " + " ".join(f"{v:.6g}" for v in xy)


def write_yolo_labels(path: Path, objs: list[tuple[int, np.ndarray]], width: float, height: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(format_yolo_line(c, p, width, height) + "\n" for c, p in objs))


# --------------------------------------------------------------------------------------------- DOTA


def find_dota_dirs(root: Path) -> list[tuple[str, Path, Path]]:
    """(split, images dir, labelTxt dir) for `root/{images,labelTxt}` or `root/<split>/{images,labelTxt}`."""
    found = []
    for lt in sorted(root.rglob("labelTxt")):
        if not lt.is_dir():
            continue
        parent = lt.parent
        split = "train" if parent.resolve() == root.resolve() else parent.name
        found.append((split, parent / "images", lt))
    return found


def parse_dota_file(path: Path, rel: str, col: Collection, names: dict[str, int], fixed: bool) -> list[Obj]:
    """Parse one labelTxt file; unknown class names are added to `names` unless the list is `fixed`."""
    objs = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        col.add(rel, None, "error", f"cannot read label file: {e}")
        return objs
    for ln, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith(("imagesource:", "gsd:")):
            continue
        parts = s.split()
        if len(parts) not in (9, 10):
            col.add(
                rel, ln, "error", f"{len(parts)} fields; expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]'"
            )
            continue
        try:
            xy = np.array([float(v) for v in parts[:8]]).reshape(4, 2)
            difficult = int(parts[9]) if len(parts) == 10 else 0
        except ValueError:
            col.add(rel, ln, "error", "coordinates must be numbers and 'difficult' an integer")
            continue
        name = parts[8]
        if name not in names:
            if fixed:
                col.add(rel, ln, "error", f"class '{name}' is not in --names")
                continue
            names[name] = len(names)
        if polygon_area(xy) <= 1e-6:
            col.add(rel, ln, "error", "degenerate polygon (zero area)")
            continue
        objs.append(Obj(names[name], xy, line=ln, difficult=difficult))
    return objs


def load_dota(root: str | Path, names: list[str] | None = None, decode: bool = False) -> Collection:
    root = Path(root).expanduser().resolve()
    dirs = find_dota_dirs(root)
    if not dirs:
        raise DataError(f"{root}: no labelTxt folder (expected {root}/labelTxt or {root}/<split>/labelTxt)")
    name_ids: dict[str, int] = {n: i for i, n in enumerate(names or [])}
    col = Collection("dota", root, {}, [])
    for split, im_dir, lt_dir in dirs:
        images = {p.stem: p for p in list_images(im_dir)} if im_dir.is_dir() else {}
        labels = {p.stem: p for p in sorted(lt_dir.glob("*.txt"))}
        for stem, im in sorted(images.items()):
            rel = _rel(im, root)
            size = image_size(im, decode)
            item = Item(im, split, *(size or (0, 0)))
            if size is None:
                col.add(rel, None, "error", "image cannot be decoded")
                item.ok = False
            lp = labels.get(stem)
            if lp is None:
                col.add(rel, None, "warning", "no label file (kept as a background image)")
            else:
                item.label_file = lp
                item.objects = parse_dota_file(lp, _rel(lp, root), col, name_ids, fixed=bool(names))
            col.items.append(item)
        for stem, lp in labels.items():
            if stem not in images:
                col.orphan_labels.append(lp)
                col.add(_rel(lp, root), None, "warning", "label file without an image")
    if not names:
        # Sorted names make the class ids independent of which file happened to come first.
        order = sorted(name_ids)
        remap = {name_ids[n]: i for i, n in enumerate(order)}
        for it in col.items:
            for o in it.objects:
                o.cls = remap[o.cls]
        name_ids = {n: i for i, n in enumerate(order)}
    col.names = {i: n for n, i in name_ids.items()}
    return col


def write_dota(col: Collection, out: Path) -> None:
    """`out/<split>/{images,labelTxt}` with pixel corners (images copied)."""
    import shutil

    for it in col.items:
        d = out / it.split
        (d / "images").mkdir(parents=True, exist_ok=True)
        (d / "labelTxt").mkdir(parents=True, exist_ok=True)
        shutil.copy2(it.image, d / "images" / it.image.name)
        lines = []
        for o in it.objects:
            xy = o.poly if len(o.poly) == 4 else min_area_box(o.poly)
            coords = " ".join(f"{v:.2f}" for v in xy.reshape(-1))
            lines.append(f"{coords} {col.names[o.cls]} {o.difficult}\n")
        (d / "labelTxt" / f"{it.image.stem}.txt").write_text("".join(lines))


# --------------------------------------------------------------------------------------------- COCO


def read_coco_json(path: str | Path) -> dict:
    """The one COCO reader: a COCO instances JSON as a dict whose `images` and `annotations` are lists and
    `categories` are sorted by id (category order = class order everywhere). Bad files are a DataError naming
    file:line:column. `dataset inspect/validate/convert` and fine-tuning's COCO objective both read here."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"COCO file {p} does not exist")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list):
        raise DataError(f"{p}: not a COCO instances file (no 'images' list)")
    if not isinstance(d.setdefault("annotations", []), list):
        raise DataError(f"{p}: 'annotations' must be a list")
    try:
        d["categories"] = sorted(d.get("categories") or [], key=lambda c: c["id"])
    except (KeyError, TypeError):
        raise DataError(f"{p}: every category needs an 'id'") from None
    return d


def coco_mask_kind(seg: Any) -> str | None:
    """What a COCO annotation's `segmentation` holds: "polygon" (a list of flat x,y lists, one of them with 3 or
    more points), "rle" (a dict with `counts`, compressed or not) or None (no mask). The one notion of "has
    masks" shared by `dataset inspect` (load_coco) and the fine-tuning reader (finetune.objectives.read_coco)."""
    if isinstance(seg, dict):
        return "rle" if seg.get("counts") is not None else None
    if isinstance(seg, list) and seg and isinstance(seg[0], list):
        return "polygon" if any(len(q) >= 6 and len(q) % 2 == 0 for q in seg) else None
    return None


def _coco_split(path: Path) -> str:
    stem = path.stem.lower()
    for s in ("train", "val", "test"):
        if s in stem:
            return s
    return "train"


def _coco_image(json_path: Path, split: str, file_name: str) -> Path | None:
    base = json_path.parent
    for cand in (
        base / file_name,
        base / "images" / file_name,
        base / "images" / split / file_name,
        base.parent / "images" / file_name,
        base.parent / "images" / split / file_name,
        base.parent / file_name,
    ):
        if cand.is_file():
            return cand
    return None


def load_coco(src: str | Path, decode: bool = False) -> Collection:
    """A COCO JSON file or a folder of them (one per split, split taken from the file name)."""
    src = Path(src).expanduser().resolve()
    files = [src] if src.is_file() else sorted(src.glob("*.json")) or sorted(src.glob("annotations/*.json"))
    if not files:
        raise DataError(f"{src}: no COCO .json file")
    col = Collection("coco", src if src.is_dir() else src.parent, {}, [])
    cat_ids: dict[int, int] = {}
    for jf in files:
        d = read_coco_json(jf)
        for c in d["categories"]:
            if c["id"] not in cat_ids:
                cat_ids[c["id"]] = len(cat_ids)
                col.names[cat_ids[c["id"]]] = str(c.get("name", c["id"]))
        split = _coco_split(jf)
        by_id: dict[int, Item] = {}
        for im in d["images"]:
            p = _coco_image(jf, split, im["file_name"])
            if p is None:
                col.add(jf, None, "error", f"image {im['file_name']!r} (id {im['id']}) not found")
                continue
            w, h = int(im.get("width", 0)), int(im.get("height", 0))
            if decode or not (w and h):
                size = image_size(p, decode)
                if size is None:
                    col.add(_rel(p, col.root), None, "error", "image cannot be decoded")
                    continue
                w, h = size
            by_id[im["id"]] = Item(p, split, w, h, label_file=jf)
        for k, a in enumerate(d["annotations"]):
            item = by_id.get(a.get("image_id"))
            where = f"annotation[{k}] (id {a.get('id')})"
            if item is None:
                col.add(jf, None, "warning", f"{where}: image_id {a.get('image_id')} has no image")
                continue
            if a.get("iscrowd"):
                continue  # crowd regions are not instances (Ultralytics' convert_coco skips them too)
            if a.get("category_id") not in cat_ids:
                col.add(jf, None, "error", f"{where}: unknown category_id {a.get('category_id')}")
                continue
            seg = a.get("segmentation")
            kind = coco_mask_kind(seg)
            col.masks += kind is not None
            if kind == "polygon":
                pts = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in seg if s])
                corners = min_area_box(pts)
            elif a.get("bbox") and len(a["bbox"]) == 4:  # boxes, and RLE masks (their box is the bbox)
                x, y, bw, bh = (float(v) for v in a["bbox"])
                corners = np.array([[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]])
            else:
                col.add(
                    jf,
                    None,
                    "error",
                    f"{where}: no polygon segmentation or bbox (RLE masks need pycocotools)",
                )
                continue
            if polygon_area(corners) <= 1e-6:
                col.add(jf, None, "error", f"{where}: degenerate box")
                continue
            item.objects.append(Obj(cat_ids[a["category_id"]], corners))
        col.items.extend(sorted(by_id.values(), key=lambda it: str(it.image)))
    return col


# --------------------------------------------------------------------------------------------- any


def detect_format(path: str | Path) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist")
    if p.is_file():
        if p.suffix in (".yaml", ".yml"):
            return "yolo-obb"
        if p.suffix == ".json":
            return "coco"
        raise DataError(f"{p}: expected a data.yaml, a COCO .json or a folder")
    if (p / "data.yaml").is_file() or any(
        q.suffix in (".yaml", ".yml") and is_dataset_yaml(q) for q in p.iterdir() if q.is_file()
    ):
        return "yolo-obb"
    if find_dota_dirs(p):
        return "dota"
    if list(p.glob("*.json")) or list(p.glob("annotations/*.json")):
        return "coco"
    raise DataError(f"{p}: no dataset yaml (data.yaml or <name>.yaml), labelTxt folder or COCO .json found")


def load_any(path: str | Path, fmt: str | None = None, decode: bool = False, names: list[str] | None = None):
    fmt = fmt or detect_format(path)
    if fmt in ("yolo", "yolo-obb"):
        return load_yolo(path, decode=decode)
    if fmt == "dota":
        return load_dota(path, names=names, decode=decode)
    if fmt == "coco":
        return load_coco(path, decode=decode)
    raise DataError(f"unknown format {fmt!r} (yolo, dota, coco)")
