"""Eval overlays: ground truth (green) and predictions (red) drawn on val images, plus a panel with both.

Layout, for an evaluation at 1-based epoch N (`eval_dir(run_dir, N)`):

    eval/epoch_{NNN}/viz/val/{stem}_gt.jpg      ground truth only, green
    eval/epoch_{NNN}/viz/val/{stem}_pred.jpg    graded predictions (conf >= threshold) only, red
    eval/epoch_{NNN}/viz/val/{stem}_panel.jpg   both, numbered, with a legend listing each prediction's IoU
    eval/epoch_{NNN}/viz/val/index.json         thresholds, split metrics, one entry per drawn sample and
                                                `representative`: the panel whose per-image F1 is nearest
                                                the median of the drawn ones (what to open first)

Small images are scaled up (long side >= `MIN_DISPLAY` px) so the boxes and the legend stay readable.
The first `max_samples` images of the split (sorted like Ultralytics lists them) are drawn, so the same
images appear at every epoch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from dinocache.grade.metrics import Boxes, ImageResult

GREEN = (0, 200, 0)  # BGR
RED = (0, 0, 255)
MIN_DISPLAY = 512
LEGEND_LINES = 12  # per-prediction lines shown in the panel legend; the rest is summarised


def eval_dir(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / "eval" / f"epoch_{epoch:03d}" / "viz" / "val"


def _scale(shape: tuple[int, int]) -> float:
    return max(1.0, MIN_DISPLAY / max(shape))


def _draw(
    img: np.ndarray, boxes: Boxes, idx: Sequence[int], color: tuple[int, int, int], s: float, tag: str
) -> None:
    t = max(1, round(s))
    for i in idx:
        pts = np.round(boxes.poly[i] * s).astype(np.int32)
        cv2.polylines(img, [pts], isClosed=True, color=color, thickness=t + 1, lineType=cv2.LINE_AA)
        # ground-truth tags above the box, prediction tags below it, so both stay readable in the panel
        x = int(pts[:, 0].min())
        y = (
            max(12, int(pts[:, 1].min()) - 3)
            if tag == "g"
            else min(img.shape[0] - 3, int(pts[:, 1].max()) + 14)
        )
        cv2.putText(img, f"{tag}{i}", (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)


def _legend(width: int, lines: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    lh = 18
    strip = np.full((lh * len(lines) + 8, width, 3), 255, np.uint8)
    for k, (text, color) in enumerate(lines):
        cv2.putText(strip, text, (6, lh * (k + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return strip


def _write(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def class_name(names: dict[int, str] | None, c: int) -> str:
    return (names or {}).get(c, f"cls {c}")


def caption(
    i: int, gt: Boxes, pred: Boxes, res: ImageResult, names: dict[int, str] | None, iou_thr: float
) -> str:
    """One legend line for kept prediction `i`: its class name and confidence, then what it matched, or why
    not, with its best IoU against any ground-truth box (another class's box says "wrong class")."""
    head = f"p{i} {class_name(names, int(pred.cls[i]))} {pred.conf[i]:.2f}"
    m = next((m for m in res.matches if m.pred == i), None)
    if m is not None:
        return f"{head} -> g{m.gt} IoU {m.iou:.2f}"
    best, g = res.best_iou.get(i, 0.0), res.best_gt.get(i)
    if g is None or best <= 0.0:
        return f"{head} unmatched (no ground truth overlaps)"
    on = f"best IoU {best:.2f} with g{g}"
    if int(gt.cls[g]) != int(pred.cls[i]):
        return f"{head} wrong class ({on}, a {class_name(names, int(gt.cls[g]))})"
    if best >= iou_thr:
        return f"{head} unmatched ({on}, taken by a more confident prediction)"
    return f"{head} unmatched ({on} < {iou_thr:g})"


def image_f1(res: ImageResult) -> float:
    """Per-image F1 = 2 TP / (2 TP + FP + FN); 1 for an image with nothing to find and nothing predicted."""
    d = 2 * res.tp + res.fp + res.fn
    return 2 * res.tp / d if d else 1.0


def representative(entries: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The entry whose F1 is nearest the median of all (the first such): a panel that shows what the model
    typically does, not the first image's luck."""
    if not entries:
        return None
    med = float(np.median([e["f1"] for e in entries]))
    return min(entries, key=lambda e: abs(e["f1"] - med))


def draw_sample(
    out_dir: Path,
    stem: str,
    image: np.ndarray,
    gt: Boxes,
    pred: Boxes,
    res: ImageResult,
    names: dict[int, str] | None = None,
    iou_thr: float = 0.5,
) -> dict[str, Any]:
    """Write the three JPEGs of one sample; returns its index.json entry."""
    s = _scale(image.shape[:2])
    base = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR) if s != 1 else image.copy()
    gidx, pidx = list(range(len(gt))), list(res.kept)
    g_img, p_img, panel = base.copy(), base.copy(), base.copy()
    _draw(g_img, gt, gidx, GREEN, s, "g")
    _draw(p_img, pred, pidx, RED, s, "p")
    _draw(panel, gt, gidx, GREEN, s, "g")
    _draw(panel, pred, pidx, RED, s, "p")
    lines: list[tuple[str, tuple[int, int, int]]] = [
        (f"{stem}  GT (green): {len(gt)}  pred (red): {len(pidx)}", (0, 0, 0)),
        (f"TP {res.tp}  FP {res.fp}  FN {res.fn}  F1 {image_f1(res):.2f}", (0, 0, 0)),
    ]
    for i in pidx[:LEGEND_LINES]:
        lines.append((caption(i, gt, pred, res, names, iou_thr), RED))
    if len(pidx) > LEGEND_LINES:
        lines.append((f"... {len(pidx) - LEGEND_LINES} more predictions", RED))
    panel = np.vstack([panel, _legend(panel.shape[1], lines)])
    files = {"gt": f"{stem}_gt.jpg", "pred": f"{stem}_pred.jpg", "panel": f"{stem}_panel.jpg"}
    _write(out_dir / files["gt"], g_img)
    _write(out_dir / files["pred"], p_img)
    _write(out_dir / files["panel"], panel)
    return {
        "stem": stem,
        "files": files,
        "n_gt": len(gt),
        "n_pred": len(pidx),
        "tp": res.tp,
        "fp": res.fp,
        "fn": res.fn,
        "f1": image_f1(res),
        "captions": [caption(i, gt, pred, res, names, iou_thr) for i in pidx],
        "ious": [m.iou for m in res.matches],
        "matches": [m.__dict__ for m in res.matches],
    }


def write_overlays(
    out_dir: str | Path,
    images: Sequence[str | Path],
    gts: Sequence[Boxes],
    preds: Sequence[Boxes],
    results: Sequence[ImageResult],
    metrics: dict[str, Any],
    max_samples: int = 16,
    epoch: int | None = None,
    names: dict[int, str] | None = None,
) -> Path:
    """Draw the first `max_samples` images and write `index.json`; returns the folder. `names` (class id ->
    name) labels the captions; the IoU threshold is `metrics["iou_threshold"]`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for img_path, gt, pred, res in list(zip(images, gts, preds, results))[: max(0, max_samples)]:
        img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"could not read image {img_path}")
        iou_thr = float(metrics.get("iou_threshold", 0.5))
        e = draw_sample(out, Path(img_path).stem, img, gt, pred, res, names, iou_thr)
        e["image"] = str(img_path)
        entries.append(e)
    index = {
        "epoch": epoch,
        "metrics": {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
        "n_images": len(images),
        "max_samples": max_samples,
        "samples": entries,
        "representative": (rep := representative(entries)) and rep["files"]["panel"],
    }
    tmp = out / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    tmp.replace(out / "index.json")
    return out
