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
from dinocache.train.losses import align_to_grid, normalise_teacher, obb_cell_mask
from ultralytics.utils import LOGGER, colorstr

from dinocache.core.errors import DinocacheError

# the fit columns the detector run adds to results.csv at each validation: a fixed set (NaN until measured or
# where it cannot be), so every row of results.csv has the same columns
TRAIN_FIT_KEYS = (
    "fit/cos",
    "fit/cos_shuf",
    "fit/gap",
    "fit/pcc",
    "fit/pcc_shuf",
    "fit/cos_obj",
    "fit/cos_bg",
)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) -> each image's channels standardised over its cells (zero mean, unit variance)."""
    m = x.mean(dim=(2, 3), keepdim=True)
    v = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - m) / (v + 1e-6).sqrt()


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
    (B, D, h, w) standardised teacher maps on `device`. Returns fit/cos, fit/cos_shuf, fit/gap, fit/pcc and
    fit/pcc_shuf (mean per-channel correlation over each image's cells), per layer fit/cos_L<i>, and
    fit/cos_obj, fit/cos_bg when any held-out cell lies on an object. Empty when there is nothing to score.
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
                # (B, C_s, h_s, w_s) -> (B, D, h, w)
                studs[k].append(align_to_grid(proj(f).float(), grid).cpu())
            teachers.append(t.cpu())
            b = img.shape[0]
            if "bboxes" in batch and "batch_idx" in batch:
                masks.append(obb_cell_mask(batch["bboxes"].float(), batch["batch_idx"], b, grid).cpu())
            else:
                masks.append(torch.zeros(b, *grid, dtype=torch.bool))
    finally:
        model.train(was_training)
    if not teachers:
        return {}
    t_raw = torch.cat(teachers)  # (N, D, h, w)
    t, tz = F.normalize(t_raw, dim=1), _standardise(t_raw)
    mask = torch.cat(masks)  # (N, h, w)
    # image i scored against image i-1's map (N >= 2: never its own)
    other, other_z = torch.roll(t, 1, dims=0), torch.roll(tz, 1, dims=0)
    own_all, shuf_all, pcc, pcc_shuf, per_layer = [], [], [], [], {}
    for i, parts in zip(model.distill_layers, studs):
        s_raw = torch.cat(parts)  # (N, D, h, w)
        s, sz = F.normalize(s_raw, dim=1), _standardise(s_raw)
        own_all.append((s * t).sum(1))  # (N, h, w) cosine per cell
        shuf_all.append((s * other).sum(1))
        pcc.append(float((sz * tz).mean()))
        pcc_shuf.append(float((sz * other_z).mean()))
        per_layer[f"fit/cos_L{i}"] = float(own_all[-1].mean())
    own = torch.stack(own_all).mean(0)  # (N, h, w), mean over layers
    shuf = torch.stack(shuf_all).mean(0)
    out = {"fit/cos": float(own.mean()), "fit/cos_shuf": float(shuf.mean())}
    out["fit/gap"] = out["fit/cos"] - out["fit/cos_shuf"]
    # mean per-channel correlation over each image's cells: blind to a per-image offset and scale of each
    # channel (what the standardised-MSE loss leaves free), so it scores cosine- and mse-trained students alike
    out["fit/pcc"] = sum(pcc) / len(pcc)
    out["fit/pcc_shuf"] = sum(pcc_shuf) / len(pcc_shuf)
    if bool(mask.any()):
        out["fit/cos_obj"] = float(own[mask].mean())
        out["fit/cos_bg"] = float(own[~mask].mean()) if bool((~mask).any()) else 0.0
    return {**out, **per_layer}


class HeldOutFit:
    """The detector run's feature fit (TrainConfig.dino_fit_images): `feature_fit` of the EMA student on the
    first `n` validation images (whole val batches, so at least n), logged with each validation.

    The teacher maps of these images are gathered once, at the first validation, and kept on the CPU: the
    cache's maps when it holds every one of them, else the teacher run once on them (the cache's PCA and
    channel statistics, so the targets equal the cache's) and released again in cache mode; in online mode
    the run's own teacher. The val loader has no augmentation, so the images are the same every epoch.
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self._batches: list[dict[str, Any]] | None = None

    def __call__(self, trainer: Any) -> dict[str, float]:
        if self._batches is None:
            self._batches = self._collect(trainer)
        # 0 where nothing is measured, as Ultralytics' own metrics read before their first validation: a NaN
        # in results.csv would read as a diverged run
        out = dict.fromkeys(TRAIN_FIT_KEYS, 0.0)
        if self._batches:
            res = feature_fit(
                trainer.ema.ema, self._batches, lambda b: b["fit_teacher"].to(trainer.device), trainer.device
            )
            out.update({k: float(res[k]) for k in TRAIN_FIT_KEYS if k in res})
        return out

    def _collect(self, trainer: Any) -> list[dict[str, Any]]:
        ctx = trainer.ctx
        if ctx is not None and ctx.packed:
            LOGGER.info(f"{colorstr('dinocache:')} feature fit (fit/*): single-teacher runs only; not logged")
            return []
        batches, seen = [], 0
        for b in trainer.test_loader:
            batches.append({k: b[k] for k in ("img", "im_file", "bboxes", "batch_idx") if k in b})
            seen += len(b["im_file"])
            if seen >= self.n:
                break
        if seen < 2:  # the shuffled score needs another image's map
            return []
        try:
            maps = self._teacher_maps(trainer, batches)
        except (DinocacheError, OSError) as e:
            LOGGER.warning(
                f"{colorstr('dinocache:')} feature fit (fit/*) not logged: no teacher map of the validation "
                f"images ({e})"
            )
            return []
        for b, m in zip(batches, maps):
            b["fit_teacher"] = m  # (B, D, h, w) standardised, CPU
        return batches

    @staticmethod
    def _teacher_maps(trainer: Any, batches: list[dict[str, Any]]) -> list[torch.Tensor]:
        """(B, D, h, w) standardised teacher maps per batch, on the CPU."""
        import numpy as np

        from dinocache.core.data import image_keys

        ctx, d = trainer.ctx, trainer.dino.dino_distill_channels
        if trainer.dino.teacher_source == "cache":
            from dinocache.train.dataset import TeacherLookup

            lookup = TeacherLookup(ctx.cache_path, ctx.dataset_root, d)
            files = [f for b in batches for f in b["im_file"]]
            try:
                keys = set(image_keys(files, ctx.dataset_root))
            except DinocacheError:  # validation images outside the dataset root: none is in the cache
                keys = None
            if keys is not None and keys <= set(lookup.fc.keys):
                return [
                    normalise_teacher(
                        torch.from_numpy(np.stack([np.asarray(lookup(f), np.float32) for f in b["im_file"]])),
                        ctx.channel_mean,
                        ctx.channel_std,
                        d,
                    )
                    for b in batches
                ]
        try:
            return [
                trainer.online_teacher_features(b["img"].to(trainer.device).float() / 255).float().cpu()
                for b in batches
            ]
        finally:
            if trainer.dino.teacher_source == "cache":  # the student-only run holds no teacher past this
                trainer.release_teacher()
