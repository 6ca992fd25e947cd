"""The embedded default dataset: synthetic rotated shapes on cluttered backgrounds, in YOLO-OBB layout.

    dinocache demo-data OUT [--train 64] [--val 16] [--imgsz 256] [--seed 0] [--overwrite]

Writes OUT/images/{train,val}/NNNNNN.png (square, imgsz), OUT/labels/{train,val}/NNNNNN.txt with lines
`cls x1 y1 x2 y2 x3 y3 x4 y4` (corners of the rotated rectangle enclosing the shape, normalised to
[0, 1]) and OUT/data.yaml (train/val/names, no `path:`). Everything is drawn from a seeded numpy RNG per
(seed, split, index), so the same seed gives byte-identical PNGs and adding images never changes the
existing ones.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from dinocache.core.config import Config, ConfigError, build, require, save
from dinocache.core.errors import DinocacheError
from dinocache.core.fsutil import publish_dir

# Class names, index = class id. Colour is drawn independently of the class, so only shape tells them apart.
CLASSES = ("rectangle", "ellipse", "cross", "triangle", "L-shape")
SPLITS = {"train": 0, "val": 1}  # split -> RNG stream id


@dataclass
class DemoDataConfig(Config):
    # output folder (refused when it exists and is not empty, unless overwrite)
    out: Path = Path("dataset")
    # number of training images
    n_train: Annotated[int, Field(ge=1)] = 64
    # number of validation images
    n_val: Annotated[int, Field(ge=1)] = 16
    # image side in pixels (square images)
    imgsz: Annotated[int, Field(ge=32, le=8192)] = 256
    # RNG seed: same seed -> byte-identical dataset
    seed: Annotated[int, Field(ge=0)] = 0
    # fewest / most objects in a non-empty image
    min_objects: Annotated[int, Field(ge=0)] = 1
    max_objects: Annotated[int, Field(le=50)] = 6
    # fraction of images with no object at all (pure background, empty label file)
    empty_frac: Annotated[float, Field(ge=0, le=1)] = 0.05
    # object long side as a fraction of imgsz, drawn log-uniformly in [min_size, max_size]
    min_size: Annotated[float, Field(ge=0.02)] = 0.08
    # (at most 0.7 so shapes fit inside)
    max_size: Annotated[float, Field(le=0.7)] = 0.40
    # replace a non-empty `out`
    overwrite: bool = False

    def validate(self) -> None:
        require(self.min_objects <= self.max_objects, "min_objects", "must be in [0, max_objects]")
        require(self.min_size <= self.max_size, "min_size", "must be in [0.02, max_size]")


# ---------------------------------------------------------------------------------------------- shapes
# Each shape is a polygon in its own frame: u along the box width, v along the height, centred on the
# box, inside [-w/2, w/2] x [-h/2, h/2]; its label is that w x h box rotated by the same angle.


def _shape_polygon(cls: int, w: float, h: float, rng: np.random.Generator) -> np.ndarray:
    """(P, 2) polygon of class `cls` in the local (u, v) frame, touching all four sides of the box."""
    hw, hh = w / 2, h / 2
    if cls == 0:  # rectangle
        return np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    if cls == 1:  # ellipse, as a fine polygon so it goes through the same transform as the rest
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        return np.stack([hw * np.cos(t), hh * np.sin(t)], 1)
    if cls == 2:  # cross (plus sign) with arms of thickness a
        a = rng.uniform(0.25, 0.4) * min(w, h) / 2
        return np.array(
            [[-a, -hh], [a, -hh], [a, -a], [hw, -a], [hw, a], [a, a], [a, hh], [-a, hh], [-a, a],
             [-hw, a], [-hw, -a], [-a, -a]]
        )  # fmt: skip
    if cls == 3:  # triangle: base on one long side, apex anywhere along the opposite side
        apex = rng.uniform(-hw, hw)
        return np.array([[-hw, hh], [hw, hh], [apex, -hh]])
    if cls == 4:  # "L": vertical bar on the left, horizontal bar at the bottom
        t = rng.uniform(0.25, 0.45) * min(w, h)
        return np.array([[-hw, -hh], [-hw + t, -hh], [-hw + t, hh - t], [hw, hh - t], [hw, hh], [-hw, hh]])
    raise ValueError(f"unknown class {cls}")


def _to_image(poly: np.ndarray, cx: float, cy: float, angle_deg: float) -> np.ndarray:
    """Local (u, v) -> image (x, y), y down; the same convention as cv2.boxPoints for this angle."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, -s], [s, c]])
    return poly @ rot.T + np.array([cx, cy])


def _fill(img: np.ndarray, pts: np.ndarray, color: tuple[int, int, int]) -> None:
    import cv2

    shift = 4  # sub-pixel vertices: 1/16 px, so small shapes keep their geometry
    p = np.round(pts * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(img, [p], color, lineType=cv2.LINE_AA, shift=shift)


# ------------------------------------------------------------------------------------------ background


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, ch: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a small random grid upsampled bicubically."""
    import cv2

    g = rng.uniform(-1, 1, (cells, cells, ch)).astype(np.float32)
    up = cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(up.reshape(size, size, ch), -1, 1)


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """(s, s, 3) float32 BGR in [0, 255]: gradient + blotches + lines/blobs, so shapes don't pop out trivially."""
    import cv2

    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / max(s - 1, 1)
    t = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    img += rng.uniform(15, 45) * _smooth_noise(rng, s, int(rng.integers(3, 7)), 3)
    img += rng.uniform(5, 20) * _smooth_noise(rng, s, int(rng.integers(12, 24)), 1)
    img = np.ascontiguousarray(img, dtype=np.float32)
    # Clutter: thin lines and irregular blobs in random colours (never labelled).
    for _ in range(int(rng.integers(2, 10))):
        p0, p1 = rng.uniform(-0.1, 1.1, 2) * s, rng.uniform(-0.1, 1.1, 2) * s
        th = max(1, int(round(rng.uniform(0.004, 0.015) * s)))
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), col, th, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 5))):
        n = int(rng.integers(5, 9))
        r = rng.uniform(0.02, 0.08) * s
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.4, 1.0, n)
        c = rng.uniform(0, s, 2)
        pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1)
        _fill(img, pts, tuple(float(v) for v in rng.uniform(0, 255, 3)))
    return img


def _object_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[float, float, float]:
    """A random colour at least a moderate distance from the mean background under the shape."""
    best, best_d = None, -1.0
    for _ in range(20):
        col = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(col - under))
        if d > 70:
            return tuple(float(v) for v in col)
        if d > best_d:
            best, best_d = col, d
    return tuple(float(v) for v in best)


# ------------------------------------------------------------------------------------------------ image


def render_image(
    rng: np.random.Generator, cfg: DemoDataConfig
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One sample: (s, s, 3) uint8 BGR image and [(cls, (4, 2) corners in pixels)]."""
    import cv2
    from shapely.geometry import Polygon

    s = cfg.imgsz
    img = _background(rng, s)
    empty = rng.random() < cfg.empty_frac
    n = 0 if empty else int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed: list[Polygon] = []
    labels: list[tuple[int, np.ndarray]] = []
    for _ in range(n):
        for _try in range(30):
            cls = int(rng.integers(len(CLASSES)))
            long_side = math.exp(rng.uniform(math.log(cfg.min_size), math.log(cfg.max_size))) * s
            # Rectangles/ellipses may be thin; cross/triangle/L need some width to stay recognisable.
            short = long_side * (rng.uniform(0.3, 1.0) if cls in (0, 1) else rng.uniform(0.55, 1.0))
            w, h = (long_side, short) if rng.random() < 0.5 else (short, long_side)
            angle = float(rng.uniform(0, 180))
            a = math.radians(angle)
            ex = abs(w * math.cos(a)) + abs(h * math.sin(a))  # axis-aligned extent of the rotated box
            ey = abs(w * math.sin(a)) + abs(h * math.cos(a))
            if ex > s - 4 or ey > s - 4:
                continue
            cx = rng.uniform(ex / 2 + 1, s - ex / 2 - 1)
            cy = rng.uniform(ey / 2 + 1, s - ey / 2 - 1)
            box = cv2.boxPoints(((cx, cy), (w, h), angle)).astype(np.float64)  # (4, 2)
            poly = Polygon(box)
            # Small overlaps only: occlusion should stay partial so every label is still learnable.
            if any(poly.intersection(q).area > 0.1 * min(poly.area, q.area) for q in placed):
                continue
            shape = _to_image(_shape_polygon(cls, w, h, rng), cx, cy, angle)
            mask = np.zeros((s, s), np.uint8)
            _fill(mask, shape, (255,))
            under = img[mask > 0].mean(0) if mask.any() else img.reshape(-1, 3).mean(0)
            col = _object_colour(rng, under)
            # Slight per-object shading so shapes are not flat stickers.
            _fill(img, shape, col)
            if rng.random() < 0.5:
                inner = _to_image(_shape_polygon(cls, w, h, rng) * rng.uniform(0.4, 0.8), cx, cy, angle)
                shade = tuple(float(np.clip(v * rng.uniform(0.75, 1.25), 0, 255)) for v in col)
                _fill(img, inner, shade)
            placed.append(poly)
            labels.append((cls, np.clip(box, 0, s)))
            break
    # Sensor-like noise and a touch of blur over everything, objects included.
    img += rng.normal(0, rng.uniform(4, 14), img.shape).astype(np.float32)
    k = float(rng.uniform(0.0, 0.9))
    if k > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), k)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), labels


def _label_text(labels: list[tuple[int, np.ndarray]], s: int) -> str:
    lines = []
    for cls, box in labels:
        xy = np.clip(box / s, 0.0, 1.0).reshape(-1)
        lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in xy))
    return "\n".join(lines) + ("\n" if lines else "")


def _data_yaml() -> str:
    import yaml

    return yaml.safe_dump(
        {"train": "images/train", "val": "images/val", "names": dict(enumerate(CLASSES))}, sort_keys=False
    )


def write_dataset(cfg: DemoDataConfig) -> Path:
    import cv2

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"out: {out} exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        for split, n in (("train", cfg.n_train), ("val", cfg.n_val)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for i in range(n):
                # One stream per image: images don't depend on how many others were asked for.
                rng = np.random.default_rng([cfg.seed, SPLITS[split], i])
                img, labels = render_image(rng, cfg)
                name = f"{i:06d}"
                ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 6])
                if not ok:  # pragma: no cover - cv2 failure
                    raise OSError(f"cv2 could not encode {split}/{name}.png")
                (tmp / "images" / split / f"{name}.png").write_bytes(buf.tobytes())
                (tmp / "labels" / split / f"{name}.txt").write_text(_label_text(labels, cfg.imgsz))
        (tmp / "data.yaml").write_text(_data_yaml())
        save(cfg, tmp / "demo_data_args.yaml")
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def make_demo_dataset(
    root: str | Path,
    n_train: Annotated[int, Field(ge=1)] = 64,
    n_val: Annotated[int, Field(ge=1)] = 16,
    imgsz: Annotated[int, Field(ge=32, le=8192)] = 256,
    seed: Annotated[int, Field(ge=0)] = 0,
    overwrite: bool = False,
    **options: object,
) -> Path:
    """Write the synthetic OBB dataset to `root` and return `Path(root)` (data.yaml is `root/data.yaml`).

    `options` are the other DemoDataConfig fields (min_objects, max_objects, empty_frac, min_size, max_size).
    """
    values = dict(
        out=root, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed, overwrite=overwrite, **options
    )
    return write_dataset(build(DemoDataConfig, values, "make_demo_dataset"))


def main(argv: list[str] | None = None) -> int:
    """`dinocache demo-data OUT [--train 64] [--val 16] [--imgsz 256] [--seed 0] [--overwrite] [key=value ...]`"""
    ap = argparse.ArgumentParser(prog="dinocache demo-data", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output dataset folder")
    ap.add_argument("--train", default="64", help="number of training images (default 64)")
    ap.add_argument("--val", default="16", help="number of validation images (default 16)")
    ap.add_argument("--imgsz", default="256", help="square image side in pixels (default 256)")
    ap.add_argument("--seed", default="0", help="RNG seed (default 0)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    ap.add_argument(
        "options",
        nargs="*",
        help="other options as key=value: min_objects, max_objects, empty_frac, min_size, max_size",
    )
    args = ap.parse_args(argv)
    try:
        from dinocache.core.config import parse_overrides

        values = {
            "out": args.out,
            "n_train": args.train,
            "n_val": args.val,
            "imgsz": args.imgsz,
            "seed": args.seed,
            "overwrite": args.overwrite,
        }
        values.update(parse_overrides(args.options))
        cfg = build(DemoDataConfig, values, "command line")
        out = write_dataset(cfg)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {cfg.n_train} train + {cfg.n_val} val images ({cfg.imgsz}px, {len(CLASSES)} classes, "
        f"seed {cfg.seed}) to {out}; data: {(out / 'data.yaml').resolve()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())


def make_demo_coco(
    out: str | Path,
    n: int = 12,
    imgsz: int = 128,
    seed: Annotated[int, Field(ge=0)] = 0,
    masks: bool = True,
    name: str = "annotations",
) -> Path:
    """A tiny COCO instances set for teacher fine-tuning: `out/images/NNNNNN.png` and `out/<name>.json` with
    a bbox per object and, when `masks`, its polygon `segmentation` (the drawn shape itself). Returns the
    JSON path. Seeded: the same arguments give the same files."""
    import json

    import cv2

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES[:3])]
    for i in range(n):
        img = (rng.random((imgsz, imgsz, 3)) * 60 + 40).astype(np.uint8)
        fname = f"images/{i:06d}.png"
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(0, len(cats)))
            r = float(rng.uniform(0.12, 0.25)) * imgsz
            cx, cy = rng.uniform(r, imgsz - r, 2)
            k = (4, 40, 3)[c]  # rectangle-ish, ellipse-ish, triangle
            t = (
                np.sort(rng.uniform(0, 2 * math.pi, k))
                if c != 1
                else np.linspace(0, 2 * math.pi, k, endpoint=False)
            )
            rr = r * (rng.uniform(0.7, 1.0, k) if c != 1 else 1.0)
            pts = np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t) * (0.6 if c == 1 else 1.0)], 1)
            pts = np.clip(pts, 0, imgsz - 1)
            cv2.fillPoly(
                img, [pts.round().astype(np.int32)], tuple(int(v) for v in rng.integers(120, 255, 3))
            )
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            a = {
                "id": len(anns) + 1,
                "image_id": i + 1,
                "category_id": cats[c]["id"],
                "bbox": [
                    round(float(x0), 2),
                    round(float(y0), 2),
                    round(float(x1 - x0), 2),
                    round(float(y1 - y0), 2),
                ],
                "area": float(cv2.contourArea(pts.astype(np.float32))),
                "iscrowd": 0,
            }
            if masks:
                a["segmentation"] = [[round(float(v), 2) for v in pts.reshape(-1)]]
            anns.append(a)
        cv2.imwrite(str(out / fname), img)
        images.append({"id": i + 1, "file_name": fname, "width": imgsz, "height": imgsz})
    path = out / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path
