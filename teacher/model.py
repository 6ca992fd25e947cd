"""The frozen DINOv3 teacher: images in [0, 1] -> a spatial feature map, one vector per 16x16 patch.

Weights are loaded with transformers' `from_pretrained` from a local folder (`dino_root`, default
`dinov3/`) or a hub id, so a user's real checkpoint and the tiny random one made by
`dinocache make-tiny-teacher` go through exactly the same code. Nothing is downloaded behind the user's
back: a local-looking path that does not exist is refused with a message saying where to put the weights.

The fingerprint identifies everything that changes the numbers the teacher produces (config, weights,
layer, input size, normalisation) so a cache made by one teacher is never read as if made by another.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from dinocache.teacher.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VOLATILE_CONFIG_KEYS,
    TeacherNotFound,
    check_teacher_input,
    looks_like_hub_id,
    quiet_progress,
    read_mean_std,
    teacher_autocast,
    weights_sha256,
    where_to_put,
)

from dinocache.core.config import ConfigError
from dinocache.core.device import select_device


class DinoV3Teacher(torch.nn.Module):
    """Frozen DINOv3 ViT returning patch-token feature maps (B, C_t, H/p, W/p) in float32.

    Family `dinov3_vit` of the teacher registry (teacher/registry.py); like the other families
    (teacher/families.py) it implements `teacher.base.Teacher`.
    """

    family = "dinov3_vit"

    def __init__(
        self,
        model: torch.nn.Module,
        layer: int = -1,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        amp: bool | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        cfg = model.config
        ps = cfg.patch_size
        # the ViT's patch (its config's patch_size); one token per patch, so also the map's cell at any imgsz
        self.patch_size: int = int(ps[0] if isinstance(ps, (list, tuple)) else ps)
        self.channels: int = int(cfg.hidden_size)
        self.num_prefix: int = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)  # CLS + registers
        n_layers = int(cfg.num_hidden_layers)
        if not (layer == -1 or 0 <= layer <= n_layers):
            raise ConfigError(
                f"layer: {layer} is out of range for a {n_layers}-layer model "
                f"(-1 = last, after the final norm; 0 = patch embeddings; 1..{n_layers} = block outputs)"
            )
        self.layer: int = int(layer)
        self.mean: tuple[float, ...] = tuple(mean)
        self.std: tuple[float, ...] = tuple(std)
        self.source = source
        self.amp_request = amp
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        # Buffers (not parameters) so .to(device) moves them and they never enter the state_dict hash.
        self.register_buffer(
            "_mean", torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "_std", torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self._sha: str | None = None
        self.eval()

    @classmethod
    def from_pretrained(
        cls,
        dino_root: str | Path,
        layer: int = -1,
        device: str | torch.device = "cpu",
        amp: bool | None = None,
    ) -> DinoV3Teacher:
        from transformers import AutoModel

        root = str(dino_root)
        local = Path(root).expanduser()
        is_local = local.exists()
        if is_local:
            if not (local / "config.json").is_file():
                pth = (
                    sorted(local.glob("*.pth"))
                    if local.is_dir()
                    else [local]
                    if local.suffix == ".pth"
                    else []
                )
                hint = (
                    f" ({pth[0].name} looks like a checkpoint from Meta's dinov3 repo: convert it to the "
                    "transformers format first, with src/transformers/models/dinov3_vit/convert_dinov3_vit_to_hf.py from the transformers repository)"
                    if pth
                    else ""
                )
                raise TeacherNotFound(f"{local} has no config.json{hint}: {where_to_put(root)}")
            src = str(local)
        elif looks_like_hub_id(root):
            src = root
        else:
            raise TeacherNotFound(f"DINOv3 weights not found at {root!r}: {where_to_put(root)}")
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        try:
            with quiet_progress():
                model = AutoModel.from_pretrained(
                    src, dtype=torch.float32, local_files_only=is_local or offline
                )
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if is_local:
                why = f"the folder {local} is not a loadable checkpoint ({first})"
            elif offline:
                why = f"hub id {root!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            else:
                why = f"hub id {root!r} could not be fetched ({first})"
            raise TeacherNotFound(f"DINOv3 weights not loaded: {why}. {where_to_put(root)}") from None
        if getattr(model.config, "model_type", "") != "dinov3_vit":
            raise ConfigError(
                f"dino_root: {root} holds a '{model.config.model_type}' model, not a DINOv3 ViT (dinov3_vit)"
            )
        mean, std = read_mean_std(src, is_local)
        teacher = cls(model, layer=layer, mean=mean, std=std, amp=amp, source=root)
        return teacher.to(select_device(device))

    # A teacher is never trained: keep the inner model in eval even when a parent calls .train(), because
    # DINOv3's RoPE jitters/rescales positions in training mode and dropout/droppath would add noise.
    def train(self, mode: bool = True) -> DinoV3Teacher:
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        return self._mean.device

    def grid(self, imgsz: int) -> tuple[int, int]:
        return imgsz // self.patch_size, imgsz // self.patch_size

    def input_size(self, imgsz: int) -> int:
        return int(imgsz)

    def check_imgsz(self, imgsz: int) -> None:
        p = self.patch_size
        if imgsz % p:
            raise ConfigError(f"imgsz: {imgsz} is not a multiple of the teacher's patch size {p}")

    def stride(self, imgsz: int) -> int:
        self.check_imgsz(imgsz)
        return self.patch_size

    def _autocast(self) -> contextlib.AbstractContextManager:
        return teacher_autocast(self.device, self.amp_request)

    @torch.no_grad()
    def extract_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float RGB in [0, 1] -> (B, C_t, H/p, W/p) float32 on the teacher's device."""
        b, h, w = check_teacher_input(images)
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"teacher input {h}x{w} is not a multiple of the patch size {p}: use an imgsz that is a "
                f"multiple of {p} (e.g. {max(p, h // p * p)})"
            )
        x = images.to(self.device, torch.float32, non_blocking=True)
        x = (x - self._mean) / self._std
        want_hidden = self.layer >= 0
        with self._autocast():
            out = self.model(pixel_values=x, output_hidden_states=want_hidden)
        tokens = out.hidden_states[self.layer] if want_hidden else out.last_hidden_state  # (B, 1+R+h*w, C)
        patches = tokens[:, self.num_prefix :, :].float()  # (B, h*w, C), row-major patch order
        gh, gw = h // p, w // p
        if patches.shape[1] != gh * gw:  # guards against a model with an unexpected token layout
            raise RuntimeError(
                f"expected {gh * gw} patch tokens after {self.num_prefix} prefix, got {patches.shape[1]}"
            )
        return patches.transpose(1, 2).reshape(b, self.channels, gh, gw).contiguous()  # (B, C, gh, gw)

    forward = extract_feature_map

    def weights_sha256(self) -> str:
        if self._sha is None:
            self._sha = weights_sha256(self.model)
        return self._sha

    def fingerprint(self, imgsz: int) -> dict[str, Any]:
        """JSON-able identity of everything that changes the teacher's output at this input size."""
        cfg = {k: v for k, v in self.model.config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
        cfg = json.loads(json.dumps(cfg, sort_keys=True, default=str))  # plain JSON types only
        return {
            "family": self.family,
            "model_type": str(self.model.config.model_type),
            "config": cfg,
            "weights_sha256": self.weights_sha256(),
            "layer": self.layer,
            "imgsz": int(imgsz),
            "patch_size": self.patch_size,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }
