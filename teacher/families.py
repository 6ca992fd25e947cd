"""Teacher families other than the transformers DINOv3 ViT (teacher/model.py), behind the same interface
(`teacher.base.Teacher`).

Every teacher is a frozen `torch.nn.Module` with:

    family, channels, layer, mean, std, source, model, device
    grid(imgsz) -> (h, w)       cells of the map it returns for an imgsz x imgsz image
    stride(imgsz) -> int        image pixels per cell (imgsz // grid), exact: warp mode and flips rely on it
    check_imgsz(imgsz)          ConfigError when this teacher cannot serve that image size
    extract_feature_map(images) (B, 3, H, W) RGB in [0, 1] -> (B, C, h, w) float32
    fingerprint(imgsz)          JSON identity of everything that changes those numbers

Each family owns its preprocessing (resize + mean/std of its own preprocessor config) so the cache stores
the teacher's own grid; the distillation loss aligns the student's map to it (train/losses.align_to_grid).

    dinov3_timm      DINOv3 ViT through timm (timm's Eva), 16-px patches, grid imgsz/16
    dinov3_convnext  DINOv3 ConvNeXt (transformers), stage strides 4/8/16/32, default last stage (32)
    dinov2           DINOv2 ViT (transformers), 14-px patches: the image is resized to (imgsz/16)*14 px so
                     its own 14-px grid has imgsz/16 cells (one cell per 16 image pixels)
    sam              SAM's ViT image encoder (transformers SamModel): its own 1024-px input, 64x64 grid
    grounding_dino   Grounding DINO's Swin image backbone (transformers), strides 8/16/32, default 32
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import torch
import torch.nn.functional as F
from dinocache.teacher.base import (
    VOLATILE_CONFIG_KEYS,
    check_teacher_input,
    teacher_autocast,
    weights_sha256,
)

from dinocache.core.config import ConfigError


class FeatureTeacher(torch.nn.Module):
    """Shared plumbing: frozen + always eval, mean/std buffers, autocast on CUDA, input checks, fingerprint."""

    family = "?"

    def __init__(
        self,
        model: torch.nn.Module,
        layer: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        channels: int,
        amp: bool | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        self.model = model
        self.layer = int(layer)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"{source}: bad image mean/std {self.mean}/{self.std}")
        self.channels = int(channels)
        self.amp_request = amp
        self.source = source
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self._sha: str | None = None
        self.eval()

    # never trained: keep dropout/droppath/RoPE jitter off even when a parent calls .train()
    def train(self, mode: bool = True) -> FeatureTeacher:
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        return self._mean.device

    # -- per family -------------------------------------------------------------------------------------
    def grid(self, imgsz: int) -> tuple[int, int]:
        raise NotImplementedError

    def input_size(self, imgsz: int) -> int:
        """Side of the square image the model itself sees for an imgsz x imgsz input."""
        return int(imgsz)

    def check_imgsz(self, imgsz: int) -> None:
        h, _ = self.grid(imgsz)
        if h < 1 or imgsz % h:
            raise ConfigError(
                f"imgsz: {imgsz} does not split into whole cells of the {self.family} teacher (grid {h}); "
                f"use a multiple of {self.stride_hint()}"
            )

    def stride_hint(self) -> int:
        """Pixels per cell at a size this family is usually run at (SAM: at 512 px), for the imgsz refusal;
        `stride(imgsz)` is the exact value at a given size."""
        return 32

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, s, s) at input_size -> (B, C, h, w)."""
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        cfg = self.model.config.to_dict()
        return _clean(cfg)

    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", self.family))

    # -- shared -------------------------------------------------------------------------------------------
    def stride(self, imgsz: int) -> int:
        self.check_imgsz(imgsz)
        return int(imgsz) // self.grid(imgsz)[0]

    def _autocast(self) -> contextlib.AbstractContextManager:
        return teacher_autocast(self.device, self.amp_request)

    @torch.no_grad()
    def extract_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float RGB in [0, 1] -> (B, C, h, w) float32 with (h, w) = grid(S)."""
        b, h, w = check_teacher_input(images)
        if h != w:
            raise ValueError(f"{self.family} teacher input must be square (imgsz x imgsz), got {h}x{w}")
        self.check_imgsz(h)
        s = self.input_size(h)
        x = images.to(self.device, torch.float32, non_blocking=True)
        if s != h:  # the family's own input size; antialias when shrinking, like its image processor
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=s < h)
        x = (x - self._mean) / self._std
        with self._autocast():
            out = self._features(x)
        out = out.float()
        gh, gw = self.grid(h)
        if tuple(out.shape[-2:]) != (gh, gw) or out.shape[1] != self.channels:
            raise RuntimeError(
                f"{self.family} teacher returned {tuple(out.shape)}, expected (B, {self.channels}, {gh}, {gw})"
            )
        return out.contiguous()

    forward = extract_feature_map

    def weights_sha256(self) -> str:
        if self._sha is None:
            self._sha = weights_sha256(self.model)
        return self._sha

    def fingerprint(self, imgsz: int) -> dict[str, Any]:
        """JSON-able identity of everything that changes the teacher's output at this input size."""
        return {
            "family": self.family,
            "model_type": self.model_type(),
            "config": self.config_dict(),
            "weights_sha256": self.weights_sha256(),
            "layer": self.layer,
            "imgsz": int(imgsz),
            "input_size": self.input_size(imgsz),
            "grid": list(self.grid(imgsz)),
            "patch_size": self.stride(imgsz),
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _clean(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in cfg.items():
        if k in VOLATILE_CONFIG_KEYS:
            continue
        out[k] = _clean(v) if isinstance(v, dict) else v
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def _layer_error(family: str, layer: int, allowed: str) -> ConfigError:
    return ConfigError(f"layer: {layer} is out of range for this {family} teacher ({allowed})")


# ----------------------------------------------------------------------------------- DINOv3 via timm


class TimmDinoV3Teacher(FeatureTeacher):
    """timm's DINOv3 ViT (Eva with DINOv3 RoPE). layer -1 = final norm; 1..depth = block outputs."""

    family = "dinov3_timm"

    def __init__(
        self, model: torch.nn.Module, layer: int = -1, timm_config: dict | None = None, **kw: Any
    ) -> None:
        depth = len(model.blocks)
        self._timm_config = dict(timm_config or {})
        if not (layer == -1 or 1 <= layer <= depth):
            raise _layer_error(
                self.family, layer, f"-1 = last after the final norm, 1..{depth} = block outputs"
            )
        ps = model.patch_embed.patch_size
        self.patch = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        super().__init__(model, layer, channels=int(model.num_features), **kw)

    def grid(self, imgsz: int) -> tuple[int, int]:
        return imgsz // self.patch, imgsz // self.patch

    def stride_hint(self) -> int:
        return self.patch

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        g = x.shape[-1] // self.patch
        if self.layer == -1:
            tokens = m.forward_features(x)  # (B, prefix + g*g, C)
            patches = tokens[:, m.num_prefix_tokens :, :]
            return patches.transpose(1, 2).reshape(x.shape[0], -1, g, g)
        feats = m.forward_intermediates(x, indices=[self.layer - 1], norm=False, intermediates_only=True)
        return feats[0]  # (B, C, g, g)

    def config_dict(self) -> dict[str, Any]:
        # the folder's config.json as timm wrote it: architecture + model_args rebuild the same network
        cfg = {k: v for k, v in self._timm_config.items() if k != "pretrained_cfg"}
        cfg.setdefault(
            "architecture", self.model.pretrained_cfg.get("architecture", type(self.model).__name__)
        )
        cfg["num_features"] = int(self.model.num_features)
        cfg["depth"] = len(self.model.blocks)
        return _clean(cfg)

    def model_type(self) -> str:
        return "timm:" + str(self.model.pretrained_cfg.get("architecture", "?"))


# ---------------------------------------------------------------------------------- DINOv3 ConvNeXt


class ConvNextTeacher(FeatureTeacher):
    """DINOv3 ConvNeXt. layer -1 = last stage after the final LayerNorm (stride 32); 1..4 = stage outputs
    (strides 4, 8, 16, 32)."""

    family = "dinov3_convnext"

    def __init__(self, model: torch.nn.Module, layer: int = -1, **kw: Any) -> None:
        n = len(model.config.depths)
        if not (layer == -1 or 1 <= layer <= n):
            raise _layer_error(self.family, layer, f"-1 = last stage after the final norm, 1..{n} = stages")
        sizes = model.config.hidden_sizes
        stage = n if layer == -1 else layer
        self._stride = 4 * 2 ** (stage - 1)
        super().__init__(model, layer, channels=int(sizes[stage - 1]), **kw)

    def grid(self, imgsz: int) -> tuple[int, int]:
        return imgsz // self._stride, imgsz // self._stride

    def stride_hint(self) -> int:
        return self._stride

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x, output_hidden_states=self.layer != -1)
        b, g = x.shape[0], x.shape[-1] // self._stride
        if self.layer == -1:
            return out.last_hidden_state[:, 1:, :].transpose(1, 2).reshape(b, -1, g, g)  # drop pooled "cls"
        return out.hidden_states[self.layer]  # (B, C, g, g): hidden_states[0] is the stem input


# --------------------------------------------------------------------------------------------- DINOv2


class Dinov2Teacher(FeatureTeacher):
    """DINOv2 ViT (patch 14). The image is resized to (imgsz/16)*14 px: the teacher's own 14-px patch grid
    then has imgsz/16 cells, one per 16 image pixels (warp mode and flips need whole pixels per cell).
    layer -1 = last after the final norm, 0 = embeddings, 1..L = block outputs."""

    family = "dinov2"
    CELL = 16

    def __init__(self, model: torch.nn.Module, layer: int = -1, **kw: Any) -> None:
        cfg = model.config
        n = int(cfg.num_hidden_layers)
        if not (layer == -1 or 0 <= layer <= n):
            raise _layer_error(self.family, layer, f"-1 = last after the final norm, 0..{n} = hidden states")
        ps = cfg.patch_size
        self.patch = int(ps[0] if isinstance(ps, (list, tuple)) else ps)
        self.num_prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        super().__init__(model, layer, channels=int(cfg.hidden_size), **kw)

    def grid(self, imgsz: int) -> tuple[int, int]:
        return imgsz // self.CELL, imgsz // self.CELL

    def input_size(self, imgsz: int) -> int:
        return (imgsz // self.CELL) * self.patch

    def stride_hint(self) -> int:
        return self.CELL

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        want = self.layer >= 0
        out = self.model(pixel_values=x, output_hidden_states=want)
        tokens = out.hidden_states[self.layer] if want else out.last_hidden_state
        g = x.shape[-1] // self.patch
        return tokens[:, self.num_prefix :, :].transpose(1, 2).reshape(x.shape[0], -1, g, g)


# ------------------------------------------------------------------------------------------------ SAM


class SamTeacher(FeatureTeacher):
    """SAM's ViT image encoder. Its own preprocessing: the (square) image resized to image_size (1024 for
    the released SAM) -> a (image_size/patch)^2 grid (64x64). layer -1 = the neck's image embeddings
    (output_channels, 256 for SAM), 1..L = ViT block outputs (hidden_size)."""

    family = "sam"

    def __init__(self, model: torch.nn.Module, layer: int = -1, **kw: Any) -> None:
        vc = model.config.vision_config
        n = int(vc.num_hidden_layers)
        if not (layer == -1 or 1 <= layer <= n):
            raise _layer_error(self.family, layer, f"-1 = neck image embeddings, 1..{n} = ViT blocks")
        self.side = int(vc.image_size)
        self.cells = self.side // int(vc.patch_size)
        ch = int(vc.output_channels) if layer == -1 else int(vc.hidden_size)
        # only the image encoder is a teacher: the prompt encoder and mask decoder never run here
        super().__init__(model.vision_encoder, layer, channels=ch, **kw)
        self._full_config = model.config

    def grid(self, imgsz: int) -> tuple[int, int]:
        return self.cells, self.cells

    def input_size(self, imgsz: int) -> int:
        return self.side

    def check_imgsz(self, imgsz: int) -> None:
        if imgsz % self.cells:
            raise ConfigError(
                f"imgsz: {imgsz} is not a multiple of SAM's {self.cells}x{self.cells} grid: use a multiple of "
                f"{self.cells} (e.g. {max(self.cells, imgsz // self.cells * self.cells)}) so each cell covers "
                "whole image pixels"
            )

    def stride_hint(self) -> int:
        return max(1, 512 // self.cells)

    def config_dict(self) -> dict[str, Any]:
        return _clean(self._full_config.vision_config.to_dict())

    def model_type(self) -> str:
        return "sam"

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x, output_hidden_states=self.layer != -1)
        if self.layer == -1:
            return out.last_hidden_state  # (B, 256, 64, 64) after the neck
        return out.hidden_states[self.layer - 1].permute(0, 3, 1, 2)  # (B, g, g, C) -> (B, C, g, g)


# ------------------------------------------------------------------------------------ Grounding DINO


class GroundingDinoTeacher(FeatureTeacher):
    """Grounding DINO's image backbone (Swin in the released checkpoints): the multi-scale maps its
    encoder consumes, before the input projections. layer = index into them (-1 = last, stride 32)."""

    family = "grounding_dino"

    def __init__(self, model: torch.nn.Module, layer: int = -1, **kw: Any) -> None:
        cfg = model.config
        bc = cfg.backbone_config
        if getattr(cfg, "use_timm_backbone", False) or bc is None or bc.model_type != "swin":
            raise ConfigError(
                f"{kw.get('source', '')}: Grounding DINO with a "
                f"{'timm' if getattr(cfg, 'use_timm_backbone', False) else getattr(bc, 'model_type', '?')} "
                "backbone is not supported as a teacher (the released checkpoints use a transformers Swin)"
            )
        idx = list(bc.out_indices)  # Swin stages (1-based): stride patch * 2**(stage - 1)
        n = len(idx)
        if not (layer == -1 or 0 <= layer < n):
            raise _layer_error(self.family, layer, f"-1 = last, 0..{n - 1} = backbone outputs {idx}")
        stage = idx[layer]
        self._stride = int(bc.patch_size) * 2 ** (stage - 1)
        ch = int(bc.embed_dim) * 2 ** (stage - 1)
        self._full_config = cfg
        super().__init__(model.backbone.conv_encoder, layer, channels=ch, **kw)

    def grid(self, imgsz: int) -> tuple[int, int]:
        return imgsz // self._stride, imgsz // self._stride

    def stride_hint(self) -> int:
        return self._stride

    def config_dict(self) -> dict[str, Any]:
        return _clean(self._full_config.backbone_config.to_dict())

    def model_type(self) -> str:
        return "grounding-dino"

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(x.shape[0], x.shape[2], x.shape[3], dtype=torch.long, device=x.device)
        maps = self.model(x, mask)  # [(feature (B, C, h, w), mask (B, h, w)), ...] per out_index
        return maps[self.layer][0]
