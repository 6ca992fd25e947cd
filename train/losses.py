"""Pure torch pieces of the distillation: OBB cell mask, masked cosine distance, weight schedule.

Nothing here knows about Ultralytics, so each function can be tested on hand-made tensors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# A cell and a box that only touch along an edge or a corner do not overlap in area; the tolerance (in cells)
# keeps float round-off from turning such touches into overlaps.
_TOUCH_EPS = 1e-4


def obb_cell_mask(
    boxes: torch.Tensor, batch_idx: torch.Tensor, batch_size: int, grid: tuple[int, int]
) -> torch.Tensor:
    """Boolean (B, h, w) mask of the grid cells whose area overlaps an oriented box of their image.

    boxes: (N, 5) xywhr with x, y, w, h normalised to [0, 1] by the image size and r in radians (Ultralytics'
    batch["bboxes"] for OBB); batch_idx: (N,) image index of each box; grid: (h, w) cells covering the image.

    Rule: cell (i, j) is the square [j, j+1] x [i, i+1] in grid units; it is object when its interior and the
    rotated rectangle's interior intersect (positive-area overlap). Both are convex, so the separating-axis
    test over the 4 edge normals (x, y, and the box's two axes) decides it exactly.
    """
    h, w = grid
    dev = boxes.device
    mask = torch.zeros(batch_size, h, w, dtype=torch.bool, device=dev)
    if boxes.numel() == 0:
        return mask
    b = boxes.float().reshape(-1, 5)
    # normalised -> grid units
    cx, cy = b[:, 0] * w, b[:, 1] * h
    bw, bh = b[:, 2] * w, b[:, 3] * h
    cos, sin = torch.cos(b[:, 4]), torch.sin(b[:, 4])
    ys = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
    # (N, h, w) offsets box centre - cell centre
    dx = cx[:, None, None] - xs[None, None, :]
    dy = cy[:, None, None] - ys[None, :, None]
    ac, as_ = cos.abs()[:, None, None], sin.abs()[:, None, None]
    hw, hh = (bw / 2)[:, None, None], (bh / 2)[:, None, None]
    # axis x / y: box half-extent projected + cell half-extent 0.5
    sep_x = dx.abs() >= hw * ac + hh * as_ + 0.5 - _TOUCH_EPS
    sep_y = dy.abs() >= hw * as_ + hh * ac + 0.5 - _TOUCH_EPS
    # box axes u = (cos, sin), v = (-sin, cos): cell half-extent projected = 0.5 (|cos| + |sin|)
    cell_ext = 0.5 * (ac + as_)
    du = dx * cos[:, None, None] + dy * sin[:, None, None]
    dv = -dx * sin[:, None, None] + dy * cos[:, None, None]
    sep_u = du.abs() >= hw + cell_ext - _TOUCH_EPS
    sep_v = dv.abs() >= hh + cell_ext - _TOUCH_EPS
    hit = ~(sep_x | sep_y | sep_u | sep_v)  # (N, h, w)
    idx = batch_idx.reshape(-1).long().to(dev)
    counts = torch.zeros(batch_size, h, w, dtype=torch.int32, device=dev)
    counts.index_add_(0, idx, hit.int())
    return counts > 0


# per-cell distances of the distillation term (TrainConfig.dino_distill_loss)
LOSS_KINDS = ("cosine", "mse")


def cell_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """(B, D, h, w) x 2 -> (B, h, w) fp32 distance per cell.

    cosine: 1 - cos over channels (scale-free: only the direction of each cell's vector counts).
    mse: PKD's per-channel standardised MSE: each image's student and teacher channels are standardised over
    its cells (zero mean, unit variance), then the squared difference is averaged over channels; it weighs
    every channel's spatial pattern equally, where the cosine is led by the largest channels.
    """
    s, t = student.float(), teacher.float()
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)
    if kind == "mse":

        def std(x: torch.Tensor) -> torch.Tensor:
            m = x.mean(dim=(2, 3), keepdim=True)  # (B, D, 1, 1)
            v = x.var(dim=(2, 3), keepdim=True, unbiased=False)
            return (x - m) / (v + 1e-6).sqrt()

        return (std(s) - std(t)).pow(2).mean(dim=1)
    raise ValueError(f"distillation loss {kind!r}: expected one of {LOSS_KINDS}")


def masked_cosine_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    object_weight: float,
    background_weight: float,
    valid: torch.Tensor | None = None,
    kind: str = "cosine",
) -> torch.Tensor:
    """w_obj * mean(1 - cos)[object cells] + w_bg * mean(1 - cos)[background cells], a scalar in fp32.

    valid: optional (B, h, w) per-cell weight in [0, 1] (warp mode's teacher_valid: 0 where the warped map has
    no source pixels). It multiplies both terms, which become weighted means sum(w (1 - cos)) / sum(w); when
    it is None or all ones the result is exactly the unweighted one.

    student, teacher: (B, D, h, w); mask: (B, h, w) bool. The cosine is over channels per cell, in fp32
    (the cache is fp16 and the student may run under autocast). The means pool all cells of the batch of
    one kind, so an image without objects adds only background cells; a term with no cells is 0.
    `kind` = "mse" uses `cell_distance`'s standardised MSE per cell in place of 1 - cos.
    """
    dist = cell_distance(student, teacher, kind)  # (B, h, w)
    m = mask.to(dist.device, torch.bool)
    zero = dist.new_zeros(())
    if valid is not None and not bool((valid >= 1).all()):
        from dinocache.train.warp import combine_masks

        obj_w, bg_w = combine_masks(m, valid.to(dist.device))  # (B, h, w) each
        so, sb = obj_w.sum(), bg_w.sum()
        obj = (dist * obj_w).sum() / so if bool(so > 0) else zero
        bg = (dist * bg_w).sum() / sb if bool(sb > 0) else zero
        return object_weight * obj + background_weight * bg
    obj = dist[m].mean() if bool(m.any()) else zero
    bg = dist[~m].mean() if bool((~m).any()) else zero
    return object_weight * obj + background_weight * bg


def align_to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, h_s, w_s) -> (B, C, h_t, w_t) bilinear; identity when the sizes already match."""
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


def normalise_teacher(
    feat: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels: int
) -> torch.Tensor:
    """First `channels` channels of (B, K, h, w), standardised per channel: (x - mean[:D]) / std[:D]."""
    d = channels
    m = mean[:d].to(feat.device, torch.float32).view(1, d, 1, 1)
    s = std[:d].to(feat.device, torch.float32).view(1, d, 1, 1).clamp_min(1e-6)
    return (feat[:, :d].float() - m) / s


def stage_of(epoch: int, cfg: Any) -> str:
    """'A' for the first round(epochs * stage_a_ratio) epochs (0-based epoch index), else 'B'."""
    from dinocache.train.config import stage_a_epochs

    return "A" if epoch < stage_a_epochs(cfg) else "B"


def distill_weight(epoch: int, cfg: Any) -> float:
    """Distillation weight w of 0-based `epoch`: the stage's weight times a linear ramp from 0.

    ramp = min(1, epoch / dino_distill_warmup_epochs) (1 when the warmup is 0), so the first epoch of a run
    with warmup has w = 0 and the weight reaches the stage value at epoch == warmup. teacher_source=none -> 0.
    """
    if getattr(cfg, "teacher_source", "cache") == "none":
        return 0.0
    base = cfg.stage_a_distill_weight if stage_of(epoch, cfg) == "A" else cfg.stage_b_distill_weight
    warm = cfg.dino_distill_warmup_epochs
    ramp = 1.0 if warm <= 0 else min(1.0, epoch / warm)
    return float(base * ramp)


def term_weights(epoch: int, cfg: Any) -> dict[str, float]:
    """Multi-teacher runs: each `teachers` term's weight at 0-based `epoch` (its own stage weights, the shared
    ramp of dino_distill_warmup_epochs), keyed by teacher name."""
    from dinocache.train.config import teacher_terms

    if getattr(cfg, "teacher_source", "cache") == "none":
        return {}
    warm = cfg.dino_distill_warmup_epochs
    ramp = 1.0 if warm <= 0 else min(1.0, epoch / warm)
    a = stage_of(epoch, cfg) == "A"
    return {
        t.teacher: float((t.stage_a_weight if a else t.stage_b_weight) * ramp) for t in teacher_terms(cfg)
    }
