"""Clean student weights: a plain Ultralytics OBBModel (DetectionModel for a detect yaml) without projection,
hooks or dinocache classes.

Why: a checkpoint pickles its model class by reference. If best.pt named `train.model.DistillOBBModel`,
loading it where dinocache is not installed would make Ultralytics try `pip install train`, and PyPI's
`train` is somebody else's package. So the run's best.pt/last.pt hold only Ultralytics classes, and the
state needed to resume lives in weights/resume.pt as plain tensors and dicts.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel, OBBModel

# model attributes Ultralytics' ModelEMA.update_attr carries along; the predictor/validator read them
_ATTRS = ("yaml", "nc", "args", "names", "stride", "class_weights", "pt_path", "task")


def plain_class(yaml: dict) -> type[DetectionModel]:
    """Ultralytics' model class of a model yaml: OBBModel for an OBB head, DetectionModel for a Detect head
    (pretraining takes either student; the trainer's model class is an OBBModel subclass in both cases)."""
    from ultralytics.nn.tasks import guess_model_task

    return OBBModel if guess_model_task(yaml) == "obb" else DetectionModel


def export_clean(model: nn.Module) -> DetectionModel:
    """A plain OBBModel (or DetectionModel) with `model`'s weights (minus `distill_proj.*`), same device and dtype."""
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("distill_proj.")}
    param = next(model.parameters())
    cls = plain_class(model.yaml)
    clean = cls(cfg=deepcopy(model.yaml), ch=model.yaml.get("channels", 3), nc=model.nc, verbose=False)
    clean.load_state_dict(sd, strict=True)
    for a in _ATTRS:
        if hasattr(model, a):
            setattr(clean, a, deepcopy(getattr(model, a)))
    clean.criterion = None
    for p in clean.parameters():
        p.requires_grad_(False)
    return clean.to(device=param.device, dtype=param.dtype).train(model.training)


# dinocache's own classes a run's in-training model pickles (the distillation model, its layer hooks and its
# distillation terms): the only globals beyond Ultralytics' allow-list that clean_checkpoint accepts in a file
def _own_classes() -> list[type]:
    from dinocache.train.context import DistillTerm
    from dinocache.train.model import DistillOBBModel, FeatHook

    return [DistillOBBModel, FeatHook, DistillTerm]


def clean_checkpoint(path: str | Path, out: str | Path | None = None) -> Path:
    """Rewrite an Ultralytics checkpoint so its model objects are plain OBBModels (in place when out=None).

    The file is loaded with `weights_only=True` against Ultralytics' allow-list of model classes plus the
    distillation model's own classes, never fully unpickled: a file referencing anything else (code) is
    refused naming it (UnsafeFile) before any of it runs."""
    from dinocache.core.safeload import load_ultralytics_checkpoint

    path = Path(path)
    with torch.serialization.safe_globals(_own_classes()):
        ckpt = load_ultralytics_checkpoint(path)
    for k in ("model", "ema"):
        if isinstance(ckpt.get(k), nn.Module):
            m = ckpt[k]
            ckpt[k] = (
                export_clean(m.float()).half()
                if next(m.parameters()).dtype == torch.half
                else export_clean(m)
            )
    out = Path(out) if out else path
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out)
    return out
