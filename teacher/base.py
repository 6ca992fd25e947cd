"""What every teacher family shares: the `Teacher` interface, the error for missing weights, the pieces of
a fingerprint (volatile config keys, the weights hash), input checks, autocast and checkpoint-folder helpers.

Every module of the package imports from here and nothing here imports them back: `model.py` (the
transformers DINOv3 ViT), `families.py` (the other families) and `registry.py` (which family a folder holds,
and loading it) stand side by side above this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from dinocache.core.config import ConfigError
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


def where_to_put(root: str) -> str:
    p = Path(root).expanduser()
    return (
        f"put a DINOv3 checkpoint folder (config.json + model.safetensors, as saved by save_pretrained or "
        f"downloaded from {DEFAULT_HUB_ID}) at {p.resolve() if not p.is_absolute() else p}, or set dino_root "
        f"to such a folder or to a hub id (e.g. dino_root={DEFAULT_HUB_ID}; gated: accept the licence on "
        f"huggingface.co and `hf auth login`, and unset HF_HUB_OFFLINE). For a tiny random stand-in: "
        f"`dinocache make-tiny-teacher {root}`"
    )


def looks_like_hub_id(root: str) -> bool:
    return bool(_HUB_ID.match(root)) and not root.startswith((".", "~"))


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' per-load progress bar (noise next to our own tqdm), restoring its state."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def read_mean_std(root: str, local: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


@runtime_checkable
class Teacher(Protocol):
    """The interface of a frozen teacher of any family (a `torch.nn.Module` that never trains).

    The cache, precompute and training read a teacher only through these names; `fingerprint(imgsz)` is the
    identity stored in a cache and compared byte for byte when the cache is opened.
    """

    family: str  # registry name, e.g. "dinov3_vit"
    channels: int  # C of the maps it returns
    layer: int  # -1 = last (after the final norm); otherwise the family's own block/stage index
    mean: tuple[float, ...]  # RGB normalisation of its own preprocessor
    std: tuple[float, ...]
    source: str  # the folder or hub id it was loaded from
    model: torch.nn.Module  # the wrapped library model

    @property
    def device(self) -> torch.device: ...

    def grid(self, imgsz: int) -> tuple[int, int]:
        """Cells (h, w) of the map it returns for an imgsz x imgsz image."""
        ...

    def stride(self, imgsz: int) -> int:
        """Image pixels per cell (imgsz // grid), exact: warp mode and flips rely on it; a cache stores it
        as `patch_size`."""
        ...

    def input_size(self, imgsz: int) -> int:
        """Side of the square image the model itself sees for an imgsz x imgsz input."""
        ...

    def check_imgsz(self, imgsz: int) -> None:
        """ConfigError when this teacher cannot serve that image size."""
        ...

    def extract_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float RGB in [0, 1] -> (B, C, h, w) float32 on the teacher's device."""
        ...

    def fingerprint(self, imgsz: int) -> dict[str, Any]:
        """JSON-able identity of everything that changes the teacher's output at this input size."""
        ...
