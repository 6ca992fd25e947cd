"""Ultralytics training of the YOLO26-n OBB student, plain or with Ultralytics' own knowledge distillation
(`distill_model=`, a YOLO teacher run online every step), timed per epoch.

    python -m benchmarks.scenarios.peer_ultralytics_kd --out r.json --mode kd --data /abs/data.yaml \
        --workdir /tmp/w --teacher yolo26s-obb.yaml --imgsz 256 --batch 8 --epochs 2 --warmup-epochs 1

`--teacher` is a `.pt` or a model `.yaml`; a yaml is built with random weights (no download) and saved
as `WORKDIR/teacher.pt` first, because `distill_model=` takes a checkpoint path. Random weights cost the
same compute as trained ones, which is all a timing needs.

Writes JSON: tool, mode, label, epoch_s, per_image_s, images_per_epoch, measured_epochs, all_epoch_s,
cuda_max_allocated_mib (None on CPU), import_rss_mib, device, wall_s. The harness adds peak_rss_mib.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

from benchmarks.scenarios import EpochClock
from benchmarks.scenarios.common import cuda_peak_mib, write
from dinocache.core.memory import rss_mib


def build_teacher(spec: str, workdir: Path) -> str:
    """A `.pt` path is used as is; a `.yaml` becomes a randomly initialised checkpoint in `workdir`."""
    if not spec.endswith((".yaml", ".yml")):
        if not Path(spec).is_file():
            raise SystemExit(f"error: teacher checkpoint {spec} does not exist")
        return spec
    from ultralytics import YOLO

    out = workdir / "teacher.pt"
    teacher = YOLO(spec)
    teacher.save(out)
    del teacher
    gc.collect()
    return str(out)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.scenarios.peer_ultralytics_kd --out r.json --mode plain|kd --data D --workdir W`"""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=["plain", "kd"], required=True)
    ap.add_argument("--data", required=True, help="absolute data.yaml")
    ap.add_argument("--workdir", required=True, help="run folder (teacher.pt, Ultralytics run dir)")
    ap.add_argument("--student", default="yolo26n-obb.yaml")
    ap.add_argument("--teacher", default="yolo26s-obb.yaml", help=".pt, or a yaml built with random weights")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--warmup-epochs", type=int, default=1, help="epochs excluded from the timing")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | 0")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    import torch
    from ultralytics import YOLO

    import_rss = rss_mib()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = args.device
    if device == "auto":
        device = "0" if torch.cuda.is_available() else "cpu"

    extra = {}
    if args.mode == "kd":
        extra["distill_model"] = build_teacher(args.teacher, workdir)

    clock = EpochClock(warmup_epochs=args.warmup_epochs)

    def on_epoch_start(trainer) -> None:
        clock.start()
        # Ultralytics keeps the last partial batch (no drop_last): an epoch is the whole train split.
        clock.batch(len(trainer.train_loader.dataset))

    def on_epoch_end(trainer) -> None:
        clock.end()

    model = YOLO(args.student)
    model.add_callback("on_train_epoch_start", on_epoch_start)
    model.add_callback("on_train_epoch_end", on_epoch_end)
    model.train(
        data=args.data,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=device,
        workers=args.workers,
        # one optimizer step per batch and no LR warm-up, so every measured step is a full training step
        nbs=args.batch,
        warmup_epochs=0,
        plots=False,
        val=False,
        project=str(workdir),
        name=args.mode,
        exist_ok=True,
        seed=0,
        verbose=False,
        **extra,
    )
    doc = {
        "tool": "ultralytics",
        "mode": args.mode,
        "label": "ultralytics KD (yolo26s teacher)" if args.mode == "kd" else "ultralytics plain",
        "student": args.student,
        "teacher": args.teacher if args.mode == "kd" else None,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs,
        **clock.summary(),
        "cuda_max_allocated_mib": cuda_peak_mib(),
        "import_rss_mib": import_rss,
        "device": device,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    write(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
