"""Epoch time of one training run (`teacher_source` none | cache | online), measured in this process.

    python -m benchmarks.scenarios.train_epoch --out r.json --mode cache --data D/data.yaml \
        --cache C.zarr --dino-root T --imgsz 256 --batch 8 --epochs 3 --warmup-epochs 1

`epoch_s` times only the training loop of each epoch (on_train_epoch_start -> on_train_epoch_end), not
validation; `full_epoch_s` the whole epoch (-> on_fit_epoch_end: validation, checkpoints and the periodic
eval/viz included); the first `--warmup-epochs` are dropped. Peak memory: CUDA max allocated when on a GPU,
else the parent measures the peak RSS of this process.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from benchmarks.scenarios.common import parser, write

_T: dict[str, list[float]] = {
    "start": [],
    "end": [],
    "cpu_start": [],
    "cpu_end": [],
    "fit_end": [],
    "cpu_fit_end": [],
}


def _start(trainer) -> None:  # module-level: Ultralytics deep-copies callbacks with the trainer
    _T["start"].append(time.perf_counter())
    _T["cpu_start"].append(time.process_time())


def _end(trainer) -> None:
    _T["end"].append(time.perf_counter())
    _T["cpu_end"].append(time.process_time())


def _fit_end(trainer) -> None:  # after validation, checkpoints and the periodic eval/viz (save_model)
    _T["fit_end"].append(time.perf_counter())
    _T["cpu_fit_end"].append(time.process_time())


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--mode", choices=["none", "cache", "online"], required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", default="")
    ap.add_argument("--dino-root", default="dinov3")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", nargs="*", default=[], help="extra TrainConfig key=value")
    a = ap.parse_args()

    from dinocache.train.config import TrainConfig
    from dinocache.train.run import train

    from dinocache.core.config import build, parse_overrides
    from dinocache.core.data import list_split_images

    n_images = len(list_split_images(a.data, "train")[1])
    with tempfile.TemporaryDirectory() as td:
        values = {
            "data": a.data,
            "cache": a.cache,
            "dino_root": a.dino_root,
            "teacher_source": a.mode,
            "imgsz": a.imgsz,
            "batch": a.batch,
            "epochs": a.epochs,
            "device": a.device,
            "workers": 0,
            "nbs": a.batch,
            "warmup_epochs": 0,
            # the same curriculum state in every mode so only the teacher source differs
            "stage_a_ratio": 0.0,
            "dino_distill_warmup_epochs": 0,
            "artifacts_root": td,
            "name": f"bench-{a.mode}",
            "eval_enabled": False,
            "dino_viz_enabled": False,
            "wandb_enabled": False,
            "extra": {"val": False, "plots": False},
            **parse_overrides(a.set),
        }
        cfg = build(TrainConfig, values, "benchmark")
        t0 = time.perf_counter()
        train(
            cfg,
            callbacks={
                "on_train_epoch_start": [_start],
                "on_train_epoch_end": [_end],
                "on_fit_epoch_end": [_fit_end],
            },
        )
        total = time.perf_counter() - t0
    epochs = [e - s for s, e in zip(_T["start"], _T["end"])][a.warmup_epochs :]
    epoch_s = statistics.median(epochs)
    # CPU time barely moves when other jobs share the machine; wall time does
    cpu_s = statistics.median([e - s for s, e in zip(_T["cpu_start"], _T["cpu_end"])][a.warmup_epochs :])
    # the whole epoch as a user sees it: training loop + validation + checkpoints + periodic eval/viz
    # (on_fit_epoch_end also fires once more after the last epoch for best.pt's final validation: not counted)
    n = len(_T["start"])
    full = [f - s for s, f in zip(_T["start"], _T["fit_end"][:n])][a.warmup_epochs :]
    cpu_full = [f - s for s, f in zip(_T["cpu_start"], _T["cpu_fit_end"][:n])][a.warmup_epochs :]
    write(
        a.out,
        {
            "mode": a.mode,
            "full_epoch_s": round(statistics.median(full), 3) if full else None,
            "full_epochs_s": [round(e, 3) for e in full],
            "cpu_full_epoch_s": round(statistics.median(cpu_full), 3) if cpu_full else None,
            "n_images": n_images,
            "epoch_s": round(epoch_s, 3),
            "epochs_s": [round(e, 3) for e in epochs],
            "per_image_ms": round(1000 * epoch_s / n_images, 2),
            "per_image_s": round(epoch_s / n_images, 4),
            "cpu_epoch_s": round(cpu_s, 3),
            "cpu_per_image_s": round(cpu_s / n_images, 4),
            "images_per_s": round(n_images / epoch_s, 2),
            "total_s": round(total, 1),
        },
    )


if __name__ == "__main__":
    main()
