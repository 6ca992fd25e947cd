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
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dinocache.core.config import ConfigError
from dinocache.core.device import select_device
from dinocache.core.errors import DinocacheError

# ImageNet statistics: what DINOv3's own preprocessor config ships; used when a folder has none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Config keys that say how/where the model was saved or what forward() returns, not what it computes;
# dropping them keeps the fingerprint equal across transformers versions and folder names.
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "architectures",
        "dtype",
        "torch_dtype",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "use_cache",
        # Labels/backbone plumbing: never change the patch tokens of DINOv3ViTModel.
        "id2label",
        "label2id",
        "problem_type",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "tie_word_embeddings",
        "out_features",
        "out_indices",
        "stage_names",
        "reshape_hidden_states",
        "apply_layernorm",
    }
)

DEFAULT_HUB_ID = "facebook/dinov3-vitl16-pretrain-lvd1689m"

# "owner/name" with nothing that makes it look like a filesystem path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class TeacherNotFound(DinocacheError, FileNotFoundError):
    """The DINOv3 weights are not where `dino_root` says; the message says where to put them."""


def _where_to_put(root: str) -> str:
    p = Path(root).expanduser()
    return (
        f"put a DINOv3 checkpoint folder (config.json + model.safetensors, as saved by save_pretrained or "
        f"downloaded from {DEFAULT_HUB_ID}) at {p.resolve() if not p.is_absolute() else p}, or set dino_root "
        f"to such a folder or to a hub id (e.g. dino_root={DEFAULT_HUB_ID}; gated: accept the licence on "
        f"huggingface.co and `hf auth login`, and unset HF_HUB_OFFLINE). For a tiny random stand-in: "
        f"`dinocache make-tiny-teacher {root}`"
    )


def _looks_like_hub_id(root: str) -> bool:
    return bool(_HUB_ID.match(root)) and not root.startswith((".", "~"))


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' per-load progress bar (noise next to our own tqdm), restoring its state."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _read_mean_std(root: str, local: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from the checkpoint's preprocessor_config.json; ImageNet when it has none."""
    if local:
        f = Path(root).expanduser() / "preprocessor_config.json"
        if not f.exists():
            return IMAGENET_MEAN, IMAGENET_STD
        try:
            d = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{f}: cannot read the preprocessor config ({e})") from None
    else:
        from transformers import ImageProcessingMixin

        try:
            d, _ = ImageProcessingMixin.get_image_processor_dict(root)
        except OSError:  # repo without a preprocessor config
            return IMAGENET_MEAN, IMAGENET_STD
    mean = tuple(float(x) for x in d.get("image_mean", IMAGENET_MEAN))
    std = tuple(float(x) for x in d.get("image_std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"{root}: preprocessor config has bad image_mean/image_std {mean}/{std}")
    return mean, std


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over the state_dict: each key, dtype, shape and raw bytes, keys in sorted order."""
    h = hashlib.sha256()
    sd = module.state_dict()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def teacher_autocast(device: torch.device, amp_request: bool | None) -> contextlib.AbstractContextManager:
    """Mixed precision for a teacher forward: bf16 (else fp16) autocast on CUDA unless amp is off; none on CPU."""
    if device.type != "cuda" or not (amp_request if amp_request is not None else True):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def check_teacher_input(images: torch.Tensor) -> tuple[int, int, int]:
    """Every teacher family takes (B, 3, H, W) float RGB in [0, 1]; returns (B, H, W) or raises ValueError."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"teacher input must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"teacher input must be float in [0, 1] (got {images.dtype}); divide uint8 by 255")
    b, _, h, w = images.shape
    return int(b), int(h), int(w)


class DinoV3Teacher(torch.nn.Module):
    """Frozen DINOv3 ViT returning patch-token feature maps (B, C_t, H/p, W/p) in float32.

    Family `dinov3_vit` of the teacher registry (teacher/registry.py); the other families
    (teacher/families.py) share this interface: grid/stride/check_imgsz/extract_feature_map/fingerprint.
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
                raise TeacherNotFound(f"{local} has no config.json{hint}: {_where_to_put(root)}")
            src = str(local)
        elif _looks_like_hub_id(root):
            src = root
        else:
            raise TeacherNotFound(f"DINOv3 weights not found at {root!r}: {_where_to_put(root)}")
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        try:
            with _quiet_progress():
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
            raise TeacherNotFound(f"DINOv3 weights not loaded: {why}. {_where_to_put(root)}") from None
        if getattr(model.config, "model_type", "") != "dinov3_vit":
            raise ConfigError(
                f"dino_root: {root} holds a '{model.config.model_type}' model, not a DINOv3 ViT (dinov3_vit)"
            )
        mean, std = _read_mean_std(src, is_local)
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


def load_teacher(
    dino_root: str | Path,
    layer: int = -1,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    family: str = "auto",
) -> Any:
    """The teacher of any registered family (teacher/registry.py); DINOv3 ViT folders give a DinoV3Teacher."""
    from dinocache.teacher.registry import load_teacher as _load

    return _load(dino_root, layer=layer, device=device, amp=amp, family=family)
