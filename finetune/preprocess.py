"""Multi-model preprocessing: each teacher gets its own input size and normalisation from one image.

    pre = create_preprocessor_from_models(["grounding_dino", "sam"])
    out = pre.preprocess_batch(image)      # {"grounding_dino": (tensor, metadata), "sam": (tensor, metadata)}

- grounding_dino: aspect-preserving resize like GroundingDinoImageProcessor (shortest edge 800, longest at most
  1333), ImageNet normalisation; a batch is padded bottom-right to its largest image, `pixel_mask` marks the
  real pixels (what the model's `pixel_mask` argument takes).
- sam: longest side resized to 1024 and padded bottom-right to 1024 x 1024, like SamProcessor.
- yolo: letterboxed square (Ultralytics' LetterBox), pixels in [0, 1].

Sizes and normalisation come from `configs/defaults/preprocessing.yaml`, overridden per model by `config`
(e.g. a checkpoint processor's own values). Images are RGB uint8 (H, W, 3).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

MODELS = ("grounding_dino", "sam", "yolo")


def shortest_edge_size(h: int, w: int, shortest: int, longest: int) -> tuple[int, int]:
    """(out_h, out_w): the shorter side to `shortest` unless the longer would pass `longest` (then the longer
    side is `longest`), aspect kept: transformers' own rule for Grounding DINO's processor, called here."""
    from transformers.models.grounding_dino.image_processing_grounding_dino import get_size_with_aspect_ratio

    return get_size_with_aspect_ratio((h, w), shortest, longest)


def _resize(img: np.ndarray, oh: int, ow: int) -> np.ndarray:
    if img.shape[:2] == (oh, ow):
        return img
    down = oh * ow < img.shape[0] * img.shape[1]
    return cv2.resize(img, (ow, oh), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)


def _normalise(img: np.ndarray, mean: Any, std: Any) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255)  # (3, h, w) in [0, 1]
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


class MultiModelPreprocessor:
    """One image -> each active model's input tensor and the metadata that maps its pixels back."""

    def __init__(self, active_models: list[str], config: dict[str, dict[str, Any]] | None = None) -> None:
        from dinocache.finetune.defaults import preprocessing_defaults

        bad = [m for m in active_models if m not in MODELS]
        if bad:
            raise ValueError(f"preprocessor: unknown model(s) {bad}; known: {list(MODELS)}")
        base = preprocessing_defaults()
        self.active_models = list(active_models)
        self.config = {m: {**base.get(m, {}), **(config or {}).get(m, {})} for m in self.active_models}

    def preprocess(self, image: np.ndarray) -> dict[str, tuple[torch.Tensor, dict[str, Any]]]:
        """(H, W, 3) RGB uint8 -> {model: ((3, h, w) float tensor, metadata)}."""
        return {m: getattr(self, f"_{m}")(image, self.config[m]) for m in self.active_models}

    def preprocess_batch(
        self, images: np.ndarray | list[np.ndarray]
    ) -> dict[str, tuple[torch.Tensor, dict[str, Any]]]:
        """One image or a list -> {model: ((B, 3, H, W) tensor, metadata)}; metadata holds each image's
        entries as lists and, for grounding_dino, `pixel_mask` (B, H, W) of the real (unpadded) pixels."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        per = [self.preprocess(im) for im in images]
        out: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
        for m in self.active_models:
            xs = [p[m][0] for p in per]
            hh, ww = max(x.shape[1] for x in xs), max(x.shape[2] for x in xs)
            batch = torch.zeros(len(xs), 3, hh, ww)
            mask = torch.zeros(len(xs), hh, ww, dtype=torch.long)
            for i, x in enumerate(xs):
                batch[i, :, : x.shape[1], : x.shape[2]] = x
                h, w = per[i][m][1]["content_size"]
                mask[i, :h, :w] = 1
            meta = {k: [p[m][1][k] for p in per] for k in per[0][m][1]}
            meta["pixel_mask"] = mask
            meta["batch_size"] = (hh, ww)
            out[m] = (batch, meta)
        return out

    # -- per model: (3, h, w) tensor, metadata {original_size, content_size, scale, pad}
    @staticmethod
    def _grounding_dino(image: np.ndarray, c: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        h, w = image.shape[:2]
        oh, ow = shortest_edge_size(h, w, int(c["shortest_edge"]), int(c["longest_edge"]))
        x = _normalise(_resize(image, oh, ow), c["image_mean"], c["image_std"])
        return x, {
            "original_size": (h, w),
            "content_size": (oh, ow),
            "scale": (ow / w, oh / h),
            "pad": (0, 0),
        }

    @staticmethod
    def _sam(image: np.ndarray, c: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        h, w = image.shape[:2]
        r = int(c["longest_edge"]) / max(h, w)
        oh, ow = int(h * r + 0.5), int(w * r + 0.5)
        side = int(c["pad_size"])
        x = torch.zeros(3, side, side)  # padded with zeros after normalisation, as SamProcessor pads
        x[:, :oh, :ow] = _normalise(_resize(image, oh, ow), c["image_mean"], c["image_std"])
        return x, {
            "original_size": (h, w),
            "content_size": (oh, ow),
            "scale": (ow / w, oh / h),
            "pad": (0, 0),
        }

    @staticmethod
    def _yolo(image: np.ndarray, c: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        from dinocache.finetune.dataset import letterbox

        h, w = image.shape[:2]
        side = int(c["imgsz"])
        img, r, pad = letterbox(image, side)
        x = _normalise(img, c["image_mean"], c["image_std"])
        return x, {"original_size": (h, w), "content_size": (side, side), "scale": (r, r), "pad": pad}


def create_preprocessor_from_models(
    models: list[str], config: dict[str, dict[str, Any]] | None = None
) -> MultiModelPreprocessor:
    """The seed's factory: a preprocessor for the models `get_required_models` chose."""
    return MultiModelPreprocessor(models, config)
