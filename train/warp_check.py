"""Equivariance gap of a teacher: how far is teacher(warp(image)) from warp(teacher(image))?

    dinocache warp-check --teacher DIR --data DATA [--imgsz N] [--n-images K] [--out DIR] [key=value ...]

Warp mode distils the student towards the cached map warped with the image. That is exact for a teacher
that commutes with the augmentation and an approximation for DINOv3 (a ViT is neither flip- nor
scale-equivariant). For each augmentation family and magnitude (flip, translate, scale, rotate, mosaic) this
runs the teacher on the augmented image and compares it, cell by cell, to the warped map of the plain image:
mean cosine over valid object cells and valid background cells (object = a cell containing a pixel of a
ground-truth polygon), after standardising each channel with the plain maps' mean/std as the trainer does.
Outputs in --out: warp_check.json, warp_check.csv, warp_check.png (the table as a plot),
warp_check_viz.png (mosaic samples: image, teacher(image), warped cached map, validity), args.yaml. `--teacher avgpool` uses the
16x16 mean-pool reference teacher, exactly equivariant for flips and whole-cell shifts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
from dinocache.grade.featviz import fit_rgb_pca, pca_rgb
from dinocache.train.warp import (
    FLIP_KEY,
    TEACHER_KEY,
    VALID_KEY,
    RenderTeacher,
    WarpFlip,
    WarpMosaic,
    WarpPerspective,
    cos_per_cell,
)
from pydantic import Field

from dinocache.core.config import Config, ConfigError, load, rule, save, to_dict
from dinocache.core.data import list_split_images, load_data_yaml
from dinocache.core.errors import DinocacheError

AVGPOOL = "avgpool"


@dataclass
class WarpCheckConfig(Config):
    # teacher folder (save_pretrained layout; any registry family) or hub id; "avgpool" = the exactly
    # equivariant 16x16 mean pool
    teacher: Annotated[str, rule(bool, "give a teacher folder/hub id or 'avgpool'")] = "dinov3"
    # data.yaml of the dataset whose images are used
    data: Annotated[str, rule(bool, "give the dataset's data.yaml (--data)")] = ""
    # split the images come from
    split: str = "train"
    # square canvas size in pixels (multiple of the teacher patch)
    imgsz: Annotated[
        int, rule(lambda v: v >= 32 and v % 16 == 0, "{value} must be a multiple of 16, >= 32")
    ] = 256
    # number of images (the first K of the split)
    n_images: Annotated[int, Field(ge=1)] = 8
    # output folder (warp_check.json/.csv/.png, args.yaml)
    out: Path = Path("artifacts/warp_check")
    # teacher layer: -1 = last_hidden_state, i >= 0 = hidden_states[i]
    layer: int = -1
    # "auto", "cpu", "cuda", "0", ...
    device: str = "cpu"
    # seed of the mosaic layouts
    seed: int = 0
    # translations in pixels (applied to x and y)
    translate_px: list[float] = field(default_factory=lambda: [4.0, 8.0, 16.0, 32.0])
    # scale factors (about the image centre)
    scales: list[Annotated[float, Field(gt=0)]] = field(default_factory=lambda: [0.5, 0.75, 1.25, 1.5])
    # rotation angles in degrees (about the image centre)
    degrees: list[float] = field(default_factory=lambda: [5.0, 15.0, 30.0, 45.0])
    # random mosaic layouts per image (0 = no mosaic rows)
    mosaic_draws: Annotated[int, Field(ge=0)] = 2
    # share of a cell's pixels from one source image for the cell to count (as in training)
    valid_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    # also the cache_flips rows: flip_view (a horizontal flip reading the teacher's map of the flipped image,
    # as the trainer does when the cache holds flipped views) and mosaic+flip with and without those views
    flip_views: bool = True
    # mosaic samples drawn in warp_check_viz.png (image | teacher(image) | warped cached map | valid); 0 = none
    viz: Annotated[int, Field(ge=0)] = 3


class _FixedAffine(WarpPerspective):
    """RandomPerspective with a given matrix instead of a random one (the warp itself stays Ultralytics')."""

    def __init__(self, M: np.ndarray, size: int) -> None:
        super().__init__(degrees=0.0, translate=0.0, scale=0.0, shear=0.0, size=(size, size))
        self.fixed = np.asarray(M, dtype=np.float32)

    def _compute_affine_matrix(self, img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
        scale = float(np.sqrt(abs(np.linalg.det(self.fixed[:2, :2]))))
        return self.fixed, scale


class _FirstK(WarpMosaic):
    """Mosaic whose other tiles come from the first k images only (the ones the check uses)."""

    k = 1

    def get_indexes(self) -> list[int]:
        self._last_indexes = [random.randrange(self.k) for _ in range(self.n - 1)]
        return self._last_indexes


def _pool_teacher(patch: int = 16) -> Callable[[np.ndarray], np.ndarray]:
    def run(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        x = img[: h // patch * patch, : w // patch * patch].astype(np.float32)
        x = x.reshape(h // patch, patch, w // patch, patch, -1).mean(axis=(1, 3))
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    return run


def _dino_teacher(cfg: WarpCheckConfig) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    import torch
    from dinocache.teacher.registry import load_teacher

    # any registry family (the DINOv3 ViT, ConvNeXt, timm ...), loaded as precompute loads it
    teacher = load_teacher(cfg.teacher, layer=cfg.layer, device=cfg.device)

    def run(img: np.ndarray) -> np.ndarray:
        # (H, W, 3) BGR uint8 -> (1, 3, H, W) RGB in [0, 1], as the trainer's batch["img"]
        x = torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).permute(2, 0, 1)[None].float() / 255.0
        return teacher.extract_feature_map(x)[0].cpu().numpy()

    return run, teacher.stride(cfg.imgsz)  # image pixels per map cell


def _canvas(img: np.ndarray, imgsz: int) -> np.ndarray:
    """The plain training view: Ultralytics' affine with all augmentation off (centred on imgsz x imgsz)."""
    zero = WarpPerspective(degrees=0.0, translate=0.0, scale=0.0, shear=0.0, size=(imgsz, imgsz))
    return zero.apply_image({"img": img}, zero.get_params({"img": img}))["img"]


def _object_cells(labels: dict[str, Any], patch: int) -> np.ndarray:
    """(h, w) bool: cells containing at least one pixel of a ground-truth polygon."""
    h, w = labels["img"].shape[:2]
    inst = labels["instances"]
    segs = np.array(inst.segments, dtype=np.float64, copy=True)
    if inst.normalized:
        segs[..., 0] *= w
        segs[..., 1] *= h
    mask = np.zeros((h, w), np.uint8)
    if len(segs):
        cv2.fillPoly(mask, [np.round(s).astype(np.int32) for s in segs], 1)
    return mask.reshape(h // patch, patch, w // patch, patch).max(axis=(1, 3)) > 0


def _families(cfg: WarpCheckConfig) -> list[tuple[str, str, list[Any]]]:
    """(family, magnitude label, transforms) for every row; transforms exclude the final RenderTeacher."""
    s, c = cfg.imgsz, cfg.imgsz / 2.0
    rows: list[tuple[str, str, list[Any]]] = [("identity", "0", [_FixedAffine(np.eye(3), s)])]
    rows += [
        ("flip", d, [_FixedAffine(np.eye(3), s), WarpFlip(p=1.0, direction=d)])
        for d in ("horizontal", "vertical")
    ]
    for px in cfg.translate_px:
        M = np.eye(3)
        M[0, 2] = M[1, 2] = px
        rows.append(("translate", f"{px:g}px", [_FixedAffine(M, s)]))
    for sc in cfg.scales:
        M = np.eye(3)
        M[:2] = cv2.getRotationMatrix2D((c, c), 0.0, sc)
        rows.append(("scale", f"{sc:g}", [_FixedAffine(M, s)]))
    for deg in cfg.degrees:
        M = np.eye(3)
        M[:2] = cv2.getRotationMatrix2D((c, c), deg, 1.0)
        rows.append(("rotate", f"{deg:g}deg", [_FixedAffine(M, s)]))
    return rows


def run_check(cfg: WarpCheckConfig) -> tuple[list[dict[str, Any]], list[tuple[np.ndarray, ...]]]:
    """Rows of the equivariance-gap table (one per family/magnitude) and the mosaic samples to draw."""
    from ultralytics.cfg import DEFAULT_CFG
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.utils import IterableSimpleNamespace

    if cfg.teacher == AVGPOOL:
        teacher, patch = _pool_teacher(16), 16
    else:
        teacher, patch = _dino_teacher(cfg)
    if cfg.imgsz % patch:
        raise ConfigError(f"imgsz: {cfg.imgsz} is not a multiple of the teacher patch {patch}")
    info = load_data_yaml(cfg.data)
    _, files = list_split_images(cfg.data, cfg.split)  # refuses an empty/missing split with the file named
    n = min(cfg.n_images, len(files))
    plain_maps: dict[int, np.ndarray] = {}
    flip_maps: dict[int, np.ndarray] = {}

    class _Data(YOLODataset):
        """Attaches teacher(plain view) to each loaded image, as the trainer's cache lookup does (with
        `views`, also the reader of teacher(mirrored plain view), as a cache made with cache_flips=true)."""

        views = False

        def get_image_and_label(self, index: int) -> dict[str, Any]:
            label = super().get_image_and_label(index)
            if index not in plain_maps:
                plain_maps[index] = teacher(_canvas(label["img"], cfg.imgsz))
            label[TEACHER_KEY] = plain_maps[index]
            if self.views:
                img = label["img"]

                def view(index: int = index, img: np.ndarray = img) -> np.ndarray:
                    if index not in flip_maps:
                        flip_maps[index] = teacher(np.ascontiguousarray(_canvas(img, cfg.imgsz)[:, ::-1]))
                    return flip_maps[index]

                label[FLIP_KEY] = view
            return label

    hyp = IterableSimpleNamespace(**{**vars(DEFAULT_CFG), "imgsz": cfg.imgsz})
    ds = _Data(
        img_path=info[cfg.split], imgsz=cfg.imgsz, augment=True, hyp=hyp, data=info, task="obb", batch_size=1
    )
    for i in range(n):
        ds.get_image_and_label(i)
    stack = np.stack([m.reshape(m.shape[0], -1) for m in plain_maps.values()], 1).reshape(
        next(iter(plain_maps.values())).shape[0], -1
    )
    mean, std = (
        stack.mean(1)[:, None, None],
        stack.std(1)[:, None, None] + 1e-6,
    )  # per channel, like the cache

    specs = _families(cfg)
    if cfg.flip_views:
        s = cfg.imgsz
        specs.insert(3, ("flip_view", "horizontal", [_FixedAffine(np.eye(3), s), WarpFlip(p=1.0)]))
    if cfg.mosaic_draws:
        mos = _FirstK(ds, imgsz=cfg.imgsz, p=1.0)
        mos.k = n
        centre = _FixedAffine(_translate(-cfg.imgsz / 2), cfg.imgsz)
        specs.append(("mosaic", "random", [mos, centre]))
        if cfg.flip_views:  # the same layouts (same seed per family), then a horizontal flip
            specs.append(("mosaic_flip", "random", [mos, centre, WarpFlip(p=1.0)]))
            specs.append(("mosaic_flip_view", "random", [mos, centre, WarpFlip(p=1.0)]))
    rng_state = random.getstate()
    random.seed(cfg.seed)
    rows: list[dict[str, Any]] = []
    viz: list[tuple[np.ndarray, ...]] = []
    try:
        for family, mag, tfs in specs:
            for t in tfs:
                t.patch = patch
            ds.views = family.endswith("_view")
            if family.startswith("mosaic"):
                random.seed(cfg.seed)  # every mosaic family draws the same layouts
            render = RenderTeacher(cfg.valid_threshold)
            obj_cos, bg_cos, n_valid, n_cells = [], [], 0, 0
            draws = cfg.mosaic_draws if family.startswith("mosaic") else 1
            for i in range(n):
                for _ in range(draws):
                    labels = ds.get_image_and_label(i)
                    for t in tfs:
                        labels = t(labels)
                    labels = render(labels)
                    warped = (labels[TEACHER_KEY].astype(np.float32) - mean) / std
                    seen = (teacher(labels["img"]) - mean) / std
                    valid = labels[VALID_KEY] > 0
                    obj = _object_cells(labels, patch)
                    cos = cos_per_cell(seen, warped)
                    if family == "mosaic" and len(viz) < cfg.viz:
                        viz.append((labels["img"], seen, warped, labels[VALID_KEY]))
                    obj_cos.append(cos[valid & obj])
                    bg_cos.append(cos[valid & ~obj])
                    n_valid += int(valid.sum())
                    n_cells += valid.size
            oc, bc = np.concatenate(obj_cos), np.concatenate(bg_cos)
            rows.append(
                {
                    "family": family,
                    "magnitude": mag,
                    "cos_object": float(oc.mean()) if oc.size else float("nan"),
                    "cos_background": float(bc.mean()) if bc.size else float("nan"),
                    "n_object_cells": int(oc.size),
                    "n_background_cells": int(bc.size),
                    "valid_fraction": n_valid / max(n_cells, 1),
                    "n_images": n,
                }
            )
    finally:
        random.setstate(rng_state)
    return rows, viz


def _translate(t: float) -> np.ndarray:
    M = np.eye(3)
    M[0, 2] = M[1, 2] = t
    return M


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'family':<16} {'magnitude':>10} {'cos_obj':>8} {'cos_bg':>8} {'valid':>6} {'obj/bg cells':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = f"{r['n_object_cells']}/{r['n_background_cells']}"
        lines.append(
            f"{r['family']:<16} {r['magnitude']:>10} {r['cos_object']:>8.4f} {r['cos_background']:>8.4f} "
            f"{r['valid_fraction']:>6.2f} {cells:>14}"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f in dict.fromkeys(r["family"] for r in rows)]
    fig, axes = plt.subplots(1, len(fams), figsize=(3.2 * len(fams), 3.2), sharey=True, squeeze=False)
    for ax, fam in zip(axes[0], fams):
        rs = [r for r in rows if r["family"] == fam]
        x = np.arange(len(rs))
        ax.plot(x, [r["cos_object"] for r in rs], "o-", label="objects")
        ax.plot(x, [r["cos_background"] for r in rs], "s--", label="background")
        ax.set_xticks(x, [r["magnitude"] for r in rs], rotation=30, fontsize=8)
        ax.set_title(fam)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean cos(teacher(warp(x)), warp(teacher(x)))")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_viz(viz: list[tuple[np.ndarray, ...]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(viz), 4, figsize=(10, 2.6 * len(viz)), squeeze=False)
    titles = [
        "augmented image",
        "teacher(augmented) PCA",
        "warped cached map PCA",
        "teacher_valid (white = 1)",
    ]
    for row, (img, seen, warped, valid) in zip(axes, viz):
        basis = fit_rgb_pca(seen, warped, lo_pct=2.0)  # one joint PCA: equal colours mean equal features
        a, b = pca_rgb(seen, basis), pca_rgb(warped, basis)
        for ax, im, t in zip(row, [img[..., ::-1], a, b, valid], titles):
            ax.imshow(im, interpolation="nearest", cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(t, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])  # keep the frame: an all-valid mask is plain white
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(
    cfg: WarpCheckConfig, rows: list[dict[str, Any]], viz: list[tuple[np.ndarray, ...]] | None = None
) -> Path:
    """JSON + CSV + PNG + args.yaml into cfg.out, written to a temp folder first so nothing is half-written."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".warp_check-", dir=out))
    try:
        (tmp / "warp_check.json").write_text(json.dumps({"config": to_dict(cfg), "rows": rows}, indent=2))
        with open(tmp / "warp_check.csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
        _plot(
            rows,
            tmp / "warp_check.png",
            f"teacher {Path(cfg.teacher).name}, {cfg.n_images} images, {cfg.imgsz}px",
        )
        if viz:
            _plot_viz(viz, tmp / "warp_check_viz.png")
        save(cfg, tmp / "args.yaml")
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """`dinocache warp-check --teacher DIR --data DATA [--imgsz N] [--n-images K] [--out DIR] [key=value ...]`"""
    ap = argparse.ArgumentParser(prog="dinocache warp-check", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--teacher", help="teacher folder or hub id, or 'avgpool' (exactly equivariant reference)"
    )
    ap.add_argument("--data", help="dataset data.yaml")
    ap.add_argument("--imgsz", help="square image size (default 256)")
    ap.add_argument("--n-images", dest="n_images", help="number of images (default 8)")
    ap.add_argument("--out", help="output folder (default artifacts/warp_check)")
    ap.add_argument("--config", default=None, help="JSON file with a 'warp_check' section")
    ap.add_argument("overrides", nargs="*", help="key=value options (see WarpCheckConfig)")
    args = ap.parse_args(argv)
    flags = [f"{k}={v}" for k in ("teacher", "data", "imgsz", "n_images", "out") if (v := getattr(args, k))]

    try:
        cfg = load(WarpCheckConfig, args.config, "warp_check", [*flags, *args.overrides])
        rows, viz = run_check(cfg)
        out = write_outputs(cfg, rows, viz)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print(f"dinocache warp-check: wrote {out}/warp_check.json, .csv, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
