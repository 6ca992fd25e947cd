"""What the run's modules share: the run folder's file names, the resolved teacher context (one `DistillTerm`
per distillation term) and the error that refuses a run. `preflight.py` (before training), `trainer.py` (the
loop), `model.py` (the loss), `dataset.py`, `eval_hooks.py` and `ddp.py` (the multi-GPU handoff) import it; it
imports none of them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dinocache.core.errors import DinocacheError

# weights/RESUME_FILE: the state a run continues from (tensors only, read with weights_only=True)
RESUME_FILE = "resume.pt"
# the resolved TrainConfig of a run, in its run folder (what resume=true rebuilds the run from)
DINO_ARGS_FILE = "dinocache_args.yaml"
# the loss column (results.csv `train/distill`) of a single-teacher run; <= 10 characters, as Ultralytics
# prints loss names with %11s
DISTILL_KEY = "distill"


class TrainError(DinocacheError, RuntimeError):
    """A run that must not start (bad cache, missing rows, existing run folder); the message says the fix."""


@dataclass(frozen=True)
class DistillTerm:
    """One distillation term: a teacher's map against one or more student layers.

    A single-teacher run (and pretraining) is the one-term case: `name` "", loss column `distill`. A
    `teachers=[...]` run has one term per teacher, loss column `d_NAME`, their maps packed channel-wise on the
    finest teacher's grid (`offset`, `factor`; train/dataset.MultiTeacherLookup). Frozen and made of plain
    values: it travels unchanged to DDP ranks (train/ddp.py) and inside training checkpoints.
    """

    # the teacher's name in a multi-teacher cache (teachers/NAME); "" for a single-teacher run
    name: str = ""
    # the loss item and results.csv column (`distill`, or `d_NAME` per teacher)
    loss_name: str = DISTILL_KEY
    # student layers distilled against this teacher, one projection each (in this order)
    layers: tuple[int, ...] = (19,)
    # D: the teacher's first D (PCA) channels the student learns
    channels: int = 32
    # loss weights of object and background cells
    object_weight: float = 1.15
    background_weight: float = 0.15
    # distance per cell (TrainConfig.dino_distill_loss, train/losses.LOSS_KINDS)
    loss: str = "cosine"
    # the store its maps are read from ("" when the targets come from the online teacher alone)
    cache_path: str = ""
    # pixels per teacher map cell at the run's imgsz (the cache's `patch_size` attribute)
    cell_px: int = 16
    # the teacher map's (h, w) in cells at the run's imgsz
    grid: tuple[int, int] = (0, 0)
    # packed map (teachers list): the term's first channel, and its cell size / the finest term's
    offset: int = 0
    factor: int = 1
    # per-channel standardisation of its D channels (the cache's stats); empty without a cache
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def of(cls, term: DistillTerm | dict[str, Any], **defaults: Any) -> DistillTerm:
        """`term` itself, or a DistillTerm from a dict of its fields (`defaults` fill the missing ones)."""
        if isinstance(term, DistillTerm):
            return term
        values = {**defaults, **term}
        for k in ("layers", "grid", "mean", "std"):
            if k in values:
                values[k] = tuple(values[k])
        return cls(**values)

    @property
    def suffix(self) -> str:
        """Appended to the files of this term (viz pictures): `_NAME`, nothing for a single-teacher run."""
        return f"_{self.name}" if self.name else ""


@dataclass(frozen=True, eq=False)
class TeacherContext:
    """What the trainer needs from the cache/teacher, resolved once before training (train.preflight.preflight).

    Frozen: a change is a new context (`dataclasses.replace`); the DDP handoff pickles it whole, less the
    loaded online teacher (`for_ranks`), so no field can be left behind.
    """

    # the dataset's root: image keys are paths relative to it
    dataset_root: Path
    # the distillation terms (empty: no teacher)
    terms: tuple[DistillTerm, ...] = ()
    # the maps of several teachers are read packed on the finest teacher's grid (a `teachers` list)
    packed: bool = False
    # the cache the maps are read from (the multi-teacher cache's root for a `teachers` list)
    cache_path: str | None = None
    # per-channel stats the trainer standardises the batch's (B, K, h, w) map with (K = D, or sum D_i packed:
    # identity stats there, the lookup standardised each teacher already)
    channel_mean: torch.Tensor | None = None
    channel_std: torch.Tensor | None = None
    # the cache's PCA (online mode with a cache: the live map is projected like the cached ones)
    pca: Any = None
    # online mode: the teacher loaded by preflight (each DDP rank loads its own)
    teacher: Any = None

    @property
    def cell_px(self) -> int:
        """Pixels per cell of the map the dataset moves with the image: the finest term's (16 without one)."""
        return min((t.cell_px for t in self.terms), default=16)

    def for_ranks(self) -> TeacherContext:
        """This context without the loaded teacher: what the DDP handoff carries."""
        return dataclasses.replace(self, teacher=None)
