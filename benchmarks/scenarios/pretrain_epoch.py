"""Epoch time of one `dinocache pretrain` run (label-free distillation, teacher from the cache or online).

    python -m benchmarks.scenarios.pretrain_epoch --out r.json --source cache --data D/data.yaml \
        --cache C.zarr --dino-root T --imgsz 256 --batch 8 --epochs 2 --warmup-epochs 1

The same student (YOLO26-n OBB; backbone and neck trained on the head's inputs P3/P4/P5), images and sizes
as the peer rows. Times only the training loop of each epoch (Ultralytics' on_train_epoch_start ->
on_train_epoch_end: not the held-out fit or checkpoints) over the images of one epoch, as the LightlyTrain
scenario does; the first `--warmup-epochs` are dropped.
"""

from __future__ import annotations

import tempfile
import time

from benchmarks.scenarios import EpochClock
from benchmarks.scenarios.common import parser, write

# module-level: Ultralytics deep-copies callbacks with the trainer, so they reach the clock through this
CLOCK = EpochClock()


def _start(trainer) -> None:
    CLOCK.start()
    # every image of the training set once per epoch (Ultralytics keeps the last, partial batch)
    CLOCK.batch(len(trainer.train_loader.dataset))


def _end(trainer) -> None:
    CLOCK.end()


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--source", choices=["cache", "online"], required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", default="")
    ap.add_argument("--dino-root", required=True)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    from dinocache.train.pretrain import Pretrain, PretrainConfig

    CLOCK.warmup_epochs = a.warmup_epochs
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        cfg = PretrainConfig(
            data=a.data,
            cache=a.cache,
            dino_root=a.dino_root,
            teacher_source=a.source,
            imgsz=a.imgsz,
            batch=a.batch,
            nbs=a.batch,
            epochs=a.epochs,
            warmup_epochs=0,
            workers=0,
            device=a.device,
            # the held-out fit images are a fifth of the set at most; 1 keeps nearly every image in training
            fit_images=1,
            artifacts_root=td,
            name=f"bench-pretrain-{a.source}",
        )
        Pretrain(cfg).run(
            callbacks={
                "on_train_epoch_start": [_start],
                "on_train_epoch_end": [_end],
            }
        )
    write(a.out, {"source": a.source, **CLOCK.summary(), "total_s": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
