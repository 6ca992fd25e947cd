"""LightlyTrain `distillation` (DINOv3 teacher run online every step) into the YOLO26-n OBB student's
backbone, offline, timed per epoch.

    python -m benchmarks.scenarios.peer_lightly --out r.json --data /abs/data.yaml --workdir /tmp/w \
        --teacher dinov3/vitb16-notpretrained --imgsz 256 --batch 8 --epochs 2 --warmup-epochs 1

Offline: the `-notpretrained` teacher names build the DINOv3 architecture with random weights and never
download (random weights cost the same compute as trained ones). `--teacher-weights FILE` loads a local
state_dict into it instead, still without a download. Usage analytics are switched off
(LIGHTLY_TRAIN_EVENTS_DISABLED=1) and LightlyTrain's caches go under WORKDIR.

Images: the `train` split of the data.yaml, listed exactly as Ultralytics lists it; labels are unused
(LightlyTrain pretrains label-free). The view size is `--imgsz` so every tool sees the same pixels.

Writes JSON: tool, label, epoch_s, per_image_s, images_per_epoch, measured_epochs, all_epoch_s,
cuda_max_allocated_mib (None on CPU), import_rss_mib, device, wall_s, lightly_train version.
The harness adds peak_rss_mib. Exits 3 with a message when lightly-train is not installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.scenarios import EpochClock
from benchmarks.scenarios.common import cuda_peak_mib, write
from dinocache.core.memory import rss_mib

MISSING_EXIT = 3  # the peer is not installed: the test turns this into a skip, not a failure


def _offline_env(workdir: Path) -> None:
    # Must be set before lightly_train is imported: its Env values are read at import/first use.
    os.environ["LIGHTLY_TRAIN_EVENTS_DISABLED"] = "1"
    os.environ.setdefault("LIGHTLY_TRAIN_CACHE_DIR", str(workdir / "lightly_cache"))
    os.environ.setdefault("LIGHTLY_TRAIN_MODEL_CACHE_DIR", str(workdir / "lightly_cache" / "weights"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _install_epoch_clock(clock: EpochClock) -> None:
    """Add a Lightning callback to the list LightlyTrain builds, so our clock sees each epoch and batch.

    LightlyTrain's `pretrain` has no hook for arbitrary callbacks; it builds them in
    `callback_helpers.get_callbacks`, which `train.py` calls through the module attribute.
    Inserted first so the epoch end is stamped before checkpoint saving (Lightning runs checkpoint
    callbacks last), matching the Ultralytics timing, whose checkpoint save follows its epoch-end hook.
    """
    from lightly_train._callbacks import callback_helpers
    from pytorch_lightning import Callback

    class _Clock(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.batch(len(batch["views"][0]))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            clock.end()

    orig = callback_helpers.get_callbacks

    def get_callbacks(*a, **kw):
        return [_Clock(), *orig(*a, **kw)]

    callback_helpers.get_callbacks = get_callbacks


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.scenarios.peer_lightly --out r.json --data D --workdir W`"""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", required=True, help="absolute data.yaml; its train split is used")
    ap.add_argument("--workdir", required=True, help="LightlyTrain output folder and caches")
    ap.add_argument("--student", default="ultralytics/yolo26n-obb.yaml")
    ap.add_argument("--teacher", default="dinov3/vitb16-notpretrained")
    ap.add_argument("--teacher-weights", default=None, help="optional local state_dict for the teacher")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--warmup-epochs", type=int, default=1, help="epochs excluded from the timing")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | gpu")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _offline_env(workdir)
    try:
        import lightly_train
    except ImportError as e:
        print(f"lightly-train is not installed ({e}); pip install -e '.[bench-peers]'", file=sys.stderr)
        return MISSING_EXIT
    import torch

    from dinocache.core.data import list_split_images

    import_rss = rss_mib()
    _, images = list_split_images(args.data, "train")
    if len(images) < args.batch:
        # LightlyTrain drops the last partial batch; fewer images than a batch would train nothing.
        print(
            f"error: {args.data} has {len(images)} train images, fewer than --batch {args.batch}",
            file=sys.stderr,
        )
        return 2
    accelerator = args.device
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"

    clock = EpochClock(warmup_epochs=args.warmup_epochs)
    _install_epoch_clock(clock)
    method_args: dict = {"teacher": args.teacher}
    if args.teacher_weights:
        method_args["teacher_weights"] = args.teacher_weights
    lightly_train.pretrain(
        out=str(workdir / "out"),
        overwrite=True,
        data=[str(p) for p in images],
        model=args.student,
        method="distillation",
        method_args=method_args,
        epochs=args.epochs,
        batch_size=args.batch,
        num_workers=args.workers,
        accelerator=accelerator,
        devices=1,
        seed=0,
        transform_args={"image_size": (args.imgsz, args.imgsz)},
        # no TensorBoard/MLflow writers: they add I/O the other tools' runs don't have
        loggers={"tensorboard": None},
    )
    doc = {
        "tool": "lightly_train",
        "mode": "distillation",
        "label": f"LightlyTrain distill ({args.teacher.split('/')[-1]})",
        "student": args.student,
        "teacher": args.teacher,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs,
        **clock.summary(),
        "cuda_max_allocated_mib": cuda_peak_mib(),
        "import_rss_mib": import_rss,
        "device": accelerator,
        "lightly_train": getattr(lightly_train, "__version__", None),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    write(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
