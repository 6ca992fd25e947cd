"""The geometric grade: one-to-one matching of oriented boxes by rotated-polygon IoU, then P/R/F1.

Pure numpy + shapely, no model: `grade(preds, gts, iou_thr, conf_thr)` takes per-image box sets and
returns totals over the whole split (micro-averaged: every box counts once, whatever its image).

Rules (docs/eval.md explains why):
- predictions with `conf >= conf_thr` are kept, the rest ignored;
- matching is greedy by confidence, per image: predictions in descending confidence each take the
  still-unmatched ground-truth box of the same class with the highest IoU, if that IoU >= iou_thr
  (the COCO/Ultralytics rule; scipy's Hungarian is not a dependency). With iou_thr > 0.5 a prediction
  can reach the threshold with at most one of several non-overlapping boxes, so greedy and optimal
  assignment can differ only where ground-truth boxes overlap each other;
- TP = matches, FP = kept predictions left unmatched (duplicates included), FN = unmatched ground truth;
- precision = TP / (TP + FP), recall = TP / (TP + FN), grade = F1 = 2PR / (P + R); each is 0 when its
  denominator is 0, so empty input or no prediction above the threshold gives grade 0;
- mean IoU, centre error (px) and angle error (deg) are averaged over matches; None when there are none;
- the angle error is taken modulo the box symmetry: 180 deg for a rectangle, 90 deg when the ground-truth
  box is square (short/long side >= 1 - square_tol).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from shapely import Polygon, area, intersection, make_valid, union

# Relative side difference under which a box counts as square (its angle then has period 90 deg).
SQUARE_TOL = 0.05


@dataclass
class Boxes:
    """Oriented boxes of one image in pixels: corners (N, 4, 2), class ids (N,), confidences (N,)."""

    poly: np.ndarray
    cls: np.ndarray
    conf: np.ndarray

    def __len__(self) -> int:
        return len(self.cls)

    @classmethod
    def empty(cls) -> Boxes:
        return cls(np.zeros((0, 4, 2)), np.zeros(0, dtype=np.int64), np.zeros(0))

    @classmethod
    def from_xywhr(cls, xywhr: Any, classes: Any = None, conf: Any = None) -> Boxes:
        """`xywhr` (N, 5): centre x, y, width, height (px) and rotation (radians)."""
        from ultralytics.utils.ops import xywhr2xyxyxyxy

        xywhr = np.asarray(xywhr, dtype=np.float64).reshape(-1, 5)
        poly = xywhr2xyxyxyxy(xywhr) if len(xywhr) else np.zeros((0, 4, 2))
        return cls.from_polys(poly, classes, conf)

    @classmethod
    def from_polys(cls, poly: Any, classes: Any = None, conf: Any = None) -> Boxes:
        """`poly` (N, 4, 2) or (N, 8) corners in pixels; classes default to 0 and conf to 1."""
        poly = np.asarray(poly, dtype=np.float64).reshape(-1, 4, 2)
        n = len(poly)
        c = (
            np.zeros(n, dtype=np.int64)
            if classes is None
            else np.asarray(classes).reshape(-1).astype(np.int64)
        )
        s = np.ones(n) if conf is None else np.asarray(conf, dtype=np.float64).reshape(-1)
        if len(c) != n or len(s) != n:
            raise ValueError(f"boxes: {n} polygons but {len(c)} classes and {len(s)} confidences")
        return cls(poly, c, s)


def as_boxes(x: Boxes | Mapping[str, Any] | None) -> Boxes:
    """Accept `Boxes`, None, or a mapping with `poly` (N,4,2)/(N,8) or `xywhr` (N,5) plus `cls`/`conf`."""
    if x is None:
        return Boxes.empty()
    if isinstance(x, Boxes):
        return x
    if "poly" in x:
        return Boxes.from_polys(x["poly"], x.get("cls"), x.get("conf"))
    if "xywhr" in x:
        return Boxes.from_xywhr(x["xywhr"], x.get("cls"), x.get("conf"))
    raise ValueError(f"boxes: expected keys 'poly' or 'xywhr', got {sorted(x)}")


def _shapes(poly: np.ndarray) -> np.ndarray:
    # make_valid turns a self-crossing (bow-tie) corner order into a valid geometry instead of raising.
    return np.array([make_valid(Polygon(p)) for p in poly], dtype=object)


def polygon_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (Na, Nb) of polygons a (Na, 4, 2) and b (Nb, 4, 2), exact (shapely)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    sa, sb = _shapes(a), _shapes(b)
    inter = area(intersection(sa[:, None], sb[None, :]))
    uni = area(union(sa[:, None], sb[None, :]))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(uni > 0, inter / uni, 0.0)
    return iou


def canonical_xywhr(poly: np.ndarray) -> np.ndarray:
    """(N, 4, 2) -> (N, 5) with w the long side and r in radians (Ultralytics' minAreaRect convention)."""
    from ultralytics.utils.ops import xyxyxyxy2xywhr

    if len(poly) == 0:
        return np.zeros((0, 5))
    return np.asarray(xyxyxyxy2xywhr(np.asarray(poly, dtype=np.float64)), dtype=np.float64).reshape(-1, 5)


def angle_error_deg(pred_r: float, gt_r: float, period_deg: float) -> float:
    """Smallest absolute difference of two angles (radians) modulo `period_deg`, in degrees."""
    d = abs(math.degrees(pred_r - gt_r)) % period_deg
    return min(d, period_deg - d)


def symmetry_period(gt_w: float, gt_h: float, square_tol: float = SQUARE_TOL) -> float:
    """180 deg for a rectangle, 90 deg when the box is square within `square_tol`."""
    long, short = max(gt_w, gt_h), min(gt_w, gt_h)
    return 90.0 if long <= 0 or short >= (1.0 - square_tol) * long else 180.0


@dataclass
class Match:
    pred: int  # index into the image's predictions (all of them, before the conf filter)
    gt: int  # index into the image's ground truth
    iou: float
    centre_err: float  # px
    angle_err: float  # deg, modulo the box symmetry


@dataclass
class ImageResult:
    """Matching of one image; indices refer to the image's own prediction / ground-truth lists."""

    n_gt: int
    kept: list[int]  # predictions with conf >= conf_thr, in descending confidence
    matches: list[Match] = field(default_factory=list)
    # kept pred -> its best IoU with any ground-truth box, of any class (what a panel caption shows: a box on
    # an object of another class is "wrong class", not "IoU 0")
    best_iou: dict[int, float] = field(default_factory=dict)
    best_gt: dict[int, int] = field(default_factory=dict)  # kept pred -> the GT index of that best IoU

    @property
    def tp(self) -> int:
        return len(self.matches)

    @property
    def fp(self) -> int:
        return len(self.kept) - len(self.matches)

    @property
    def fn(self) -> int:
        return self.n_gt - len(self.matches)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_gt": self.n_gt,
            "n_pred": len(self.kept),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "matches": [m.__dict__ for m in self.matches],
            "pred_best_iou": {str(k): v for k, v in self.best_iou.items()},
            "pred_best_gt": {str(k): v for k, v in self.best_gt.items()},
        }


def match_image(
    pred: Boxes, gt: Boxes, iou_thr: float, conf_thr: float, square_tol: float = SQUARE_TOL
) -> ImageResult:
    """Greedy one-to-one matching of one image (see the module docstring for the rule)."""
    keep = np.flatnonzero(pred.conf >= conf_thr)
    # Stable sort keeps the input order among equal confidences, so results are deterministic.
    keep = keep[np.argsort(-pred.conf[keep], kind="stable")]
    res = ImageResult(n_gt=len(gt), kept=[int(i) for i in keep])
    if len(keep) == 0 or len(gt) == 0:
        res.best_iou = {int(i): 0.0 for i in keep}
        return res
    iou_any = polygon_iou(pred.poly[keep], gt.poly)  # (K, G), any class
    iou = np.where(pred.cls[keep][:, None] == gt.cls[None, :], iou_any, 0.0)  # (K, G), same class only
    pxywhr, gxywhr = canonical_xywhr(pred.poly[keep]), canonical_xywhr(gt.poly)
    taken = np.zeros(len(gt), dtype=bool)
    for k, pi in enumerate(keep):
        res.best_gt[int(pi)] = int(iou_any[k].argmax())
        res.best_iou[int(pi)] = float(iou_any[k].max())
        cand = np.where(taken, -1.0, iou[k])
        g = int(cand.argmax())
        if cand[g] <= 0.0 or cand[g] < iou_thr:
            continue
        taken[g] = True
        centre = float(np.hypot(*(pred.poly[pi].mean(0) - gt.poly[g].mean(0))))
        period = symmetry_period(gxywhr[g, 2], gxywhr[g, 3], square_tol)
        ang = angle_error_deg(pxywhr[k, 4], gxywhr[g, 4], period)
        res.matches.append(Match(int(pi), g, float(iou[k, g]), centre, ang))
    return res


def summarise(results: Sequence[ImageResult]) -> dict[str, Any]:
    """Totals over images -> precision, recall, f1 (= grade), mean IoU / centre / angle error of matches."""
    tp = sum(r.tp for r in results)
    fp = sum(r.fp for r in results)
    fn = sum(r.fn for r in results)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    ms = [m for res in results for m in res.matches]

    def mean(vals: list[float]) -> float | None:
        return float(np.mean(vals)) if vals else None

    return {
        "images": len(results),
        "gt": tp + fn,
        "pred": tp + fp,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": p,
        "recall": r,
        "f1": f1,
        "mean_iou": mean([m.iou for m in ms]),
        "centre_err": mean([m.centre_err for m in ms]),
        "angle_err": mean([m.angle_err for m in ms]),
        "grade": f1,
    }


def grade(
    preds: Sequence[Boxes | Mapping[str, Any] | None],
    gts: Sequence[Boxes | Mapping[str, Any] | None],
    iou_thr: float = 0.75,
    conf_thr: float = 0.9,
    square_tol: float = SQUARE_TOL,
    per_image: bool = False,
) -> dict[str, Any]:
    """Grade per-image predictions against per-image ground truth (same order, same length).

    Returns the `summarise` dict; with `per_image=True` also `"per_image": [ImageResult, ...]`.
    """
    if len(preds) != len(gts):
        raise ValueError(f"grade: {len(preds)} prediction sets for {len(gts)} images")
    results = [
        match_image(as_boxes(p), as_boxes(g), iou_thr, conf_thr, square_tol) for p, g in zip(preds, gts)
    ]
    out = summarise(results)
    out["iou_threshold"] = iou_thr
    out["conf_threshold"] = conf_thr
    if per_image:
        out["per_image"] = results
    return out
