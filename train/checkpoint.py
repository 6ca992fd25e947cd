"""weights/resume.pt: what a run continues from, and the exact-resume state beside the weights.

resume.pt holds state dicts, numbers and plain lists only (loads with `weights_only=True`): the EMA and live
weights, optimizer, scaler, EMA updates, best fitness, early stopping, the stage and distillation weight, the
resolved TrainConfig, and every RNG stream (Python, numpy, torch, CUDA, the loader's shuffle generator,
Mosaic's image buffer), so a resumed run continues the uninterrupted one exactly
(tests/faults/test_fault_kill_train.py). `trainer.py` writes and reads it through these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ultralytics.utils.torch_utils import unwrap_model

from dinocache.core.config import to_dict


def resume_state(trainer: Any, ema_model: torch.nn.Module) -> dict[str, Any]:
    """What weights/resume.pt holds for `trainer` (a DinoOBBTrainer after its epoch's save)."""
    return {
        "epoch": int(trainer.epoch),
        "stage": trainer.stage,
        "distill_weight": float(getattr(unwrap_model(trainer.model), "distill_weight", 0.0)),
        "ema": {k: v.detach().cpu().clone() for k, v in ema_model.state_dict().items()},
        "updates": int(trainer.ema.updates),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "best_fitness": None if trainer.best_fitness is None else float(trainer.best_fitness),
        "stopper": {
            "best_fitness": None
            if trainer.stopper.best_fitness is None
            else float(trainer.stopper.best_fitness),
            "best_epoch": int(trainer.stopper.best_epoch),
        },
        "dinocache": to_dict(trainer.dino),
        # the live weights and every RNG stream, so a resumed run continues the uninterrupted one exactly
        # (Ultralytics continues from the EMA weights and reseeds; tests/faults/test_fault_kill_train.py)
        "model": {k: v.detach().cpu().clone() for k, v in unwrap_model(trainer.model).state_dict().items()},
        "rng": rng_state(getattr(trainer, "train_loader", None)),
    }


def ultralytics_checkpoint(state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """resume.pt as the checkpoint Ultralytics' `resume_training` reads; `model` holds the EMA state already."""
    return {
        "epoch": int(state["epoch"]),
        "optimizer": state["optimizer"],
        "scaler": state.get("scaler"),
        "ema": model,  # Ultralytics reads ckpt["ema"].float().state_dict(): the EMA state just loaded
        "updates": state["updates"],
        "best_fitness": state.get("best_fitness"),
        "stopper": state.get("stopper"),
    }


def rng_state(loader: Any) -> dict[str, Any]:
    """Python, numpy and torch (CPU, CUDA) RNG states and the train loader's shuffle generator, as tensors and
    plain values (resume.pt loads with weights_only=True)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(loader, "generator", None)
    if gen is not None:
        out["loader"] = gen.get_state()
    buf = getattr(getattr(loader, "dataset", None), "buffer", None)
    if isinstance(buf, list):
        # Mosaic draws its other tiles from the images Ultralytics' dataset keeps in this buffer (in-process
        # loading, workers=0): part of the stream a resume continues
        out["mosaic_buffer"] = torch.tensor(buf, dtype=torch.int64)
    return out


def set_rng_state(state: dict[str, Any], loader: Any) -> None:
    """Restore `rng_state`. The loader's persistent iterator is created first: creating it draws a worker seed
    from the generator, which the uninterrupted run did once at its start, before the state was saved."""
    import random

    import numpy as np

    if "python" in state:
        v, internal, g = state["python"]
        random.setstate((v, tuple(internal), g))
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    ds = getattr(loader, "dataset", None)
    if "mosaic_buffer" in state and isinstance(getattr(ds, "buffer", None), list):
        restore_mosaic_buffer(ds, [int(i) for i in state["mosaic_buffer"].tolist()])
    gen = getattr(loader, "generator", None)
    if gen is not None and "loader" in state:
        fresh = getattr(loader, "iterator", "absent") is None and getattr(loader, "num_workers", 1) == 0
        if fresh:
            loader.iterator = loader._get_iterator()
        gen.set_state(state["loader"])
        sampler = getattr(loader, "sampler", None)
        if fresh and isinstance(sampler, torch.utils.data.RandomSampler) and not sampler.replacement:
            # torch's RandomSampler ends each pass with one more randperm (sliced to the num_samples % n
            # remainder). The uninterrupted run drew it at the start of this epoch, before this epoch's order,
            # when its last batch was full (the batch sampler stops asking mid-pass) or dropped; a last partial
            # batch asks the sampler to its end, so that draw already happened in the epoch before the save
            n = len(sampler.data_source)
            bs = getattr(loader, "batch_size", None) or 1
            deferred = bool(getattr(loader, "drop_last", False)) or sampler.num_samples % bs == 0
            if sampler.num_samples % n == 0 and deferred:
                torch.randperm(n, generator=gen)


def rows_up_to(csv_bytes: bytes, epoch: int) -> bytes:
    """results.csv (header + rows) without the rows of epochs after `epoch` (Ultralytics' 1-based column)."""
    lines = csv_bytes.decode("utf-8").splitlines(keepends=True)
    if not lines:
        return csv_bytes
    head = [c.strip() for c in lines[0].split(",")]
    if "epoch" not in head:
        return csv_bytes
    i = head.index("epoch")
    keep = [ln for ln in lines[1:] if ln.strip() and float(ln.split(",")[i]) <= epoch]
    return "".join([lines[0], *keep]).encode("utf-8")


def restore_mosaic_buffer(ds: Any, indices: list[int]) -> None:
    """Refill Ultralytics' image buffer with `indices` (oldest first), their images loaded as the uninterrupted
    run held them; the buffer is widened while loading so none of them is evicted on the way."""
    keep = ds.max_buffer_length
    ds.max_buffer_length = len(indices) + 2
    try:
        ds.buffer.clear()
        for i in indices:
            ds.load_image(i)
    finally:
        ds.max_buffer_length = keep
    ds.buffer[:] = indices


def last_time(csv_path: Path) -> float:
    """The `time` (seconds since the run started) of the last row of results.csv, 0 when there is none."""
    import csv

    try:
        with open(csv_path, encoding="utf-8") as f:
            rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
        return float(rows[-1]["time"]) if rows else 0.0
    except (OSError, KeyError, ValueError, TypeError):
        return 0.0
