"""Offline augmentation: K exact views per training image, square at imgsz, before the teacher runs.

    dinocache augment --config config.json [key=value ...]      (just augment)
    dinocache augment --config config.json --show                (print the pipeline, write nothing)

The teacher's features are cached per stored image, so every view is written to disk at exactly
imgsz x imgsz and the student later sees the same pixels with no further geometry. Each view is one
3x3 matrix (letterbox, then scale/stretch, rotation, flips about the centre, translation) applied
with cv2.warpAffine to the pixels and to the OBB corners, so labels stay exact; photometric jitter
follows. Val/test are only letterboxed. Everything is seeded per (seed, image index, view).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import cv2
import numpy as np
import yaml
from pydantic import Field

from dinocache.core.config import Config, load, rule, save, to_dict
from dinocache.core.data import DataError, as_dataset_yaml
from dinocache.core.errors import DinocacheError

from . import geometry, registry
from .convert import dest_name
from .formats import Item, decode_image, format_yolo_line, load_yolo, staged_dir, write_data_yaml

MANIFEST_VERSION = 1


@dataclass
class AugmentConfig(Config):
    # input YOLO-OBB data.yaml (its train split is augmented, val/test letterboxed), or unlabeled images: a
    # folder of images (no dataset yaml in it) or a .txt list, augmented as a train split without labels
    data: str = "dataset/data.yaml"
    # output dataset folder (gets its own data.yaml, manifest.jsonl, augment.yaml)
    out: Annotated[str, rule(bool, "must not be empty")] = "dataset/augmented"
    # side of the square views; precompute and train must use the same imgsz
    imgsz: Annotated[int, Field(ge=32, multiple_of=32)] = 512
    # K: views written per training image
    views: Annotated[int, Field(ge=1)] = 4
    # base seed; each view draws from RNG(seed, image index, view)
    seed: int = 0
    # object characteristics, e.g. ["rotation_invariant", "small_objects"] (see datatools.registry)
    characteristics: list[str] = field(default_factory=list)
    # scene: {"lighting": "variable"|"fixed", "camera": "fixed"|"moving"}
    environment: dict[str, str] = field(default_factory=dict)
    # how strong the chosen augmentations are
    intensity: Literal["low", "medium", "high"] = "medium"
    # a box cut by the border is kept only if at least this fraction of its area stays visible
    min_visible: Annotated[float, Field(gt=0, le=1)] = 0.5
    # view 0 of each training image is the plain letterbox (no geometric/photometric change)
    include_original: bool = False
    # replace an existing output folder
    overwrite: bool = False
    # modules imported before building the pipeline; they call datatools.registry.register(...)
    plugins: list[str] = field(default_factory=list)
    # file type of the views (jpg: quality 95, png: lossless)
    image_format: Literal["jpg", "png"] = "jpg"
    # threads for decoding/warping/encoding (0: up to 8, by CPU count)
    workers: Annotated[int, Field(ge=0)] = 0


@dataclass
class ViewParams:
    degrees: float = 0.0
    scale: float = 1.0
    stretch: float = 1.0
    flip_lr: bool = False
    flip_ud: bool = False
    translate: tuple[float, float] = (0.0, 0.0)
    photometric: dict = field(default_factory=dict)


def view_rng(seed: int, index: int, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, view])


def sample_view(ops: dict[str, dict[str, float]], rng: np.random.Generator) -> ViewParams:
    """Draw one view's parameters from the pipeline spec (fixed draw order -> reproducible)."""
    v = ViewParams()
    u = rng.uniform
    if d := ops.get("rotate", {}).get("degrees", 0.0):
        v.degrees = float(u(-d, d))
    f = ops.get("flip", {})
    v.flip_lr = bool(rng.random() < f.get("lr", 0.0))
    v.flip_ud = bool(rng.random() < f.get("ud", 0.0))
    if s := ops.get("scale"):
        v.scale = float(u(s.get("lo", 1.0), s.get("hi", 1.0)))
    if a := ops.get("stretch", {}).get("amount", 0.0):
        v.stretch = float(1.0 + u(-a, a))
    if t := ops.get("translate", {}).get("fraction", 0.0):
        v.translate = (float(u(-t, t)), float(u(-t, t)))
    ph: dict = {}
    if h := ops.get("hsv"):
        ph["hsv_gain"] = [float(g) for g in u(-1, 1, 3) * [h.get("h", 0), h.get("s", 0), h.get("v", 0)] + 1]
    if b := ops.get("brightness"):
        ph["beta"] = float(u(-1, 1) * b.get("brightness", 0) * 255)
        ph["alpha"] = float(1 + u(-1, 1) * b.get("contrast", 0))
    if (b := ops.get("blur")) and rng.random() < b.get("p", 0) and b.get("sigma", 0) > 0:
        ph["blur_sigma"] = float(u(0.3, max(0.3, b["sigma"])))
    if (n := ops.get("noise")) and rng.random() < n.get("p", 0) and n.get("std", 0) > 0:
        ph["noise_std"] = float(u(0, n["std"]))
        ph["noise_seed"] = int(rng.integers(2**31))
    for name in registry.CUSTOM_OPS:
        if name in ops:
            ph[name] = dict(ops[name])
            ph[f"{name}_seed"] = int(rng.integers(2**31))
    v.photometric = ph
    return v


def apply_photometric(img: np.ndarray, ph: dict) -> np.ndarray:
    """BGR uint8 in, BGR uint8 out; `ph` from `sample_view`."""
    if g := ph.get("hsv_gain"):
        hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
        x = np.arange(256, dtype=np.float64)
        lut_h = ((x * g[0]) % 180).astype(np.uint8)
        lut_s = np.clip(x * g[1], 0, 255).astype(np.uint8)
        lut_v = np.clip(x * g[2], 0, 255).astype(np.uint8)
        img = cv2.cvtColor(
            cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v))), cv2.COLOR_HSV2BGR
        )
    if "alpha" in ph:
        img = cv2.convertScaleAbs(img, alpha=ph["alpha"], beta=ph["beta"])
    if s := ph.get("blur_sigma"):
        img = cv2.GaussianBlur(img, (0, 0), s)
    if s := ph.get("noise_std"):
        noise = np.random.default_rng(ph["noise_seed"]).normal(0, s, img.shape)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    for name, fn in registry.CUSTOM_OPS.items():
        if name in ph:
            img = fn(img, ph[name], np.random.default_rng(ph[f"{name}_seed"]))
    return img


def render_view(
    img: np.ndarray, objects: list[tuple[int, np.ndarray]], imgsz: int, params: ViewParams, min_visible: float
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]], np.ndarray]:
    """One view: (image imgsz x imgsz, [(cls, (4, 2) pixel corners)], 3x3 matrix source -> view)."""
    h, w = img.shape[:2]
    m = geometry.view_matrix(
        w,
        h,
        imgsz,
        params.degrees,
        params.scale,
        params.stretch,
        params.flip_lr,
        params.flip_ud,
        params.translate,
    )
    out = geometry.warp_image(img, m, (imgsz, imgsz))
    if params.photometric:
        out = apply_photometric(out, params.photometric)
    polys = [geometry.apply_matrix(p, m) for _, p in objects]
    keep, boxes, _ = geometry.clip_polygons(polys, imgsz, imgsz, min_visible)
    return out, [(objects[i][0], b) for i, b in zip(keep, boxes)], m


def _read(item: Item) -> np.ndarray:
    img = decode_image(item.image, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{item.image}: image cannot be decoded (corrupt or truncated)")
    return img


def run(cfg: AugmentConfig, log=print) -> Path:
    """Write the augmented dataset; returns its data.yaml."""
    registry.load_plugins(cfg.plugins)
    pipe = registry.get_pipeline(cfg.characteristics, cfg.environment, cfg.intensity)
    log(pipe.describe())
    # a folder or .txt list of unlabeled images is augmented as a train split without labels
    with as_dataset_yaml(cfg.data) as data:
        col = load_yolo(data, decode=True)  # every image fully decoded up front: a truncated file is named
    if col.n_errors:
        first = "\n  ".join(str(p) for p in col.problems if p.severity == "error")
        raise DataError(
            f"{cfg.data}: {col.n_errors} label/image errors; fix them first "
            f"(dinocache dataset validate {cfg.data} --fix OUT):\n  {first}"
        )
    if col.clipped:
        log(col.clipped_line())
    if "train" not in {it.split for it in col.items}:
        raise DataError(f"{cfg.data}: no 'train' split to augment")
    ext = "." + cfg.image_format
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if cfg.image_format == "jpg" else []
    workers = cfg.workers or min(8, max(1, (__import__("os").cpu_count() or 1)))
    inputs = sorted({it.image.parent for it in col.items})
    with staged_dir(Path(cfg.out), cfg.overwrite, protect=[col.root, *inputs]) as tmp:
        tasks, names_seen = [], {}
        for split in ("train", "val", "test"):
            items = [it for it in col.items if it.split == split]
            for idx, it in enumerate(items):
                stem = Path(dest_name(it, col.root)).with_suffix("").as_posix()
                n_views = cfg.views if split == "train" else 1
                for v in range(n_views):
                    name = (
                        f"images/{split}/{stem}_v{v}{ext}"
                        if split == "train"
                        else f"images/{split}/{stem}{ext}"
                    )
                    if name in names_seen:
                        raise DataError(f"{it.image} and {names_seen[name]} both map to {name}; rename one")
                    names_seen[name] = it.image
                tasks.append((split, idx, it, stem, n_views))

        def work(task):
            split, idx, it, stem, n_views = task
            img = _read(it)
            objs = [(o.cls, o.poly) for o in it.objects]
            records = []
            for v in range(n_views):
                plain = split != "train" or (cfg.include_original and v == 0)
                p = ViewParams() if plain else sample_view(pipe.ops, view_rng(cfg.seed, idx, v))
                view, boxes, m = render_view(img, objs, cfg.imgsz, p, cfg.min_visible)
                name = f"{split}/{stem}_v{v}" if split == "train" else f"{split}/{stem}"
                ip, lp = tmp / "images" / f"{name}{ext}", tmp / "labels" / f"{name}.txt"
                ip.parent.mkdir(parents=True, exist_ok=True)
                lp.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(ip), view, params):
                    raise DataError(f"cannot write {ip}")
                lp.write_text("".join(format_yolo_line(c, b, cfg.imgsz, cfg.imgsz) + "\n" for c, b in boxes))
                records.append(
                    {
                        "type": "view",
                        "image": f"images/{name}{ext}",
                        "source": it.image.resolve().relative_to(col.root).as_posix()
                        if col.root in it.image.resolve().parents
                        else str(it.image),
                        "split": split,
                        "view": v,
                        "matrix": [[round(float(x), 9) for x in row] for row in m],
                        "degrees": p.degrees,
                        "scale": p.scale,
                        "stretch": p.stretch,
                        "flip_lr": p.flip_lr,
                        "flip_ud": p.flip_ud,
                        "translate": list(p.translate),
                        "photometric": p.photometric,
                        "seed": [cfg.seed, idx, v] if not plain else None,
                        "boxes_in": len(objs),
                        "boxes_kept": len(boxes),
                    }
                )
            return records

        from tqdm import tqdm

        header = {
            "type": "header",
            "version": MANIFEST_VERSION,
            "source_data": str(Path(cfg.data).resolve()),
            "imgsz": cfg.imgsz,
            "config": to_dict(cfg),
            "pipeline": pipe.to_dict(),
            "matrix_convention": "3x3, source pixel edge coordinates -> view pixel edge coordinates",
        }
        n_views = n_in = n_kept = 0
        with open(tmp / "manifest.jsonl", "w") as f, ThreadPoolExecutor(workers) as ex:
            f.write(json.dumps(header) + "\n")
            for records in tqdm(ex.map(work, tasks), total=len(tasks), desc="augment", file=sys.stderr):
                for r in records:
                    f.write(json.dumps(r) + "\n")
                    n_views += 1
                    n_in += r["boxes_in"]
                    n_kept += r["boxes_kept"]
        splits = sorted({it.split for it in col.items})
        write_data_yaml(tmp, col.names, splits)
        save(cfg, tmp / "augment.yaml")
        (tmp / "pipeline.yaml").write_text(yaml.safe_dump(pipe.to_dict(), sort_keys=False))
    out = Path(cfg.out).resolve()
    log(f"wrote {n_views} images ({n_kept}/{n_in} boxes kept) to {out}; data: {out / 'data.yaml'}")
    return out / "data.yaml"


def read_manifest(path: str | Path) -> tuple[dict, list[dict]]:
    """(header, view records) of a manifest.jsonl."""
    lines = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines or lines[0].get("type") != "header":
        raise DataError(f"{path}: not an augment manifest (no header line)")
    return lines[0], lines[1:]


def main(argv: list[str] | None = None) -> int:
    """`dinocache augment --config config.json [key=value ...] [--show]`"""
    ap = argparse.ArgumentParser(prog="dinocache augment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="config.json (section 'augment')")
    ap.add_argument("--show", action="store_true", help="print the composed pipeline and exit")
    ap.add_argument("--list", action="store_true", help="list known characteristics and exit")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. views=2 seed=1")
    args = ap.parse_args(argv)
    try:
        cfg = load(AugmentConfig, args.config, "augment", args.overrides)
        if args.list:
            registry.load_plugins(cfg.plugins)
            for c in registry.known_characteristics():
                ops = ", ".join(f"{e.op}{' (cap)' if e.cap else ''}" for e in registry.entries(c))
                why = "; ".join(e.reason for e in registry.entries(c) if e.reason)
                print(f"{c:<22} {ops:<32} {why}")
            print("environment:", ", ".join(f"{k}: {'|'.join(v)}" for k, v in registry.ENVIRONMENT.items()))
            return 0
        if args.show:
            registry.load_plugins(cfg.plugins)
            print(registry.get_pipeline(cfg.characteristics, cfg.environment, cfg.intensity).describe())
            return 0
        run(cfg)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
