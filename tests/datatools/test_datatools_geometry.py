"""Box transforms are exact: draw a box, augment the image, re-detect the box with OpenCV, compare."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from dinocache.datatools import geometry
from dinocache.datatools.augment import ViewParams, render_view


def detect_box(img: np.ndarray, bg: int, up: int = 4) -> np.ndarray:
    """Corners (4, 2) in edge coordinates of the single bright box in `img` (4x upsampled for sub-pixel)."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    g = cv2.resize(g, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    mask = (g > (bg + 255) / 2).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    pts = (c + 0.5) / up  # upsampled pixel centre -> source edge coordinates
    return cv2.boxPoints(cv2.minAreaRect(pts.astype(np.float32))).astype(np.float64)


def corner_error(a: np.ndarray, b: np.ndarray) -> float:
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return float(max(d.min(1).max(), d.min(0).max()))


@pytest.mark.parametrize(
    "params",
    [
        ViewParams(),
        ViewParams(degrees=33.0),
        ViewParams(degrees=-70.0, flip_lr=True),
        ViewParams(degrees=12.0, scale=0.8, flip_ud=True, translate=(0.05, -0.04)),
        ViewParams(scale=1.2, stretch=1.15, degrees=150.0),
    ],
    ids=["letterbox", "rot", "rot+fliplr", "rot+scale+flipud+shift", "stretch"],
)
def test_box_transform_matches_pixels(synth, params):
    w, h = 300, 200  # not square: the letterbox is part of the matrix
    box = synth.rotated_box(150, 100, 90, 40, 25)
    img = synth.draw_boxes((w, h), [(0, box)])
    assert corner_error(detect_box(img, synth.BG), box) < 1.0  # the detector itself is exact
    view, boxes, m = render_view(img, [(0, box)], 256, params, min_visible=0.5)
    assert view.shape == (256, 256, 3)
    assert len(boxes) == 1
    if params.stretch == 1.0:  # a similarity keeps the corners themselves
        assert np.allclose(boxes[0][1], geometry.apply_matrix(box, m))
    assert corner_error(detect_box(view, synth.BG), boxes[0][1]) < 1.5


def test_clipped_box_becomes_visible_part_and_small_remnants_drop(synth):
    w = h = 200
    box = synth.rotated_box(30, 100, 120, 40, 0)  # 90..150 wide in x from -30: half outside on the left
    img = synth.draw_boxes((w, h), [(0, box)])
    _, boxes, _ = render_view(img, [(0, box)], 200, ViewParams(translate=(-0.0, 0.0)), min_visible=0.5)
    # 1/4 of it (x in [-30, 0)) is cut off: kept, replaced by the visible part x in [0, 90]
    assert len(boxes) == 1
    xs = boxes[0][1][:, 0]
    assert xs.min() == pytest.approx(0.0, abs=1e-6) and xs.max() == pytest.approx(90.0, abs=1e-4)
    _, boxes, _ = render_view(img, [(0, box)], 200, ViewParams(), min_visible=0.8)
    assert boxes == []


def test_clip_keeps_rotated_corners_inside_the_image(synth):
    poly = synth.rotated_box(5, 50, 60, 30, 45)  # diamond-ish box cut by the left border
    keep, boxes, fracs = geometry.clip_polygons([poly], 100, 100, 0.3)
    assert keep == [0] and 0.3 <= fracs[0] < 1
    assert boxes[0].min() >= 0 and boxes[0].max() <= 100


def test_to_cv_matrix_identity_is_identity():
    m = geometry.to_cv_matrix(np.eye(3))
    assert np.allclose(m, np.eye(3)[:2])
