"""Run an OBB model on a split, grade it, keep `eval/grades.csv` and decide when to save `best_geo.pt`.

The model is a weights path or an in-memory `nn.Module` (the trainer's EMA model); Ultralytics'
`OBBPredictor` runs it on a deep copy (it fuses Conv+BN), so the training model is never touched.
Ground truth comes from the label files Ultralytics would read (`img2label_paths`); an image without a
label file has no objects, as in Ultralytics.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from dinocache.datatools.formats import LabelLineError, image_size, parse_yolo_line
from dinocache.grade.metrics import Boxes, ImageResult, grade

from dinocache.core.data import DataError, load_data_yaml, split_images

# Columns of eval/grades.csv, in order (epoch is 1-based like results.csv).
GRADE_COLUMNS = ["epoch", "precision", "recall", "f1", "mean_iou", "centre_err", "angle_err", "grade"]


@dataclass
class Sample:
    """One image of the split with its ground truth in pixels."""

    image: Path
    label: Path
    gt: Boxes
    shape: tuple[int, int]  # (h, w) of the displayed image (EXIF orientation applied)

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    samples: list[Sample]
    preds: list[Boxes]  # all predictions the predictor returned (conf >= conf_thr), per sample
    per_image: list[ImageResult] = field(default_factory=list)


def read_obb_labels(label: Path, shape: tuple[int, int], nc: float = math.inf) -> Boxes:
    """Ultralytics OBB label file (`cls x1 y1 .. x4 y4`, normalised) -> Boxes in pixels, read by the one
    label-line parser (datatools.formats.parse_yolo_line).

    A missing file means no objects (Ultralytics' rule); a malformed line is a DataError naming file:line.
    """
    if not label.exists():
        return Boxes.empty()
    h, w = shape
    polys, classes = [], []
    for n, line in enumerate(label.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            c, xy = parse_yolo_line(parts, nc)
        except LabelLineError as e:
            raise DataError(f"{label}:{n}: {e}") from None
        if len(xy) != 4:
            raise DataError(f"{label}:{n}: expected 'cls x1 y1 x2 y2 x3 y3 x4 y4', got {len(parts)} values")
        classes.append(c)
        polys.append(xy * (w, h))
    if not polys:
        return Boxes.empty()
    return Boxes.from_polys(np.stack(polys), classes, None)


def class_names(data: str | Path) -> dict[int, str]:
    """Class id -> name of the dataset (for captions)."""
    names = load_data_yaml(data)["names"]
    return {int(k): str(v) for k, v in (names.items() if isinstance(names, dict) else enumerate(names))}


def load_split(data: str | Path, split: str = "val") -> list[Sample]:
    """Images of `split` (exactly Ultralytics' listing) with their ground truth.

    An empty split is a DataError: a grade over no images would be a meaningless 0.
    """
    from ultralytics.data.utils import img2label_paths

    info = load_data_yaml(data)
    images, nc = split_images(info, split), len(info["names"])
    if not images:
        raise DataError(f"{data}: split '{split}' has no images")
    labels = img2label_paths([str(p) for p in images])
    samples = []
    for img, lab in zip(images, labels):
        # header only; the displayed frame (EXIF orientation applied), the one the labels and the predictor's
        # cv2.imread pixels are in
        size = image_size(img, decode=False)
        if size is None:
            raise DataError(f"{img}: cannot read image")
        w, h = size
        samples.append(Sample(img, Path(lab), read_obb_labels(Path(lab), (h, w), nc), (h, w)))
    return samples


def predict(
    model: Any,
    images: Sequence[Path],
    imgsz: int,
    conf_thr: float,
    device: str = "cpu",
    batch: int = 8,
) -> list[Boxes]:
    """Predictions per image (pixels of the stored image) with conf >= conf_thr.

    `model` is a weights path or an nn.Module; the predictor deep-copies a module before fusing it and
    runs it in fp32 (`half=False`), whatever the precision of the EMA or the checkpoint.
    """
    import torch
    from ultralytics.models.yolo.obb import OBBPredictor

    # Ultralytics keeps scores strictly above `conf`; step just below so conf == conf_thr is kept too.
    pconf = max(math.nextafter(conf_thr, 0.0), 0.0)
    predictor = OBBPredictor(
        overrides={
            "conf": pconf,
            "imgsz": imgsz,
            "device": str(device),
            "batch": batch,
            "verbose": False,
            "save": False,
            "max_det": 300,
        }
    )
    predictor.setup_model(model if isinstance(model, torch.nn.Module) else str(model), verbose=False)
    predictor.done_warmup = (
        True  # warmup is a dummy forward at the default 640 px: seconds on CPU, no use here
    )
    out: list[Boxes] = []
    paths = [str(p) for p in images]
    for start in range(0, len(paths), batch):
        for r in predictor(source=paths[start : start + batch], stream=True):
            obb = r.obb
            if obb is None or len(obb) == 0:
                out.append(Boxes.empty())
                continue
            out.append(
                Boxes.from_polys(
                    obb.xyxyxyxy.cpu().double().numpy(),
                    obb.cls.cpu().numpy(),
                    obb.conf.cpu().double().numpy(),
                )
            )
    if len(out) != len(paths):  # pragma: no cover - the predictor yields one result per image
        raise RuntimeError(f"predictor returned {len(out)} results for {len(paths)} images")
    return out


def evaluate(
    model: Any,
    data: str | Path,
    imgsz: int,
    conf_thr: float = 0.9,
    iou_thr: float = 0.75,
    device: str = "cpu",
    batch: int = 8,
    split: str = "val",
    samples: list[Sample] | None = None,
) -> EvalResult:
    """Predict on `split` and grade. Pass `samples` (from `load_split`) to avoid re-reading labels."""
    samples = samples if samples is not None else load_split(data, split)
    preds = predict(model, [s.image for s in samples], imgsz, conf_thr, device, batch)
    res = grade(preds, [s.gt for s in samples], iou_thr=iou_thr, conf_thr=conf_thr, per_image=True)
    per_image = res.pop("per_image")
    res["imgsz"] = imgsz
    return EvalResult(res, samples, preds, per_image)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class EvalTracker:
    """Appends one row per evaluation to `eval/grades.csv` and follows the best grade.

    A new grade equal to the best counts as better (like Ultralytics' best.pt), so while the grade is
    still 0 best_geo.pt follows the newest weights. Re-evaluating an epoch (after a resume) replaces
    that epoch's row and every later one, and the best is recomputed from what remains.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.csv = self.run_dir / "eval" / "grades.csv"
        self.best_path = self.run_dir / "weights" / "best_geo.pt"
        self.rows = _read_rows(self.csv)
        self.best_grade, self.best_epoch = self._best(self.rows)

    @staticmethod
    def _best(rows: list[dict[str, str]]) -> tuple[float | None, int | None]:
        best_g, best_e = None, None
        for r in rows:
            try:
                g, e = float(r["grade"]), int(r["epoch"])
            except (KeyError, ValueError):
                continue
            if best_g is None or g >= best_g:
                best_g, best_e = g, e
        return best_g, best_e

    def update(
        self, epoch: int, metrics: dict[str, Any], save_best: Callable[[Path], None] | None = None
    ) -> bool:
        """Record `metrics` for `epoch`; when it is the best grade so far call `save_best(best_path)`.

        Returns True when this epoch became the best.
        """
        self.rows = [r for r in self.rows if int(r.get("epoch", 0) or 0) < epoch]
        prev_best, _ = self._best(self.rows)
        row = {k: _fmt(epoch if k == "epoch" else metrics.get(k)) for k in GRADE_COLUMNS}
        self.rows.append(row)
        self.csv.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.csv.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=GRADE_COLUMNS)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.csv)
        g = float(metrics.get("grade") or 0.0)
        improved = prev_best is None or g >= prev_best
        if improved:
            self.best_grade, self.best_epoch = g, epoch
            if save_best is not None:
                self.best_path.parent.mkdir(parents=True, exist_ok=True)
                save_best(self.best_path)
        else:
            self.best_grade, self.best_epoch = self._best(self.rows)
        return improved
