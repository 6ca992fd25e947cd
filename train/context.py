"""What the run's modules share: the run folder's file names, the resolved teacher context and the error that
refuses a run. `run.py` (before training), `trainer.py` (the loop) and `ddp.py` (the multi-GPU handoff) import
it; it imports none of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dinocache.core.errors import DinocacheError

# weights/RESUME_FILE: the state a run continues from (tensors only, read with weights_only=True)
RESUME_FILE = "resume.pt"
# the resolved TrainConfig of a run, in its run folder (what resume=true rebuilds the run from)
DINO_ARGS_FILE = "dinocache_args.yaml"


class TrainError(DinocacheError, RuntimeError):
    """A run that must not start (bad cache, missing rows, existing run folder); the message says the fix."""


class TeacherContext:
    """What the trainer needs from the cache/teacher, resolved once before training (see train.preflight.preflight)."""

    def __init__(
        self,
        dataset_root: Path,
        cache_path: str | None = None,
        channel_mean: torch.Tensor | None = None,
        channel_std: torch.Tensor | None = None,
        pca: Any = None,
        teacher: Any = None,
    ) -> None:
        self.dataset_root = dataset_root
        self.cache_path = cache_path
        self.channel_mean = channel_mean
        self.channel_std = channel_std
        self.pca = pca
        self.teacher = teacher  # online mode: the DinoV3Teacher loaded by preflight
        # multi-teacher runs (TrainConfig.teachers): per term name, path, channels, offset, factor, mean, std,
        # grid, patch; `multi_patch` = the finest teacher's cell size (the packed map's grid)
        self.multi: list[dict[str, Any]] = []
        self.multi_patch: int = 16
