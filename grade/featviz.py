"""DINO feature pictures: teacher vs projected student maps through one shared PCA, object mask, 1 - cos.

For one sample, `save_feature_viz(out_dir, stem, image, teacher, student, mask)` writes

    {stem}_teacher.png  teacher map (D, h, w) as RGB: its 3 leading principal components, blended over the image
    {stem}_student.png  student map through the SAME PCA directions (fitted on the teacher), its colours
                        stretched over its own range (per image: the projected student's scale differs from
                        the teacher's, and on the teacher's range it shows as one flat colour), so equal hues
                        mean the same feature directions; a student that has learnt nothing looks noisy
    {stem}_mask.png     the OBB object mask (h, w) over the image (object cells tinted green)
    {stem}_diff.png     per-cell 1 - cos(student, teacher) as a heat map on a FIXED scale [0, 1] (cos <= 0
                        saturates), so pictures of different epochs compare; the object/background means are
                        written on it and a colour bar below it gives the scale

`feature_viz_dir(run_dir, epoch)` is `dino_viz/epoch_{NNN}/`. Everything here takes plain tensors.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MIN_DISPLAY = 256  # small images are scaled up so the cells stay visible
MAP_ALPHA = 0.65  # weight of the feature colours over the image


def feature_viz_dir(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / "dino_viz" / f"epoch_{epoch:03d}"


def fit_rgb_pca(
    *maps: torch.Tensor | np.ndarray, lo_pct: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the cells of one or more (D, h, w) maps, fitted jointly -> (mean (D,), components (3, D), lo (3,),
    hi (3,)). The one PCA-to-RGB of the project (grade pictures and `dinocache warp-check` use it).

    lo/hi are the `lo_pct`/100-`lo_pct` percentiles of the projections, used to map every map to [0, 1].
    Fewer than 3 components (D < 3 or a constant map) are padded with zeros.
    """
    d = maps[0].shape[0]
    x = np.concatenate([_cells(m) for m in maps])  # (sum h*w, D)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = np.zeros((3, d))
    k = min(3, vt.shape[0])
    comps[:k] = vt[:k]
    # SVD signs are arbitrary; fix them so the colours do not flip between epochs for the same map.
    for i in range(k):
        j = np.argmax(np.abs(comps[i]))
        if comps[i, j] < 0:
            comps[i] = -comps[i]
    proj = (x - mean) @ comps.T
    lo, hi = np.percentile(proj, lo_pct, axis=0), np.percentile(proj, 100 - lo_pct, axis=0)
    return mean, comps, lo, hi


def _cells(feat: torch.Tensor | np.ndarray) -> np.ndarray:
    """(D, h, w) -> (h*w, D) float64."""
    a = feat.detach().float().cpu().numpy() if isinstance(feat, torch.Tensor) else np.asarray(feat)
    return a.reshape(a.shape[0], -1).T.astype(np.float64)


def pca_rgb(
    feat: torch.Tensor | np.ndarray, basis: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray:
    """(D, h, w) -> (h, w, 3) uint8 RGB through `basis` from `fit_rgb_pca`."""
    mean, comps, lo, hi = basis
    _, h, w = feat.shape
    proj = (_cells(feat) - mean) @ comps.T  # (h*w, 3)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    rgb = np.clip((proj - lo) / span, 0, 1).reshape(h, w, 3)
    return (rgb * 255).round().astype(np.uint8)


def own_range(
    feat: torch.Tensor | np.ndarray,
    basis: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    lo_pct: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`basis` with lo/hi taken from `feat`'s own projections: the same PCA directions, the colours stretched
    over this map's range."""
    mean, comps, _, _ = basis
    proj = (_cells(feat) - mean) @ comps.T
    return mean, comps, np.percentile(proj, lo_pct, axis=0), np.percentile(proj, 100 - lo_pct, axis=0)


def colour_bar(width: int) -> np.ndarray:
    """(28, width, 3) BGR strip: the diff picture's INFERNO scale from 0 (student = teacher direction) to 1
    (orthogonal; larger distances saturate), labelled."""
    ramp = np.linspace(0, 255, max(width, 2)).round().astype(np.uint8)[None, :width]
    strip = np.full((28, width, 3), 255, np.uint8)
    strip[:10] = cv2.applyColorMap(np.repeat(ramp, 10, axis=0), cv2.COLORMAP_INFERNO)
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.35
    for text, x in (("0", 0.0), ("0.5", 0.5), ("1+ (1-cos)", 1.0)):
        (tw, _), _ = cv2.getTextSize(text, font, size, 1)
        left = int(np.clip(x * width - tw / 2, 1, width - tw - 1))
        cv2.putText(strip, text, (left, 24), font, size, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> np.ndarray:
    """Per-cell 1 - cos over channels: (D, h, w) x2 -> (h, w) in [0, 2]."""
    cos = F.cosine_similarity(student.detach().float(), teacher.detach().float(), dim=0, eps=1e-8)
    return (1.0 - cos).cpu().numpy()


def to_bgr_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) RGB float in [0, 1] or uint8 tensor/array -> (H, W, 3) uint8 BGR for OpenCV."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(a.shape)}")
    a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(a[..., ::-1])


def _over(image: np.ndarray, cells: np.ndarray, alpha: float) -> np.ndarray:
    """Nearest-upsample a (h, w, 3) BGR cell map to the image and blend: each cell stays a visible square."""
    up = cv2.resize(cells, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    return cv2.addWeighted(up, alpha, image, 1 - alpha, 0)


def _write(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def save_feature_viz(
    out_dir: str | Path,
    stem: str,
    image: torch.Tensor | np.ndarray,
    teacher: torch.Tensor,
    student: torch.Tensor,
    mask: torch.Tensor | np.ndarray,
) -> dict[str, str]:
    """Write the four PNGs of one sample. image (3, H, W); teacher, student (D, h, w); mask (h, w)."""
    if teacher.shape != student.shape or teacher.ndim != 3:
        raise ValueError(
            f"teacher {tuple(teacher.shape)} and student {tuple(student.shape)} must both be (D, h, w)"
        )
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.shape != tuple(teacher.shape[1:]):
        raise ValueError(f"mask {m.shape} must be the feature grid {tuple(teacher.shape[1:])}")
    m = m.astype(bool)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img = to_bgr_image(image)
    s = max(1.0, MIN_DISPLAY / max(img.shape[:2]))
    if s != 1:
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)

    basis = fit_rgb_pca(teacher)
    t_rgb, s_rgb = pca_rgb(teacher, basis), pca_rgb(student, own_range(student, basis))
    mask_cells = np.zeros((*m.shape, 3), np.uint8)
    mask_cells[m] = (0, 255, 0)
    dist = cosine_distance(student, teacher)
    heat = cv2.applyColorMap((np.clip(dist, 0, 1) * 255).round().astype(np.uint8), cv2.COLORMAP_INFERNO)
    diff = _over(img, heat, 0.8)
    obj = float(dist[m].mean()) if m.any() else float("nan")
    bg = float(dist[~m].mean()) if (~m).any() else float("nan")
    text = f"1-cos obj {obj:.2f} bg {bg:.2f}"
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    cv2.rectangle(diff, (0, 0), (tw + 8, th + 8), (0, 0, 0), -1)  # dark box: readable over any colour
    cv2.putText(diff, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    diff = np.vstack([diff, colour_bar(diff.shape[1])])

    files = {k: f"{stem}_{k}.png" for k in ("teacher", "student", "mask", "diff")}
    _write(out / files["teacher"], _over(img, t_rgb[..., ::-1].copy(), MAP_ALPHA))
    _write(out / files["student"], _over(img, s_rgb[..., ::-1].copy(), MAP_ALPHA))
    _write(out / files["mask"], _over(img, mask_cells, 0.4))
    _write(out / files["diff"], diff)
    return files
