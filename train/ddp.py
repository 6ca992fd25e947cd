"""Multi-GPU training (`device=0,1`) through Ultralytics' own DDP path, and what our trainer adds to it.

With more than one device, Ultralytics' `BaseTrainer.train()` does not train: `utils/dist.py` cloudpickles
`{trainer class, vars(args), model, callbacks}`, writes a launcher script and runs it under
`python -m torch.distributed.run --nproc_per_node N`; each rank rebuilds the trainer as
`cls(cfg=DEFAULT_CFG, overrides=args, _callbacks=callbacks)`. Extra `__init__` arguments are lost there and
unknown `overrides` keys are rejected, so our resolved TrainConfig, teacher context and resume file travel
*inside the pickled callbacks*, as a `DDPHandoff` object that does nothing when called. Each rank's
`DinoOBBTrainer.__init__` finds it, takes the configuration from it and drops it from the callbacks.

What happens where (ranks are `ultralytics.utils.RANK`; -1 = no DDP):
- every rank: its own cache reader (TeacherLookup opens the store lazily per process), its own online
  teacher on its own GPU (`online_teacher()`), the distillation term inside the DDP-wrapped model's
  forward (so the 1x1 projection's gradients are all-reduced);
- rank 0 only (Ultralytics' rule, which our hooks follow): validation, best.pt/last.pt, weights/resume.pt,
  grading, best_geo.pt, overlays, DINO viz, TensorBoard/W&B, dinocache_args.yaml.
- Stage B unfreezing re-wraps the model in a new DistributedDataParallel on every rank (`rewrap_ddp`):
  the reducer only all-reduces parameters that required grad when the wrapper was built.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from dinocache.train.context import RESUME_FILE, TeacherContext

HANDOFF_EVENT = "on_pretrain_routine_start"  # any event works; this one runs once and early


class DDPHandoff:
    """A no-op callback that carries our run configuration through Ultralytics' pickled DDP state.

    `dino`: the resolved TrainConfig as a plain dict; `ctx`: the TeacherContext itself, whole (its terms
    included) less the loaded teacher (each rank loads its own in online mode); `resume_file`:
    weights/resume.pt when continuing a run (each rank reads it; tensors only); `save_dir`: the run folder it
    belongs to.
    """

    def __init__(
        self, dino: dict[str, Any], ctx: TeacherContext | None, resume_file: str | None, save_dir: str
    ) -> None:
        self.dino = dino
        self.ctx = ctx
        self.resume_file = resume_file
        self.save_dir = save_dir

    def __call__(self, trainer: Any) -> None:  # travels as a callback; nothing to do when run
        return None

    def __repr__(self) -> str:
        return f"DDPHandoff(save_dir={self.save_dir!r}, resume={self.resume_file is not None})"


def make_handoff(trainer: Any) -> DDPHandoff:
    """The handoff for `trainer` (a DinoOBBTrainer about to launch its DDP ranks)."""
    from dinocache.core.config import to_dict

    ctx = None if trainer.ctx is None else trainer.ctx.for_ranks()
    resume_file = None
    if trainer.resume_state is not None:
        resume_file = str(Path(trainer.wdir) / RESUME_FILE)
    return DDPHandoff(to_dict(trainer.dino), ctx, resume_file, str(trainer.save_dir))


def find_handoff(callbacks: dict[str, list] | None) -> DDPHandoff | None:
    """The DDPHandoff among `callbacks` (the `_callbacks` a DDP rank is built with), or None."""
    for fns in (callbacks or {}).values():
        for fn in fns:
            if isinstance(fn, DDPHandoff):
                return fn
    return None


def drop_handoff(callbacks: dict[str, list]) -> None:
    for event, fns in callbacks.items():
        callbacks[event] = [fn for fn in fns if not isinstance(fn, DDPHandoff)]


def unpack_handoff(h: DDPHandoff) -> tuple[Any, Any, dict | None]:
    """(TrainConfig, TeacherContext, resume state or None) on a DDP rank."""
    from dinocache.train.config import TrainConfig

    from dinocache.core.config import build

    cfg = build(TrainConfig, dict(h.dino), f"DDP handoff of {h.save_dir}")
    ctx = h.ctx
    state = None
    if h.resume_file is not None:
        state = torch.load(h.resume_file, map_location="cpu", weights_only=True)
    return cfg, ctx, state


def is_ddp(model: Any) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def rewrap_ddp(old: torch.nn.parallel.DistributedDataParallel) -> torch.nn.parallel.DistributedDataParallel:
    """A new DistributedDataParallel around `old.module` with the same options; call on every rank.

    Needed after `requires_grad_(True)` on parameters that were frozen when `old` was built: its reducer
    never registered them, so their gradients would stay rank-local and the ranks would drift apart.
    `old`'s autograd hooks are removed first so no gradient is reduced twice.
    """
    DDP = torch.nn.parallel.DistributedDataParallel
    kw: dict[str, Any] = {
        "device_ids": old.device_ids,
        "find_unused_parameters": old.find_unused_parameters,
        "gradient_as_bucket_view": old.gradient_as_bucket_view,
    }
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        kw["forward_sync_buffers"] = old.forward_sync_buffers
    else:  # pragma: no cover - torch < 2.13
        kw["broadcast_buffers"] = old.broadcast_buffers
    if old.static_graph:
        kw["static_graph"] = True
    module = old.module
    if hasattr(old, "_remove_autograd_hooks"):
        old._remove_autograd_hooks()
    return DDP(module, **kw)


__all__ = [
    "DDPHandoff",
    "HANDOFF_EVENT",
    "drop_handoff",
    "find_handoff",
    "is_ddp",
    "make_handoff",
    "rewrap_ddp",
    "unpack_handoff",
]
