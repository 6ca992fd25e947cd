"""Time to the first training step and peak RSS at that moment, one process per run.

    python -m benchmarks.scenarios.startup --out r.json --mode cache --data D/data.yaml \
        --cache C.zarr --dino-root T --imgsz 256

The clock starts when this module is imported (the interpreter's own start-up, ~50 ms, is outside) and
stops at Ultralytics' first `on_train_batch_start`; the figures are written there and the process ends
(os._exit), so nothing after the first step is counted. Peak RSS is this process's VmHWM.

`--workers N` gives the run N DataLoader worker processes even on the CPU (Ultralytics sets workers=0 there;
the scenario puts N back right before the loaders are built), to measure what a GPU run pays per worker.
`first_step_cpu_s` is this process's CPU; `first_step_tree_cpu_s` adds the CPU of its live children (the workers).
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()
_C0 = time.process_time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from benchmarks.scenarios.common import parser, write  # noqa: E402

_OUT: dict = {}


def _workers_back() -> None:
    """Ultralytics sets args.workers = 0 on a CPU in the trainer's __init__: put the asked number back right before
    each loader is built (the scenario's own patch; dinocache's trainer is unchanged)."""
    from dinocache.train.trainer import DinoOBBTrainer

    build = DinoOBBTrainer.get_dataloader

    def get_dataloader(self, *args, **kwargs):
        self.args.workers = _OUT["workers"]
        return build(self, *args, **kwargs)

    DinoOBBTrainer.get_dataloader = get_dataloader


def _children_cpu() -> float:
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a child that ended meanwhile
            pass
    return total


def _first_step(trainer) -> None:  # module-level: Ultralytics deep-copies callbacks with the trainer
    res = dict(_OUT["res"])
    res["first_step_s"] = round(time.perf_counter() - _T0, 3)
    res["first_step_cpu_s"] = round(time.process_time() - _C0, 3)
    res["first_step_tree_cpu_s"] = round(res["first_step_cpu_s"] + _children_cpu(), 3)
    res["workers"] = _OUT["workers"]
    res["tensorstore_imported"] = "tensorstore" in sys.modules
    res["zarr_imported"] = "zarr" in sys.modules
    res["transformers_model_code_imported"] = any(m.startswith("transformers.models") for m in sys.modules)
    write(_OUT["path"], res)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--mode", choices=["none", "cache", "online"], required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", default="")
    ap.add_argument("--dino-root", default="dinov3")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    from dinocache.train.config import TrainConfig
    from dinocache.train.run import train

    from dinocache.core.config import build

    _OUT.update(path=a.out, res={"mode": a.mode, "imgsz": a.imgsz}, workers=a.workers)
    with tempfile.TemporaryDirectory() as td:
        values = {
            "data": a.data,
            "cache": a.cache,
            "dino_root": a.dino_root,
            "teacher_source": a.mode,
            "imgsz": a.imgsz,
            "batch": a.batch,
            "epochs": 1,
            "device": a.device,
            "workers": a.workers,
            "nbs": a.batch,
            "warmup_epochs": 0,
            "stage_a_ratio": 0.0,
            "dino_distill_warmup_epochs": 0,
            "artifacts_root": td,
            "name": f"startup-{a.mode}",
            "eval_enabled": False,
            "dino_viz_enabled": False,
            "wandb_enabled": False,
            "extra": {"val": False, "plots": False},
        }
        cfg = build(TrainConfig, values, "benchmark")
        if a.workers:
            _workers_back()
        train(cfg, callbacks={"on_train_batch_start": [_first_step]})
    print(json.dumps({"error": "training ended before a first step"}))
    sys.exit(1)


if __name__ == "__main__":
    main()
