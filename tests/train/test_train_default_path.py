"""The default training path, end to end: cache mode with `distill_geometric_aug=warp` and mosaic on, a pinned
loss, and online-mode checkpoints that hold the student only.

Pinned loss: seed 42, deterministic=True, one CPU thread (tests/conftest.py), the tiny random teacher and the
demo data of the fixtures; the loss items of the first 2 optimizer steps are committed below, measured in the
environment of requirements/lock.txt (tests/test_lock.py checks that the running one is it).

Which dependency moves them: opencv. opencv-python(-headless) 5.1.0 changed the bilinear weights of
`cv2.warpAffine`/`warpPerspective` (float outputs move by up to 2.4e-3 of 255, uint8 pixels by one level at
a few edges; resize, HSV and LUT are bit-identical to 5.0.0), which Ultralytics' random affine of the images
uses (the teacher maps follow through train/warp.py's own sampling). After one Adam step on a random tiny
model that moves the losses of step 1 by 0.4-15 % (angle_loss 0.384 vs 0.334, box_loss 3.24 vs 3.16), while
step 0 stays within 1e-3. With only opencv changed back to 5.0.0.93 in a fresh install (numpy 2.4.6, scipy
1.17.1, pillow 13.0.0, transformers 5.25.0 kept) the committed values come back; opencv 4.13 moves step 0
as well. So opencv is held at 5.0.0.93 (requirements/holds.txt) and the values are pinned for the lock.

Tolerance rtol=2e-3: in the locked environment fp32 sums on another CPU (AVX2 vs AVX-512 kernels) or another
torch build reorder reductions and move the values by ~1e-5 relative after two Adam steps (reruns here
reproduce them to the last digit); a real change of the loss
(mask, normalisation, weights, warp, augmentation order, seeding) moves them by far more than 0.2 %. Update
the numbers only for an intended change, and say so in the commit. Anything that draws from the random
streams before the first step moves them as well without touching the loss (an extra dataset object built,
modules initialised in another order): check that the loss code is unchanged, then re-pin and say why.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from dinocache.train.config import TrainConfig
from dinocache.train.warp import WarpMosaic

from dinocache.core.config import build

# loss items of the first two optimizer steps of the default-path run below (measured on this CPU machine).
# Re-pinned when the default distillation loss became mse (dino_distill_loss): step 0's detection losses are
# unchanged (the same forward), its distill moved from 0.1069003 (cosine) to 0.2866865, and step 1 moved with
# the different gradient; the cosine values were box 3.157570 / cls 4.426519 / l1 0.07913119 / angle 0.3335045
# / distill 0.1000026 at step 1.
PINNED_STEPS: list[dict[str, float]] | None = [
    {
        "box_loss": 4.469425,
        "cls_loss": 4.409914,
        "l1_loss": 0.1078280,
        "angle_loss": 0.6212104,
        "distill": 0.2866865,
    },
    {
        "box_loss": 3.263015,
        "cls_loss": 4.407760,
        "l1_loss": 0.08856680,
        "angle_loss": 0.2984641,
        "distill": 0.2778221,
    },
]
PINNED_RTOL = 2e-3


def _cfg(tiny_train, tmp_path: Path, demo_data: Path, teacher: Path, cache: Path | str, **kw) -> TrainConfig:
    values = tiny_train(
        tmp_path,
        data=str(demo_data),
        dino_root=str(teacher),
        cache=str(cache),
        epochs=1,
        dino_distill_warmup_epochs=0,
        eval_enabled=False,
        dino_viz_enabled=False,
        wandb_enabled=False,
        name="run",
        extra={"plots": False, "val": False, "mosaic": 1.0, "close_mosaic": 0},
    )
    values.update(kw)
    return build(TrainConfig, values)


class StepLog:
    def __init__(self) -> None:
        self.items: list[dict[str, float]] = []

    def __call__(self, trainer) -> None:
        self.items.append({k: float(v) for k, v in trainer.loss_items.items()})


def test_default_warp_run_with_mosaic_and_pinned_loss(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache, monkeypatch, tiny_train
) -> None:
    from dinocache.train.run import train

    tiles = []
    real = WarpMosaic.apply_image

    def counting(self, labels, params=None):
        tiles.append(len(params["layout"]))
        return real(self, labels, params)

    monkeypatch.setattr(WarpMosaic, "apply_image", counting)
    cfg = _cfg(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache)
    assert cfg.distill_geometric_aug == "warp" and cfg.teacher_source == "cache"  # the defaults, not set here
    log = StepLog()
    trainer = train(cfg, callbacks={"on_train_batch_end": [log]})
    # mosaic really ran on every training sample (16 images, 4 tiles each), with the teacher maps warped
    assert len(tiles) == 16 and set(tiles) == {4}
    assert trainer.args.mosaic == 1.0 and trainer.args.mixup == 0.0
    assert len(log.items) == 4 and all(
        s["distill"] > 0 and np.isfinite(list(s.values())).all() for s in log.items
    )
    with open(Path(trainer.save_dir) / "results.csv") as f:
        rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    assert len(rows) == 1 and rows[0]["train/distill"] > 0
    got = log.items[:2]
    print("default-path loss items of the first 2 steps:", got)
    if PINNED_STEPS is None:
        pytest.fail(f"pin these values in PINNED_STEPS: {got}")
    import cv2

    for g, want in zip(got, PINNED_STEPS):
        assert g.keys() == want.keys()
        np.testing.assert_allclose(
            [g[k] for k in want],
            list(want.values()),
            rtol=PINNED_RTOL,
            err_msg=f"pinned with opencv 5.0.0 (requirements/lock.txt); this run has opencv {cv2.__version__}",
        )


def _tensor_keys(obj, prefix: str = "") -> dict[str, torch.Size]:
    """Every tensor inside a checkpoint object (dicts, lists, modules) by its dotted path."""
    out: dict[str, torch.Size] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj.shape
    elif isinstance(obj, torch.nn.Module):
        for k, v in obj.state_dict().items():
            out[f"{prefix}.{k}"] = v.shape
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensor_keys(v, f"{prefix}.{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensor_keys(v, f"{prefix}.{i}"))
    return out


def test_online_checkpoints_hold_no_teacher_tensors(
    tmp_path, demo_data, tiny_teacher_dir, tiny_train
) -> None:
    from dinocache.teacher.registry import load_teacher
    from dinocache.train.run import train
    from ultralytics.utils.patches import torch_load

    cfg = _cfg(
        tiny_train, tmp_path, demo_data, tiny_teacher_dir, "", teacher_source="online", keep_resume=True
    )
    trainer = train(cfg)
    teacher_keys = [
        k.split(".", 1)[-1] for k in load_teacher(str(tiny_teacher_dir), device="cpu").state_dict()
    ]
    assert teacher_keys
    weights = Path(trainer.save_dir) / "weights"
    files = sorted(weights.glob("*.pt"))
    assert {"last.pt", "resume.pt"} <= {p.name for p in files}
    for p in files:
        keys = _tensor_keys(torch_load(p, map_location="cpu", weights_only=False))
        assert keys, p
        leaked = [k for k in keys if any(k.endswith(t) for t in teacher_keys)]
        assert not leaked, f"{p.name} holds teacher tensors: {leaked[:5]}"
        assert not any("teacher" in k.lower() for k in keys), p.name
