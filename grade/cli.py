"""`dinocache grade`: the geometric grade of a checkpoint on a split, the numbers of the periodic evaluation.

    dinocache grade --weights runs/.../weights/best_geo.pt --data dataset/data.yaml [--conf 0.9 --iou 0.75]
                    [--imgsz N] [--device cpu] [--split val] [--viz DIR] [--json]

`--imgsz` defaults to the checkpoint's training imgsz (640 when it has none), so the grade matches the
one the trainer logged for the same weights. `--json` prints one JSON object; `--viz DIR` also writes the
eval overlays (`*_gt.jpg`, `*_pred.jpg`, `*_panel.jpg`, `index.json`) into DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from dinocache.core.config import Config, ConfigError, build, rule
from dinocache.core.data import DataError
from dinocache.core.errors import DinocacheError
from dinocache.core.logs import logs_to_stderr

DEFAULT_IMGSZ = 640


@dataclass
class GradeConfig(Config):
    # checkpoint to grade (.pt written by Ultralytics or dinocache train)
    weights: Annotated[str, rule(bool, "give the checkpoint to grade (--weights W)")] = ""
    # YOLO-OBB data.yaml (absolute or relative to the working directory)
    data: Annotated[str, rule(bool, "give the dataset (--data DATA)")] = ""
    # keep predictions with confidence >= conf
    conf: Annotated[float, Field(ge=0, le=1)] = 0.9
    # a prediction matches a ground-truth box of its class when their polygon IoU >= iou
    iou: Annotated[float, Field(gt=0, le=1)] = 0.75
    # inference size; 0 = the checkpoint's training imgsz (else 640)
    imgsz: Annotated[
        int, rule(lambda v: v == 0 or (v >= 32 and v % 32 == 0), "must be 0 or a multiple of 32, got {value}")
    ] = 0
    # "auto" (first CUDA GPU, else CPU), "cpu", "0", "cuda:0", ...
    device: str = "auto"
    # images per predictor batch
    batch: Annotated[int, Field(ge=1)] = 8
    # split of data.yaml to grade
    split: str = "val"
    # folder for eval overlays; empty = none
    viz: str = ""
    # at most this many images drawn into `viz`
    viz_max_samples: Annotated[int, Field(ge=0)] = 16


class WeightsError(DinocacheError, ValueError):
    """The checkpoint is missing or cannot be loaded; the message names the file."""


def checkpoint_imgsz(weights: str | Path) -> int | None:
    """The training imgsz stored in an Ultralytics checkpoint (`train_args`), or None."""
    from dinocache.core.safeload import UnsafeFile, load_ultralytics_checkpoint

    try:
        # Ultralytics' restricted loader before anything else reads the file: prediction then only meets
        # vetted model classes (its default loader would unpickle whatever the file holds)
        ckpt = load_ultralytics_checkpoint(weights)
    except UnsafeFile as e:
        raise WeightsError(str(e)) from None
    if ckpt.get("model") is None and ckpt.get("ema") is None:
        hint = ""
        if Path(weights).name == "resume.pt":
            hint = (
                f"; resume.pt is the training state, grade {Path(weights).with_name('best.pt')} (or last.pt)"
            )
        raise WeightsError(f"{weights}: holds no model (keys: {', '.join(map(str, ckpt)) or 'none'}){hint}")
    args = ckpt.get("train_args")
    v = (args or {}).get("imgsz")
    if isinstance(v, (list, tuple)):
        v = max(v)
    return int(v) if isinstance(v, (int, float)) and v > 0 else None


def run_grade(cfg: GradeConfig) -> dict[str, Any]:
    """Grade `cfg.weights`; returns the metrics dict printed by the CLI."""
    from dinocache.grade.evaluate import class_names, evaluate, load_split
    from dinocache.grade.overlays import write_overlays

    w = Path(cfg.weights).expanduser()
    if not w.is_file():
        raise WeightsError(f"weights file {w} does not exist")
    saved = checkpoint_imgsz(w)  # always: it is also the restricted load that vets the file
    imgsz = cfg.imgsz or saved or DEFAULT_IMGSZ
    samples = load_split(cfg.data, cfg.split)
    device = "" if cfg.device == "auto" else cfg.device  # "" = Ultralytics' own pick (CUDA if available)
    try:
        res = evaluate(w.resolve(), cfg.data, imgsz, cfg.conf, cfg.iou, device, cfg.batch, cfg.split, samples)
    except (DataError, ConfigError):
        raise
    except Exception as e:
        raise WeightsError(f"{w}: prediction failed ({type(e).__name__}: {e})") from e
    out = {
        "weights": str(w.resolve()),
        "data": str(Path(cfg.data).resolve()),
        "split": cfg.split,
        **res.metrics,
    }
    if cfg.viz:
        write_overlays(
            cfg.viz,
            [s.image for s in samples],
            [s.gt for s in samples],
            res.preds,
            res.per_image,
            res.metrics,
            cfg.viz_max_samples,
            names=class_names(cfg.data),
        )
        out["viz"] = str(Path(cfg.viz).resolve())
    return out


def _human(m: dict[str, Any]) -> str:
    def f(v: Any, unit: str = "") -> str:
        return "-" if v is None else f"{v:.4f}{unit}"

    return (
        f"grade (F1) {m['grade']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}\n"
        f"TP {m['tp']}  FP {m['fp']}  FN {m['fn']}  over {m['images']} images ({m['gt']} ground-truth boxes)\n"
        f"matched: mean IoU {f(m['mean_iou'])}  centre error {f(m['centre_err'], ' px')}  "
        f"angle error {f(m['angle_err'], ' deg')}\n"
        f"(conf >= {m['conf_threshold']}, IoU >= {m['iou_threshold']}, imgsz {m['imgsz']})"
    )


def main(argv: list[str] | None = None) -> int:
    """dinocache grade --weights W --data DATA [--conf 0.9 --iou 0.75 --imgsz N --device cpu --json]"""
    ap = argparse.ArgumentParser(prog="dinocache grade", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="checkpoint to grade")
    ap.add_argument("--data", required=True, help="YOLO-OBB data.yaml")
    ap.add_argument("--conf", type=float, default=GradeConfig.conf, help="confidence threshold (default 0.9)")
    ap.add_argument("--iou", type=float, default=GradeConfig.iou, help="IoU threshold (default 0.75)")
    ap.add_argument("--imgsz", type=int, default=0, help="inference size (default: the checkpoint's)")
    ap.add_argument("--device", default=GradeConfig.device, help="auto, cpu, 0, cuda:0, ...")
    ap.add_argument("--batch", type=int, default=GradeConfig.batch, help="predictor batch size")
    ap.add_argument("--split", default=GradeConfig.split, help="data.yaml split (default val)")
    ap.add_argument("--viz", default="", help="also write eval overlays into this folder")
    ap.add_argument("--viz-max-samples", type=int, default=GradeConfig.viz_max_samples)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "json"}
    try:
        cfg = build(GradeConfig, values, "command line")
        # --json: stdout is the JSON document alone, every log line goes to stderr
        with logs_to_stderr() if args.json else contextlib.nullcontext():
            out = run_grade(cfg)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # pragma: no cover - unexpected failure
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2) if args.json else _human(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
