"""The augmentation registry as the teacher-training guide uses it: a registry object whose pipelines are
callable on an image with its masks and boxes.

    registry = get_augmentation_registry()
    pipeline = registry.get_pipeline(characteristics=["changes_shape"], environment={"lighting": "variable"})
    out = pipeline(image=img, masks=masks, bboxes=boxes)   # {"image", "masks", "bboxes", "keep", "matrix"}

The spec is `registry.get_pipeline`'s; one draw is `augment.sample_view` + `augment.apply_photometric`, the
geometry `geometry.centre_matrix` (the image keeps its size), the same code `dinocache augment` runs.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from dinocache.datatools import geometry, registry
from dinocache.datatools.augment import apply_photometric, sample_view


class AugmentPipeline(registry.Pipeline):
    """A registry pipeline spec that applies itself."""

    def __call__(
        self,
        image: Any,
        masks: Any = None,
        bboxes: Any = None,
        rng: Any = None,
        min_visible: float = 0.3,
    ) -> dict[str, Any]:
        """Apply one random draw of the pipeline to an image with its masks and boxes, all moved by the same
        matrix (the image keeps its size; uncovered pixels are grey 114, masks 0).

        image: (H, W, 3) uint8 in OpenCV's BGR order (the photometric ops assume it); masks: (H, W) arrays
        (or an (N, H, W) array); bboxes: (N, 4) pixel xyxy. Returns {"image", "masks" (same order, nearest
        resampling), "bboxes" ((M, 4) float xyxy: the axis-aligned hull of each moved box, clipped to the
        image), "keep" (indices of the boxes kept: at least `min_visible` of their moved area inside),
        "matrix" (3x3 source -> output, edge coordinates)}. `rng`: a numpy Generator or a seed."""

        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        v = sample_view(self.ops, gen)
        h, w = image.shape[:2]
        m = geometry.centre_matrix(w, h, v.degrees, v.scale, v.stretch, v.flip_lr, v.flip_ud, v.translate)
        out = geometry.warp_image(image, m, (w, h))
        if v.photometric:
            out = apply_photometric(out, v.photometric)
        moved_masks = None
        if masks is not None:
            moved_masks = [
                cv2.warpAffine(
                    np.asarray(mk).astype(np.uint8),
                    geometry.to_cv_matrix(m),
                    (w, h),
                    flags=cv2.INTER_NEAREST,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0,
                ).astype(np.asarray(mk).dtype)
                for mk in masks
            ]
        boxes_out = np.zeros((0, 4), np.float32)
        keep: list[int] = []
        if bboxes is not None and len(bboxes):
            b = np.asarray(bboxes, np.float64).reshape(-1, 4)
            corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], 1)  # (N, 4, 2)
            moved = geometry.apply_matrix(corners, m)
            lo, hi = moved.min(1), moved.max(1)  # (N, 2) axis-aligned hull
            area = np.prod(hi - lo, 1)
            clo, chi = lo.clip(0, [w, h]), hi.clip(0, [w, h])
            vis = np.prod((chi - clo).clip(0), 1)
            keep = [i for i in range(len(b)) if area[i] > 0 and vis[i] >= min_visible * area[i]]
            boxes_out = np.concatenate([clo, chi], 1)[keep].astype(np.float32)
        return {"image": out, "masks": moved_masks, "bboxes": boxes_out, "keep": keep, "matrix": m}


class AugmentationRegistry:
    """The registry of datatools/registry.py as an object; its pipelines are AugmentPipelines."""

    @staticmethod
    def get_pipeline(
        characteristics: list[str] | tuple[str, ...] = (),
        environment: dict[str, str] | None = None,
        intensity: str = "medium",
    ) -> AugmentPipeline:
        spec = registry.get_pipeline(characteristics, environment, intensity)
        return AugmentPipeline(spec.ops, spec.sources, spec.characteristics, spec.environment, spec.intensity)

    register = staticmethod(registry.register)
    register_op = staticmethod(registry.register_op)
    known_characteristics = staticmethod(registry.known_characteristics)
    load_plugins = staticmethod(registry.load_plugins)


def get_augmentation_registry() -> AugmentationRegistry:
    """The registry with its built-in entries and plugins (entry points loaded once)."""
    registry.load_plugins()
    return AugmentationRegistry()
