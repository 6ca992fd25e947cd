"""Small synthetic datasets for the datatools tests (filled rotated boxes whose corners are the labels)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

BG = 114  # same grey as the letterbox padding, so a threshold sees only the drawn boxes
COLORS = [(255, 255, 255), (60, 220, 250), (250, 80, 200)]


def rotated_box(cx: float, cy: float, w: float, h: float, deg: float) -> np.ndarray:
    return cv2.boxPoints(((cx, cy), (w, h), deg)).astype(np.float64)


def draw_boxes(size: tuple[int, int], boxes: list[tuple[int, np.ndarray]], up: int = 8) -> np.ndarray:
    """Filled boxes, anti-aliased by area: drawn at `up`x resolution, then averaged down (INTER_AREA),
    so a label corner in edge coordinates is where the pixels say (cv2's LINE_AA fill is ~1 px off)."""
    w, h = size
    img = np.full((h * up, w * up, 3), BG, np.uint8)
    for cls, pts in boxes:
        # fillPoly takes pixel centres: edge coordinate x*up -> centre x*up - 0.5; 4 bits of sub-pixel
        p = np.round((pts * up - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(img, [p], COLORS[cls % len(COLORS)], lineType=cv2.LINE_8, shift=4)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def random_boxes(rng: np.random.Generator, w: int, h: int, n: int, nc: int) -> list[tuple[int, np.ndarray]]:
    out = []
    for _ in range(n):
        bw, bh = rng.uniform(0.12, 0.25) * min(w, h), rng.uniform(0.06, 0.12) * min(w, h)
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        out.append((int(rng.integers(nc)), rotated_box(cx, cy, bw, bh, rng.uniform(0, 90))))
    return out


def yolo_line(cls: int, pts: np.ndarray, w: int, h: int) -> str:
    return f"{cls} " + " ".join(f"{v:.6f}" for v in (pts / [w, h]).reshape(-1))


def make_yolo(
    root: Path,
    n_train: int = 6,
    n_val: int = 2,
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
    nc: int = 2,
) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            boxes = random_boxes(rng, w, h, 2, nc)
            cv2.imwrite(str(root / "images" / split / f"im{i}.png"), draw_boxes(size, boxes))
            (root / "labels" / split / f"im{i}.txt").write_text(
                "".join(yolo_line(c, p, w, h) + "\n" for c, p in boxes)
            )
    names = {i: f"c{i}" for i in range(nc)}
    (root / "data.yaml").write_text(
        yaml.safe_dump({"train": "images/train", "val": "images/val", "names": names})
    )
    return root / "data.yaml"


def make_dota(root: Path, n: int = 3, size: tuple[int, int] = (1000, 800), seed: int = 0) -> Path:
    """A raw DOTA-style folder: images/ + labelTxt/ with pixel corners, class names, difficult flags."""
    rng = np.random.default_rng(seed)
    names = ["plane", "ship", "tank"]
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    w, h = size
    for i in range(n):
        boxes = []
        for _ in range(6):
            c = int(rng.integers(3))
            boxes.append(
                (
                    c,
                    rotated_box(
                        rng.uniform(60, w - 60),
                        rng.uniform(60, h - 60),
                        rng.uniform(40, 90),
                        rng.uniform(20, 40),
                        rng.uniform(0, 90),
                    ),
                )
            )
        cv2.imwrite(str(root / "images" / f"P{i:04d}.png"), draw_boxes(size, boxes))
        lines = ["imagesource:synthetic\n", "gsd:0.5\n"]
        for c, p in boxes:
            lines.append(
                " ".join(f"{v:.1f}" for v in p.reshape(-1)) + f" {names[c]} {int(rng.integers(2))}\n"
            )
        (root / "labelTxt" / f"P{i:04d}.txt").write_text("".join(lines))
    return root


@pytest.fixture
def yolo_data(tmp_path: Path) -> Path:
    return make_yolo(tmp_path / "ds")


@pytest.fixture(scope="session")
def synth():
    """The helpers above (test modules can't import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        rotated_box=rotated_box,
        draw_boxes=draw_boxes,
        random_boxes=random_boxes,
        yolo_line=yolo_line,
        make_yolo=make_yolo,
        make_dota=make_dota,
        BG=BG,
    )
