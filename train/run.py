"""`train(cfg)`: one training run from a TrainConfig, start to finish (train/preflight.py refuses a bad run and
prepares it, train/trainer.py trains), and the clean-up of a new run that stopped before its first checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dinocache.train.config import TrainConfig
from dinocache.train.context import RESUME_FILE
from dinocache.train.preflight import RUN_LOCK, prepare, release_run
from dinocache.train.trainer import DinoOBBTrainer, add_callbacks
from ultralytics.utils import LOGGER, colorstr


def train(cfg: TrainConfig, callbacks: Any = None) -> DinoOBBTrainer:
    """Train one run as configured; returns the finished trainer (its save_dir holds the outputs).

    `callbacks` maps Ultralytics events (on_train_epoch_start, on_fit_epoch_end, ...) to extra functions
    `fn(trainer)` (any form of `trainer.add_callbacks`); module-level functions, not bound methods (they are
    deep-copied with the trainer state).
    """
    cfg, ov, ctx, state = prepare(cfg)
    save_dir = Path(ov["save_dir"])
    try:
        trainer = DinoOBBTrainer(overrides=ov, dino=cfg, ctx=ctx, resume_state=state)
        add_callbacks(trainer, callbacks)
        trainer.train()
    except BaseException as e:
        if state is None:
            discard_unsaved_run(save_dir)
        if isinstance(e, KeyboardInterrupt):
            e.save_dir = save_dir  # type: ignore[attr-defined] # the CLI's resume hint names the run
            e.run_name = cfg.name  # type: ignore[attr-defined]
        raise
    finally:
        release_run(save_dir)
    return trainer


def discard_unsaved_run(save_dir: Path) -> None:
    """A new run that failed before its first checkpoint: remove its folder, so neither resume=true nor a rerun
    with the same name finds a run that cannot be continued. A run with weights/resume.pt stays resumable."""
    import shutil

    if (save_dir / "weights" / RESUME_FILE).exists() or not save_dir.exists():
        return
    run = save_dir.parent
    target = run if {p.name for p in run.iterdir()} <= {save_dir.name, RUN_LOCK} else save_dir
    shutil.rmtree(target, ignore_errors=True)
    LOGGER.warning(f"{colorstr('dinocache:')} the run stopped before its first checkpoint; removed {target}")
