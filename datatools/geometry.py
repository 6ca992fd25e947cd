"""Exact geometry shared by augment and tile: one 3x3 matrix per output image, applied to the pixels
(cv2.warpAffine) and to the oriented-box polygons (the same matrix), then clipping with shapely.

Coordinates: labels live in *edge* coordinates (pixel i spans [i, i+1), a normalised label times the
image size), while OpenCV's warpAffine maps pixel *centres* (pixel i sits at i). Every matrix here is
built in edge coordinates and converted once with `to_cv_matrix`, so a polygon drawn into the image
lands exactly where its transformed label says.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon, box

# Ultralytics pads letterboxes and warps with this grey; the augmented views match it.
PAD_VALUE = 114


def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def scaling(sx: float, sy: float | None = None) -> np.ndarray:
    return np.diag([sx, sx if sy is None else sy, 1.0])


def rotation(degrees: float) -> np.ndarray:
    """Counter-clockwise on screen (y points down), like cv2.getRotationMatrix2D."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def letterbox_matrix(w: int, h: int, imgsz: int) -> np.ndarray:
    """Scale the long side to `imgsz` and centre the image on an imgsz x imgsz canvas."""
    r = imgsz / max(w, h)
    return translation((imgsz - w * r) / 2, (imgsz - h * r) / 2) @ scaling(r)


def view_matrix(
    w: int,
    h: int,
    imgsz: int,
    degrees: float = 0.0,
    scale: float = 1.0,
    stretch: float = 1.0,
    flip_lr: bool = False,
    flip_ud: bool = False,
    translate: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Source pixels -> view pixels: letterbox, then about the canvas centre scale (x by
    scale*stretch, y by scale/stretch), rotate, flip, and finally translate by a fraction of imgsz."""
    about = centre_matrix(imgsz, imgsz, degrees, scale, stretch, flip_lr, flip_ud, translate)
    return about @ letterbox_matrix(w, h, imgsz)


def centre_matrix(
    w: int,
    h: int,
    degrees: float = 0.0,
    scale: float = 1.0,
    stretch: float = 1.0,
    flip_lr: bool = False,
    flip_ud: bool = False,
    translate: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """A w x h image onto itself: about its centre scale (x by scale*stretch, y by scale/stretch), rotate,
    flip, then translate by a fraction of the width / height."""
    cx, cy = w / 2, h / 2
    flip = np.diag([-1.0 if flip_lr else 1.0, -1.0 if flip_ud else 1.0, 1.0])
    about_centre = flip @ rotation(degrees) @ scaling(scale * stretch, scale / stretch)
    return (
        translation(translate[0] * w, translate[1] * h)
        @ translation(cx, cy)
        @ about_centre
        @ translation(-cx, -cy)
    )


def to_cv_matrix(m: np.ndarray) -> np.ndarray:
    """Edge-coordinate matrix -> the 2x3 matrix warpAffine wants (pixel-centre coordinates)."""
    return (translation(-0.5, -0.5) @ m @ translation(0.5, 0.5))[:2]


def warp_image(image: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp `image` with the edge-coordinate matrix `m` onto a (width, height) = `size` canvas."""
    value = (PAD_VALUE,) * (image.shape[2] if image.ndim == 3 else 1)
    return cv2.warpAffine(
        image,
        to_cv_matrix(m),
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=value,
    )


def apply_matrix(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(..., 2) points through a 3x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:2, :2].T + m[:2, 2]


def min_area_box(points: np.ndarray) -> np.ndarray:
    """(K, 2) points -> (4, 2) corners of their minimum-area rotated rectangle."""
    rect = cv2.minAreaRect(np.asarray(points, dtype=np.float32).reshape(-1, 1, 2))
    return cv2.boxPoints(rect).astype(np.float64)


def is_rectangle(poly: np.ndarray, tol: float = 1e-3) -> bool:
    """4 corners with right angles (a stretch or shear turns a rotated box into a parallelogram)."""
    if len(poly) != 4:
        return False
    e = np.roll(poly, -1, axis=0) - poly
    n = np.linalg.norm(e, axis=1)
    if (n <= 0).any():
        return False
    cos = np.abs(np.sum(e * np.roll(e, -1, axis=0), axis=1)) / (n * np.roll(n, -1))
    return bool((cos < tol).all())


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def clip_polygons(
    polys: list[np.ndarray], width: float, height: float, min_visible: float, region: tuple | None = None
) -> tuple[list[int], list[np.ndarray], list[float]]:
    """Clip pixel polygons to the image (or to `region` = (x0, y0, x1, y1) inside it).

    Returns (kept indices, their 4-corner boxes, visible fractions). A polygon wholly inside keeps its
    own corners (exact; a parallelogram from a stretch becomes its minimum-area rectangle); one cut by the border becomes the minimum-area rotated rectangle of the visible
    part, with its corners clipped to the image, which is what Ultralytics' own `Instances.clip` does
    to warped OBB corners. Polygons with visible fraction < `min_visible` are dropped.
    """
    x0, y0, x1, y1 = region if region is not None else (0.0, 0.0, width, height)
    frame = box(x0, y0, x1, y1)
    keep, boxes, fracs = [], [], []
    for i, poly in enumerate(polys):
        p = Polygon(poly)
        if not p.is_valid:
            p = shapely.make_valid(p)
        area = p.area
        if area <= 1e-9:
            continue
        if frame.contains(p):
            keep.append(i)
            boxes.append(poly if is_rectangle(poly) else min_area_box(poly))
            fracs.append(1.0)
            continue
        vis = p.intersection(frame)
        frac = vis.area / area
        if frac < min_visible or vis.is_empty or vis.area <= 1e-9:
            continue
        pts = np.asarray(shapely.get_coordinates(vis))
        corners = min_area_box(pts)
        corners[:, 0] = corners[:, 0].clip(x0, x1)
        corners[:, 1] = corners[:, 1].clip(y0, y1)
        keep.append(i)
        boxes.append(corners)
        fracs.append(float(frac))
    return keep, boxes, fracs
