"""The Ultralytics side of a run: its training arguments (`ultralytics_overrides`) and the augmentation policy
that keeps the teacher map in step with the image (`apply_augmentation_policy`: warp or off mode, blends off,
offline views). `train.preflight.prepare` calls both; the trainer only receives the result."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dinocache.train.config import TrainConfig
from ultralytics.utils import LOGGER, colorstr

# Ultralytics' online augmentation on top of `dinocache augment`'s views, which are already rotated and
# scaled: its random scale (0.5: objects shrink to half) and rotation would apply a second time, so they
# default to off there; translate, flips, HSV and mosaic stay (extra/keys like scale=0.3 still win).
OFFLINE_VIEW_DEFAULTS: dict[str, float] = {"scale": 0.0, "degrees": 0.0}


def offline_views(data_yaml: Path) -> bool:
    """True when the dataset was written by `dinocache augment` (its manifest.jsonl beside the data.yaml)."""
    return (Path(data_yaml).parent / "manifest.jsonl").is_file()


def augmentation_summary(ov: dict[str, Any]) -> str:
    """Which Ultralytics augmentations a run has on, with their values, and which are off."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    def val(k: str) -> Any:
        return ov.get(k, DEFAULT_CFG_DICT.get(k))

    on, off = [], []
    for k in (
        "mosaic",
        "translate",
        "scale",
        "degrees",
        "shear",
        "perspective",
        "fliplr",
        "flipud",
        "mixup",
        "cutmix",
        "copy_paste",
    ):
        v = float(val(k) or 0.0)
        (on if v > 0 else off).append(f"{k}={v:g}" if v > 0 else k)
    hsv = [float(val(k) or 0.0) for k in ("hsv_h", "hsv_s", "hsv_v")]
    (on if any(hsv) else off).append("hsv=" + "/".join(f"{x:g}" for x in hsv) if any(hsv) else "hsv")
    epochs, close = int(val("epochs") or 0), int(val("close_mosaic") or 0)
    if float(val("mosaic") or 0) > 0 and close > 0:
        on[0] += f" (off for the last {close} of {epochs} epochs)"
    return f"on: {', '.join(on) or 'nothing'} | off: {', '.join(off) or 'nothing'}"


def ultralytics_overrides(cfg: TrainConfig, save_dir: Path, device: str) -> dict[str, Any]:
    """The Ultralytics training arguments of a run."""
    ov: dict[str, Any] = {
        "model": cfg.model,
        "data": str(cfg.data_yaml),
        "epochs": cfg.epochs,
        "imgsz": cfg.imgsz,
        "batch": cfg.batch,
        "workers": cfg.workers,
        "device": device,
        "optimizer": cfg.optimizer,
        "lr0": cfg.lr0,
        "lrf": cfg.lrf,
        "weight_decay": cfg.weight_decay,
        "nbs": cfg.nbs,
        "warmup_epochs": cfg.warmup_epochs,
        "amp": cfg.amp,
        "seed": cfg.seed,
        "deterministic": True,
        "save_dir": str(save_dir),
        "exist_ok": True,
        "rect": False,
        "freeze": cfg.freeze_layers if cfg.stage_a_epochs > 0 and cfg.freeze_layers > 0 else None,
        "close_mosaic": cfg.close_mosaic,
    }
    if offline_views(cfg.data_yaml):
        ov.update(OFFLINE_VIEW_DEFAULTS)
    ov.update(cfg.extra)
    return ov


def geometric_off(ov: dict[str, Any]) -> list[str]:
    """Switch off pixel-moving augmentation in `ov` (in place); returns the names that were on."""
    from dinocache.train.config import GEOMETRIC_AUGMENTATIONS
    from ultralytics.cfg import DEFAULT_CFG_DICT

    was_on = []
    for k, v in GEOMETRIC_AUGMENTATIONS.items():
        cur = ov.get(k, DEFAULT_CFG_DICT.get(k))
        if cur and not (isinstance(cur, float) and math.isclose(cur, v)):
            was_on.append(k)
        ov[k] = v
    ov["close_mosaic"] = 0
    return was_on


def warp_blends_off(ov: dict[str, Any]) -> list[str]:
    """Warp mode: switch off what the teacher map cannot follow (blends, multi-scale); returns what was on."""
    from dinocache.train.warp import BLEND_AUGMENTATIONS
    from ultralytics.cfg import DEFAULT_CFG_DICT

    was_on = []
    for k in (*BLEND_AUGMENTATIONS, "multi_scale"):
        if float(ov.get(k, DEFAULT_CFG_DICT.get(k)) or 0.0) > 0:
            was_on.append(k)
        ov[k] = 0.0
    return was_on


def apply_augmentation_policy(cfg: TrainConfig, ov: dict[str, Any]) -> str:
    """Set the run's augmentation in `ov` (in place) and log it; returns the log line.

    `distill_geometric_aug=warp` (the default) keeps mosaic, affine and flips for `cache` AND `online`: the
    cache warps each stored map with its image, the online teacher runs on the augmented batch itself
    (preprocess_batch). Both switch off what a cached map cannot follow (blends, multi_scale), so none /
    cache / online differ only in where the teacher map comes from (the fair A/B of `dinocache compare`).
    `off` switches pixel-moving augmentation off for both.
    """
    src = cfg.teacher_source
    if src == "none":
        msg = "teacher_source=none: Ultralytics' augmentation as configured"
    elif cfg.distill_geometric_aug == "warp":
        was_on = warp_blends_off(ov)
        how = (
            "warp each cached teacher map with its image"
            if src == "cache"
            else "the teacher runs on each augmented batch (same augmentation as cache mode)"
        )
        msg = f"teacher_source={src}, distill_geometric_aug=warp: {how}" + (
            f"; {', '.join(was_on)} switched off (a cached map cannot follow a blend)" if was_on else ""
        )
    else:
        was_on = geometric_off(ov)
        msg = (
            f"teacher_source={src}, distill_geometric_aug=off: geometric augmentation off "
            f"({', '.join(was_on) or 'none was on'} -> 0) so each teacher cell stays under its pixels; "
            "photometric augmentation and flips (which flip the teacher map too) stay on"
        )
    if offline_views(cfg.data_yaml):
        kept = [k for k in OFFLINE_VIEW_DEFAULTS if k not in cfg.extra]
        if kept:
            msg += (
                f"; {', '.join(kept)} off by default (the data are `dinocache augment` views, already "
                "rotated and scaled)"
            )
    msg += f"\n    augmentation {augmentation_summary(ov)}"
    LOGGER.info(f"{colorstr('dinocache:')} {msg}")
    return msg
