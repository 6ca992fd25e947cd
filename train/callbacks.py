"""The Ultralytics callbacks our trainer registers (the curriculum, the epoch speed line, the per-epoch
evaluation) and `add_callbacks`, which registers the user's. Each is `fn(trainer)` on a DinoOBBTrainer,
registered once in its `__init__` (a DDP rank gets them back through the pickled callbacks)."""

from __future__ import annotations

import time
from typing import Any

from dinocache.train import ddp, eval_hooks
from dinocache.train.checkpoint import rng_state, set_rng_state
from dinocache.train.losses import distill_weight, stage_of, term_weights
from ultralytics.utils import LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import unwrap_model

# the event of a bare callback function in `train(callbacks=[fn])`: each epoch, after validation
DEFAULT_CALLBACK_EVENT = "on_fit_epoch_end"


def apply_curriculum(trainer: Any) -> None:
    """on_train_epoch_start: Stage B unfreezes (3 steps, see the notes) and sets this epoch's distill weight.

    Runs before Ultralytics' `_model_train()`, which puts the BatchNorms named in `freeze_layer_names` in
    eval mode; emptying that list (bar .dfl) is what restores BatchNorm training.
    """
    cfg = trainer.dino
    epoch = trainer.epoch
    model = unwrap_model(trainer.model)
    stage = stage_of(epoch, cfg)
    if stage == "B" and trainer.stage_frozen:
        for name, p in model.named_parameters():
            if ".dfl" not in name and p.dtype.is_floating_point:
                p.requires_grad_(True)
        trainer.freeze_layer_names = [".dfl"]
        trainer.stage_frozen = False
        if ddp.is_ddp(trainer.model):  # every rank runs this at the same epoch; see train/ddp.py
            trainer.model = ddp.rewrap_ddp(trainer.model)
        LOGGER.info(f"{colorstr('dinocache:')} epoch {epoch + 1}: Stage B, all layers unfrozen")
    trainer.epoch_t0 = time.perf_counter()
    trainer.epoch_steps = 0
    w = distill_weight(epoch, cfg)
    if cfg.teachers:  # each term its own weight; distill_weight is the largest
        model.distill_term_weights = term_weights(epoch, cfg)
        w = max(model.distill_term_weights.values(), default=0.0)
    model.distill_weight = w
    trainer.stage = stage
    if w != trainer.last_logged_weight:
        LOGGER.info(f"{colorstr('dinocache:')} epoch {epoch + 1}: Stage {stage}, distill weight w={w:.4g}")
        trainer.last_logged_weight = w


def log_epoch_speed(trainer: Any) -> None:
    """on_train_epoch_end: the epoch's training throughput in images/s (Ultralytics' bar counts batches)."""
    t0 = getattr(trainer, "epoch_t0", None)
    if t0 is None or RANK not in {-1, 0}:
        return
    dt = max(time.perf_counter() - t0, 1e-9)
    n = len(trainer.train_loader.dataset)
    steps = getattr(trainer, "epoch_steps", 0)
    LOGGER.info(
        f"{colorstr('dinocache:')} epoch {trainer.epoch + 1}/{trainer.epochs}: trained on {n} images, "
        f"{steps} optimizer step{'s' * (steps != 1)}, in {dt:.1f}s ({n / dt:.1f} img/s)"
    )


def add_callbacks(trainer: Any, callbacks: Any) -> None:
    """Register user callbacks with Ultralytics' `add_callback(event, fn)`; `fn(trainer)` each.

    Accepted forms: a dict {event: fn or [fn, ...]} (Ultralytics' own integration dicts, e.g.
    `ultralytics.utils.callbacks.wb.callbacks`, are of this form); a list of such dicts, of (event, fn) pairs
    and of bare functions. A bare function whose name is an Ultralytics event (`def on_train_end(trainer)`)
    runs at that event; any other bare function (the seed's `callbacks=[eval_callback, wandb_callback]`)
    runs at `on_fit_epoch_end`, after each epoch's validation, where Ultralytics' own loggers log."""
    if not callbacks:
        return
    items = [callbacks] if isinstance(callbacks, dict) or callable(callbacks) else list(callbacks)
    for item in items:
        if isinstance(item, dict):
            pairs = [
                (ev, f)
                for ev, fns in item.items()
                for f in (fns if isinstance(fns, (list, tuple)) else [fns])
            ]
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
            pairs = [(item[0], item[1])]
        elif callable(item):
            name = getattr(item, "__name__", "")
            pairs = [(name if name in trainer.callbacks else DEFAULT_CALLBACK_EVENT, item)]
        else:
            raise TypeError(f"callbacks: {item!r} is not a function, an (event, function) pair or a dict")
        for event, fn in pairs:
            if event not in trainer.callbacks:
                import difflib

                close = difflib.get_close_matches(event, list(trainer.callbacks), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"callbacks: {event!r} is not an Ultralytics event{hint}")
            if not callable(fn):
                raise TypeError(f"callbacks[{event!r}]: {fn!r} is not callable")
            if fn not in trainer.callbacks[event]:
                trainer.add_callback(event, fn)


def evaluate_saved_epoch(trainer: Any) -> None:
    """on_model_save (rank 0, once per epoch, after validation and after last.pt and resume.pt are written;
    not on_fit_epoch_end, which final_eval fires a second time): grade, best_geo.pt, overlays, DINO viz,
    TensorBoard/W&B. Under the saved RNG state, so evaluating does not change the training stream a resume
    continues."""
    state = rng_state(None)
    try:
        eval_hooks.after_save_model(trainer, trainer.ema.ema)  # the training EMA (DistillOBBModel)
    finally:
        set_rng_state(state, None)
