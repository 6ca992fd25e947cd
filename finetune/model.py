"""DINOv3 with peft LoRA adapters on its attention projections plus a 1x1-conv dense head.

Only the adapters and the head train. The backbone stays in eval mode even while training: DINOv3's
RoPE rescales positions in training mode (pos_embed_rescale) and the frozen weights should behave
exactly as they will at precompute time; only peft's LoRA dropout follows train/eval.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from dinocache.finetune import FinetuneError
from dinocache.finetune.objectives import Objective
from torch import nn

# DINOv3ViTAttention's projections in transformers 5.x (model.layer.N.attention.{q,k,v,o}_proj).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_META = "dinocache_adapter.json"  # beside peft's files: which base, objective, head shape
HEAD_FILE = "head.safetensors"


def base_identity(model: nn.Module, source: str) -> dict[str, Any]:
    """What identifies the base an adapter belongs to: its config (minus volatile keys) and weights hash."""
    import hashlib

    from dinocache.teacher.base import VOLATILE_CONFIG_KEYS, weights_sha256

    cfg = {k: v for k, v in model.config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
    cfg_sha = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "source": source,
        "model_type": model.config.model_type,
        "config_sha256": cfg_sha,
        "weights_sha256": weights_sha256(model),
    }


def resolve_base(dino_root: str) -> str:
    """Absolute path for a local folder (so the adapter config points at it from anywhere), else as given."""
    p = Path(dino_root).expanduser()
    return str(p.resolve()) if p.exists() else dino_root


class DenseLoRA(nn.Module):
    """images (B, 3, S, S) in [0, 1] -> logits (B, out_channels, S/p, S/p)."""

    def __init__(
        self,
        teacher: Any,  # precompute.teacher.DinoV3Teacher: base model, mean/std, layer, token layout
        objective: Objective,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules: list[str] | tuple[str, ...] = DEFAULT_TARGETS,
        full: bool = False,
    ) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.layer = teacher.layer
        self.patch = teacher.patch_size
        self.channels = teacher.channels
        self.num_prefix = teacher.num_prefix
        self.objective = objective
        self.full = full
        self.register_buffer(
            "_mean", torch.tensor(teacher.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "_std", torch.tensor(teacher.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        base = teacher.model
        if full:  # the benchmark's baseline: every backbone weight trains
            for p in base.parameters():
                p.requires_grad_(True)
            self.backbone = base
        else:
            names = {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, nn.Linear)}
            missing = [t for t in target_modules if t not in names]
            if missing:
                raise FinetuneError(
                    f"lora_target_modules: {missing} are not Linear layers of this model (it has {sorted(names)})"
                )
            cfg = LoraConfig(
                r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none"
            )
            with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
                warnings.simplefilter("ignore", FutureWarning)
                self.backbone = get_peft_model(base, cfg)
        # 1x1 conv over patch tokens: light, so the adapters (not the head) must make features separable.
        self.head = nn.Conv2d(self.channels, objective.out_channels, kernel_size=1)

    def train(self, mode: bool = True) -> DenseLoRA:
        super().train(mode)
        self.backbone.eval()
        for name, m in self.backbone.named_modules():
            if "lora_dropout" in name:
                m.train(mode)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) [0, 1] -> (B, C_t, S/p, S/p), same layer/token rule as DinoV3Teacher."""
        b, _, h, w = images.shape
        x = (images - self._mean) / self._std
        want_hidden = self.layer >= 0
        out = self.backbone(pixel_values=x, output_hidden_states=want_hidden)
        tokens = out.hidden_states[self.layer] if want_hidden else out.last_hidden_state  # (B, 1+R+h*w, C)
        gh, gw = h // self.patch, w // self.patch
        return tokens[:, self.num_prefix :, :].transpose(1, 2).reshape(b, self.channels, gh, gw)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).to(self.head.weight.dtype))  # (B, C_t, g, g) -> (B, out, g, g)

    def param_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        head = sum(p.numel() for p in self.head.parameters())
        train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable": train, "trainable_backbone": train - head, "head": head, "total": total}

    # ------------------------------------------------------------ adapter files

    def save_adapter(self, folder: Path, meta: dict[str, Any]) -> None:
        """peft's adapter_config.json + adapter_model.safetensors (LoRA only), head.safetensors, meta."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(folder), safe_serialization=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
            str(folder / HEAD_FILE),
        )
        (folder / ADAPTER_META).write_text(json.dumps(meta, indent=2, default=str))

    def load_adapter(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        res = set_peft_model_state_dict(self.backbone, load_file(str(folder / "adapter_model.safetensors")))
        bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise FinetuneError(f"{folder}: adapter weights do not fit this model ({bad[:3]} ...)")
        self.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
