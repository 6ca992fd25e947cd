"""Feature fit: how well the student's projection matches the teacher map on held-out images, against the
same student scored on shuffled maps (each image gets another held-out image's map).

A student that learnt the maps scores clearly higher on its own image's map than on another image's: the gap
`fit/gap` is what distillation can transfer; a student that only learnt the maps' average (what every map
shares) scores both alike. Objects and background are scored apart where the held-out images have labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from dinocache.train.losses import align_to_grid, obb_cell_mask


@torch.no_grad()
def feature_fit(
    model: Any,
    batches: Iterable[dict[str, Any]],
    teacher_of: Callable[[dict[str, Any]], torch.Tensor],
    device: torch.device | str,
) -> dict[str, float]:
    """Mean cosine per cell between each distilled layer's projection and the teacher map.

    model: a DistillOBBModel (its distilled layers, `distill_features`, and projectors `distill_proj`);
    batches: Ultralytics val batches (img uint8, im_file, bboxes/batch_idx when labelled); teacher_of(batch):
    (B, D, h, w) standardised teacher maps on `device`. Returns fit/cos, fit/cos_shuf, fit/gap, per layer
    fit/cos_L<i>, and fit/cos_obj, fit/cos_bg when any held-out cell lies on an object. Empty when there is
    nothing to score (no batch).
    """
    was_training = model.training
    model.eval()
    studs: list[list[torch.Tensor]] = [[] for _ in model.distill_layers]
    teachers: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    try:
        for batch in batches:
            img = batch["img"].to(device, non_blocking=True).float() / 255  # (B, 3, H, W)
            t = teacher_of({**batch, "img": img}).float()  # (B, D, h, w)
            grid = (int(t.shape[-2]), int(t.shape[-1]))
            feats = model.distill_features(img)
            for k, (proj, f) in enumerate(zip(model.distill_proj, feats)):
                # (B, C_s, h_s, w_s) -> (B, D, h, w), unit vectors per cell
                studs[k].append(F.normalize(align_to_grid(proj(f).float(), grid), dim=1).cpu())
            teachers.append(F.normalize(t, dim=1).cpu())
            b = img.shape[0]
            if "bboxes" in batch and "batch_idx" in batch:
                masks.append(obb_cell_mask(batch["bboxes"].float(), batch["batch_idx"], b, grid).cpu())
            else:
                masks.append(torch.zeros(b, *grid, dtype=torch.bool))
    finally:
        model.train(was_training)
    if not teachers:
        return {}
    t = torch.cat(teachers)  # (N, D, h, w)
    mask = torch.cat(masks)  # (N, h, w)
    other = torch.roll(t, 1, dims=0)  # image i scored against image i-1's map (N >= 2: never its own)
    own_all, shuf_all, per_layer = [], [], {}
    for i, parts in zip(model.distill_layers, studs):
        s = torch.cat(parts)  # (N, D, h, w)
        own_all.append((s * t).sum(1))  # (N, h, w) cosine per cell
        shuf_all.append((s * other).sum(1))
        per_layer[f"fit/cos_L{i}"] = float(own_all[-1].mean())
    own = torch.stack(own_all).mean(0)  # (N, h, w), mean over layers
    shuf = torch.stack(shuf_all).mean(0)
    out = {"fit/cos": float(own.mean()), "fit/cos_shuf": float(shuf.mean())}
    out["fit/gap"] = out["fit/cos"] - out["fit/cos_shuf"]
    if bool(mask.any()):
        out["fit/cos_obj"] = float(own[mask].mean())
        out["fit/cos_bg"] = float(own[~mask].mean()) if bool((~mask).any()) else float("nan")
    return {**out, **per_layer}
