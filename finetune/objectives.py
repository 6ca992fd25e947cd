"""Which dense target the teacher is fine-tuned on, decided by what the annotations contain.

There is no mode switch: the annotation files are read, every instance is classified by its geometry,
and the objective is the set of terms the data can supervise:

- boxes (oriented `cls x1 y1 .. x4 y4` lines, 4-value `cls cx cy w h` lines, COCO `bbox`) ->
  a per-patch class map: soft class fractions of each patch (background = channel 0, class i = i + 1),
  cross-entropy against the head's first C + 1 channels;
- instance masks (YOLO-seg polygons with 3+ points other than 4, COCO `segmentation` polygons or RLE) ->
  per-class mask coverage of each patch, binary cross-entropy against the next C channels;
- both when both exist (a COCO file with bbox + segmentation gives both).

Nothing usable -> `NoUsableAnnotations` listing what was found, so the user sees why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dinocache.datatools.formats import (
    LabelLineError,
    coco_mask_kind,
    label_path,
    parse_yolo_line,
    read_coco_json,
)

from dinocache.core.data import DataError

# Instance kinds; the first two supervise the box term, the last two the mask term.
BOX_KINDS = ("oriented box", "axis box")
MASK_KINDS = ("polygon mask", "rle mask")


class NoUsableAnnotations(DataError):
    """No annotation supports any dense target; the message lists what was found."""


@dataclass
class Instance:
    cls: int
    kind: str  # one of BOX_KINDS + MASK_KINDS
    # (K, 2) xy normalised to [0, 1] of the original image (boxes become 4-point polygons)
    points: np.ndarray | None = None
    # (H0, W0) bool, for RLE masks only
    mask: np.ndarray | None = None


@dataclass
class ImageRecord:
    path: Path
    instances: list[Instance]


@dataclass
class AnnotationSummary:
    """What the annotation files hold: counts per instance kind plus what could not be used."""

    sources: list[str]
    classes: list[str]
    n_images: int = 0
    n_annotated: int = 0
    counts: Counter = field(default_factory=Counter)  # usable kinds
    unusable: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # first few "file:line: problem"

    @property
    def has_boxes(self) -> bool:
        return any(self.counts[k] for k in BOX_KINDS)

    @property
    def has_masks(self) -> bool:
        return any(self.counts[k] for k in MASK_KINDS)

    def note(self, reason: str, where: str) -> None:
        self.unusable[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")

    def describe(self) -> str:
        found = ", ".join(f"{n} {k}" for k, n in self.counts.items() if n) or "no usable instances"
        s = f"{self.n_images} images ({self.n_annotated} with annotations), {found}"
        if self.unusable:
            s += "; unusable: " + ", ".join(f"{n} {r}" for r, n in self.unusable.items())
        if self.examples:
            s += "; e.g. " + "; ".join(self.examples)
        return s

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "classes": self.classes,
            "n_images": self.n_images,
            "n_annotated": self.n_annotated,
            "counts": dict(self.counts),
            "unusable": dict(self.unusable),
        }


@dataclass(frozen=True)
class Objective:
    """The dense terms the data supports. Head channels: [C + 1 box class logits][C mask logits]."""

    boxes: bool
    masks: bool
    num_classes: int

    @property
    def box_channels(self) -> int:
        return self.num_classes + 1 if self.boxes else 0

    @property
    def mask_channels(self) -> int:
        return self.num_classes if self.masks else 0

    @property
    def out_channels(self) -> int:
        return self.box_channels + self.mask_channels

    def describe(self) -> str:
        terms = []
        if self.boxes:
            terms.append(f"box class map ({self.num_classes} classes + background, cross-entropy)")
        if self.masks:
            terms.append(f"mask coverage ({self.num_classes} classes, binary cross-entropy)")
        return " + ".join(terms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "boxes": self.boxes,
            "masks": self.masks,
            "num_classes": self.num_classes,
            "out_channels": self.out_channels,
            "description": self.describe(),
        }


def choose_objective(summary: AnnotationSummary) -> Objective:
    """The data decides: a box term when boxes exist, a mask term when masks exist, both when both."""
    if not (summary.has_boxes or summary.has_masks) or not summary.classes:
        raise NoUsableAnnotations(
            f"no annotations usable for fine-tuning in {', '.join(summary.sources)}: {summary.describe()}. "
            "Need oriented/axis boxes (YOLO label lines, COCO bbox) or instance masks (YOLO-seg polygons, "
            "COCO segmentation)"
        )
    return Objective(boxes=summary.has_boxes, masks=summary.has_masks, num_classes=len(summary.classes))


# ---------------------------------------------------------------- YOLO label files


def yolo_instance(parts: list[str], n_classes: int) -> Instance:
    """One label line (detect `cls cx cy w h`, OBB or segment) -> Instance, through the one label-line parser
    (datatools.formats.parse_yolo_line); corners up to 0.01 outside [0, 1] are clipped (Ultralytics' slack),
    further out is a LabelLineError."""
    c, pts = parse_yolo_line(parts, n_classes, axis_boxes=True, segments=True)  # YOLO-seg: 3+ points
    kind = "axis box" if len(parts) == 5 else "oriented box" if len(pts) == 4 else "polygon mask"
    if pts.min() < -0.01 or pts.max() > 1.01:
        raise LabelLineError("coordinates outside [0, 1]")
    return Instance(c, kind, np.clip(pts, 0.0, 1.0).astype(np.float32))


def _area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def read_yolo_split(
    data_yaml: str | Path, split: str, summary: AnnotationSummary | None = None
) -> tuple[list[ImageRecord], AnnotationSummary]:
    """Images of a split of a YOLO data.yaml (Ultralytics' listing) with their parsed label files."""
    from dinocache.core.data import list_split_images, load_data_yaml

    info = load_data_yaml(data_yaml)
    names = info["names"]
    classes = [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]
    _, images = list_split_images(data_yaml, split)
    s = summary or AnnotationSummary(sources=[str(data_yaml)], classes=classes)
    records = []
    for img in images:
        lab = label_path(img)
        s.n_images += 1
        inst: list[Instance] = []
        if lab.exists():
            for i, line in enumerate(lab.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    ins = yolo_instance(line.split(), len(classes))
                except LabelLineError as e:
                    s.note(str(e), f"{lab}:{i}")
                    continue
                s.counts[ins.kind] += 1
                inst.append(ins)
        s.n_annotated += bool(inst)
        records.append(ImageRecord(img, inst))
    return records, s


# ---------------------------------------------------------------- COCO JSON


def _decode_rle(seg: dict, h: int, w: int) -> np.ndarray | None:
    """COCO RLE -> (h, w) bool; uncompressed counts are decoded here, compressed ones need pycocotools."""
    counts = seg.get("counts")
    if isinstance(counts, list):
        flat = np.zeros(h * w, dtype=bool)
        pos, val = 0, False
        for n in counts:
            flat[pos : pos + int(n)] = val
            pos += int(n)
            val = not val
        return flat.reshape(w, h).T  # COCO RLE runs down columns (Fortran order)
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        return None
    return mask_utils.decode(seg).astype(bool)


def read_coco(
    json_path: str | Path | dict,
    image_dir: str | Path | None = None,
    classes: list[str] | None = None,
) -> tuple[list[ImageRecord], AnnotationSummary]:
    """COCO instances JSON (a file, or its already-loaded dict) -> image records. Categories become classes
    0..C-1 in category-id order (or follow `classes` by name, so train and val agree). Images resolve
    against `image_dir` (default: the JSON's folder; the current folder for a dict)."""
    if isinstance(json_path, dict):
        p, coco = Path("<coco dict>"), json_path
        for key in ("images", "annotations", "categories"):
            if not isinstance(coco.get(key), list):
                raise DataError(f"COCO dict: '{key}' must be a list")
        image_dir = image_dir or "."
    else:
        p = Path(json_path)
        coco = read_coco_json(p)
    cats = coco["categories"]
    if classes is None:
        classes = [str(c["name"]) for c in cats]
    by_name = {n: i for i, n in enumerate(classes)}
    cat_to_cls = {c["id"]: by_name[str(c["name"])] for c in cats if str(c["name"]) in by_name}
    root = Path(image_dir) if image_dir else p.parent
    s = AnnotationSummary(sources=[str(p)], classes=list(classes))
    imgs = {im["id"]: im for im in coco["images"]}
    per_image: dict[Any, list[Instance]] = {i: [] for i in imgs}
    for k, ann in enumerate(coco["annotations"]):
        where = f"{p}: annotations[{k}]"
        im = imgs.get(ann.get("image_id"))
        if im is None:
            s.note("annotation of an unknown image_id", where)
            continue
        if ann.get("category_id") not in cat_to_cls:
            s.note("unknown category_id", where)
            continue
        c = cat_to_cls[ann["category_id"]]
        w0, h0 = float(im["width"]), float(im["height"])
        bbox = ann.get("bbox")
        if isinstance(bbox, list) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0:
            x, y, bw, bh = bbox
            pts = np.array([[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]]) / [w0, h0]
            per_image[im["id"]].append(Instance(c, "axis box", np.clip(pts, 0, 1).astype(np.float32)))
            s.counts["axis box"] += 1
        elif bbox is not None:
            s.note("degenerate bbox", where)
        seg = ann.get("segmentation")
        kind = coco_mask_kind(seg)
        if kind == "polygon":
            n_ok = 0
            for poly in seg:
                if len(poly) >= 6 and len(poly) % 2 == 0:
                    pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2) / [w0, h0]
                    if _area(pts) > 0:
                        per_image[im["id"]].append(
                            Instance(c, "polygon mask", np.clip(pts, 0, 1).astype(np.float32))
                        )
                        n_ok += 1
            if n_ok:
                s.counts["polygon mask"] += 1
            else:
                s.note("segmentation without a valid polygon", where)
        elif kind == "rle":
            m = _decode_rle(seg, int(h0), int(w0))
            if m is None:
                s.note("compressed RLE segmentation (install pycocotools to use it)", where)
            elif m.any():
                per_image[im["id"]].append(Instance(c, "rle mask", mask=m))
                s.counts["rle mask"] += 1
            else:
                s.note("empty RLE segmentation", where)
        elif isinstance(seg, list) and seg:
            s.note("segmentation without a valid polygon", where)
    records = []
    for iid, im in imgs.items():
        s.n_images += 1
        s.n_annotated += bool(per_image[iid])
        records.append(ImageRecord((root / im["file_name"]).resolve(), per_image[iid]))
    return records, s


# ---------------------------------------------------------------- loss and metrics


def dense_loss(
    logits: torch.Tensor,
    box_target: torch.Tensor | None,
    mask_target: torch.Tensor | None,
    objective: Objective,
    box_weight: float = 1.0,
    mask_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """logits (B, out_channels, h, w); box_target (B, C+1, h, w) soft class fractions;
    mask_target (B, C, h, w) coverage in [0, 1]. Returns {"loss", "box", "mask"} (fp32)."""
    logits = logits.float()
    zero = logits.new_zeros(())
    out = {"box": zero, "mask": zero}
    nb = objective.box_channels
    if objective.boxes and box_target is not None:
        out["box"] = F.cross_entropy(logits[:, :nb], box_target.float())  # soft targets: probabilities
    if objective.masks and mask_target is not None:
        out["mask"] = F.binary_cross_entropy_with_logits(logits[:, nb:], mask_target.float())
    out["loss"] = box_weight * out["box"] + mask_weight * out["mask"]
    return out


class IoUMeter:
    """Accumulates intersections/unions over a validation pass; mIoU over classes that occur."""

    def __init__(self, objective: Objective) -> None:
        self.obj = objective
        self.box_inter = torch.zeros(objective.box_channels, dtype=torch.float64)
        self.box_union = torch.zeros_like(self.box_inter)
        self.mask_inter = torch.zeros(objective.mask_channels, dtype=torch.float64)
        self.mask_union = torch.zeros_like(self.mask_inter)

    @torch.no_grad()
    def update(
        self, logits: torch.Tensor, box_target: torch.Tensor | None, mask_target: torch.Tensor | None
    ) -> None:
        logits = logits.float().cpu()
        nb = self.obj.box_channels
        if self.obj.boxes and box_target is not None:
            pred = logits[:, :nb].argmax(1)  # (B, h, w)
            true = box_target.cpu().argmax(1)
            for c in range(nb):
                p, t = pred == c, true == c
                self.box_inter[c] += (p & t).sum()
                self.box_union[c] += (p | t).sum()
        if self.obj.masks and mask_target is not None:
            p = logits[:, nb:] > 0  # (B, C, h, w)
            t = mask_target.cpu() >= 0.5
            self.mask_inter += (p & t).sum((0, 2, 3)).double()
            self.mask_union += (p | t).sum((0, 2, 3)).double()

    @staticmethod
    def _miou(inter: torch.Tensor, union: torch.Tensor) -> float | None:
        seen = union > 0
        return float((inter[seen] / union[seen]).mean()) if seen.any() else None

    def compute(self) -> dict[str, float]:
        out = {}
        if self.obj.boxes and (v := self._miou(self.box_inter, self.box_union)) is not None:
            out["box_miou"] = v
        if self.obj.masks and (v := self._miou(self.mask_inter, self.mask_union)) is not None:
            out["mask_miou"] = v
        out["miou"] = float(np.mean(list(out.values()))) if out else 0.0
        return out
