"""The teacher registry: which families exist, which one a folder/hub id holds, and loading it.

    load_teacher("dinov3")                        # family read from the folder's config.json
    load_teacher("sam-folder", family="sam")      # or named; a mismatch is refused with both names
    load_teacher("timm/vit_small_patch16_dinov3.lvd1689m")   # timm hub ids go through timm

Every family loads with its library's own loader (transformers `AutoModel.from_pretrained`, timm
`create_model("local-dir:...")` / `"hf-hub:..."`), so a user's real weights and the tiny random ones of
`dinocache make-tiny-teacher --family F` take exactly the same path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from dinocache.teacher import families as fam
from dinocache.teacher.base import (
    Teacher,
    TeacherNotFound,
    looks_like_hub_id,
    quiet_progress,
    read_mean_std,
)
from dinocache.teacher.model import DinoV3Teacher

from dinocache.core.config import ConfigError
from dinocache.core.device import select_device

# family -> what it is (shown in errors and `--help`)
FAMILIES: dict[str, str] = {
    "dinov3_vit": "DINOv3 ViT through transformers (DINOv3ViTModel), 16-px patches",
    "dinov3_timm": "DINOv3 ViT through timm (e.g. vit_small_patch16_dinov3), 16-px patches",
    "dinov3_convnext": "DINOv3 ConvNeXt through transformers, stage strides 4/8/16/32",
    "dinov2": "DINOv2 ViT through transformers, 14-px patches (image resized so a cell is 16 px)",
    "sam": "SAM's ViT image encoder (transformers SamModel), 1024-px input, 64x64 grid",
    "grounding_dino": "Grounding DINO's Swin image backbone (transformers), strides 8/16/32",
}
# transformers config model_type -> family
MODEL_TYPES: dict[str, str] = {
    "dinov3_vit": "dinov3_vit",
    "dinov3_convnext": "dinov3_convnext",
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2",
    "sam": "sam",
    "grounding-dino": "grounding_dino",
}
# self-supervised dense teachers; SAM / Grounding DINO are task models whose encoders we borrow
DINO_FAMILIES = ("dinov3_vit", "dinov3_timm", "dinov3_convnext", "dinov2")


class UnsupportedTeacher(ConfigError):
    """A checkpoint of a family we do not support, or of another family than the one asked for."""


def supported() -> str:
    return ", ".join(FAMILIES)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _family_of_config(cfg: dict[str, Any], where: str) -> str:
    if "model_type" not in cfg and "architecture" in cfg:  # timm's config.json (save_for_hf)
        arch = str(cfg["architecture"])
        if "dinov3" in arch:
            return "dinov3_timm"
        raise UnsupportedTeacher(
            f"{where} holds the timm model '{arch}', which is not a supported teacher family "
            f"(supported: {supported()}; through timm only DINOv3 ViTs)"
        )
    mt = str(cfg.get("model_type", ""))
    if mt in MODEL_TYPES:
        return MODEL_TYPES[mt]
    raise UnsupportedTeacher(
        f"{where} holds a '{mt or 'unknown'}' model, which is not a supported teacher family "
        f"(supported: {supported()})"
    )


def detect_family(root: str | Path) -> str:
    """The family of a local checkpoint folder (its config.json) or hub id (its config, or timm/...)."""
    root = str(root)
    local = Path(root).expanduser()
    if local.exists():
        f = local / "config.json"
        if not f.is_file():
            return "dinov3_vit"  # DinoV3Teacher.from_pretrained explains what is missing
        try:
            cfg = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{f}: cannot read the model config ({e})") from None
        return _family_of_config(cfg, str(local))
    if root.startswith(("hf-hub:", "timm/")):
        return "dinov3_timm"
    if not looks_like_hub_id(root):
        return "dinov3_vit"  # -> TeacherNotFound with where to put the weights
    from transformers import PretrainedConfig

    try:
        cfg, _ = PretrainedConfig.get_config_dict(root, local_files_only=_offline())
    except OSError:
        return "dinov3_vit"  # the loader below reports why the hub id cannot be used
    return _family_of_config(cfg, f"hub id {root}")


def _check_requested(requested: str, found: str, root: str) -> None:
    if requested in ("", "auto") or requested == found:
        return
    if requested not in FAMILIES:
        raise UnsupportedTeacher(f"teacher_family: {requested!r} is not one of auto, {supported()}")
    if requested in DINO_FAMILIES and found not in DINO_FAMILIES:
        raise UnsupportedTeacher(
            f"{root} holds a {found} checkpoint ({FAMILIES[found]}), not a DINO teacher ({requested}); "
            f"set teacher_family={found} (or auto) to distil from its image encoder, or point dino_root at a "
            "DINO checkpoint"
        )
    raise UnsupportedTeacher(
        f"{root} holds a {found} checkpoint, but teacher_family={requested}; set teacher_family={found} or auto"
    )


def _hf_model(root: str) -> tuple[Any, str, bool]:
    """(model, source, is_local) through AutoModel.from_pretrained, with our not-found messages."""
    from transformers import AutoModel

    local = Path(root).expanduser()
    is_local = local.exists()
    if not is_local and not looks_like_hub_id(root):
        raise TeacherNotFound(
            f"teacher weights not found at {root!r}: make one with `dinocache make-tiny-teacher`"
        )
    src = str(local) if is_local else root
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    # AutoModel on a Grounding DINO detection checkpoint drops its box head: a load report we don't need
    hf_logging.set_verbosity_error()
    try:
        with quiet_progress():
            model = AutoModel.from_pretrained(
                src, dtype=torch.float32, local_files_only=is_local or _offline()
            )
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TeacherNotFound(f"teacher weights not loaded from {root}: {first}") from None
    finally:
        hf_logging.set_verbosity(level)
    return model, src, is_local


def _timm_model(root: str) -> tuple[Any, dict[str, Any]]:
    import timm

    local = Path(root).expanduser()
    if local.exists():
        name = f"local-dir:{local.resolve()}"
        cfg = json.loads((local / "config.json").read_text())
    else:
        name = root if root.startswith("hf-hub:") else f"hf-hub:{root}"
        cfg = {"hub_id": root}
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TeacherNotFound(f"timm teacher not loaded from {root}: {first}") from None
    return model.eval(), cfg


def load_teacher(
    root: str | Path,
    layer: int = -1,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    family: str = "auto",
) -> Teacher:
    """The frozen teacher in `root` (folder or hub id) on `device`; `family` = auto or one of FAMILIES."""
    root = str(root)
    if family not in ("", "auto") and family not in FAMILIES:
        raise UnsupportedTeacher(f"teacher_family: {family!r} is not one of auto, {supported()}")
    found = detect_family(root)
    _check_requested(family, found, root)
    if found == "dinov3_vit":
        return DinoV3Teacher.from_pretrained(root, layer=layer, device=device, amp=amp)
    if found == "dinov3_timm":
        model, cfg = _timm_model(root)
        pc = model.pretrained_cfg
        t: torch.nn.Module = fam.TimmDinoV3Teacher(
            model,
            layer,
            timm_config=cfg,
            mean=tuple(pc.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(pc.get("std", (0.229, 0.224, 0.225))),
            amp=amp,
            source=root,
        )
        return t.to(select_device(device))
    model, src, is_local = _hf_model(root)
    mean, std = read_mean_std(src, is_local)
    cls = {
        "dinov3_convnext": fam.ConvNextTeacher,
        "dinov2": fam.Dinov2Teacher,
        "sam": fam.SamTeacher,
        "grounding_dino": fam.GroundingDinoTeacher,
    }[found]
    t = cls(model, layer, mean=mean, std=std, amp=amp, source=root)
    return t.to(select_device(device))
