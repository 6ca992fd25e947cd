"""Random DINOv3 teachers saved exactly like real ones, for the demo, tests and speed measurements.

    dinocache make-tiny-teacher OUT [--size tiny|vits|vitb|vitl] [--seed N] [--overwrite]

The folder holds `config.json`, `model.safetensors` (save_pretrained) and `preprocessor_config.json`
(ImageNet mean/std, as the real checkpoints ship), so `DinoV3Teacher.from_pretrained(OUT)` loads it
through the same code path as a user's real weights. Weights are random (seeded): the features mean
nothing, but shapes, speed and every byte of the pipeline are real.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dinocache.core.config import ConfigError, build, require
from dinocache.core.fsutil import publish_dir

# Shapes of the released DINOv3 ViT-S/B/L 16 (LVD-1689M) plus a tiny one that runs in milliseconds on CPU.
SIZES: dict[str, dict[str, int | float]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "vits": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vitb": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "vitl": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}

# Settings shared by all released ViT-S/B/L 16 checkpoints.
COMMON = dict(patch_size=16, num_register_tokens=4)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class TinyTeacherConfig:
    # output folder (refused when it exists and is not empty, unless overwrite)
    out: Path = Path("dinov3")
    # model shape: tiny (64-d, 2 layers) or shaped like the real ViT-S/B/L 16
    size: str = "tiny"
    # seed of the random weights (same seed -> same weights -> same fingerprint)
    seed: int = 0
    # replace a non-empty `out`
    overwrite: bool = False

    def validate(self) -> None:
        require(self.size in SIZES, "size", f"{self.size!r} is not one of {list(SIZES)}")
        require(str(self.out) != "", "out", "must be a folder path")


def _preprocessor_config() -> dict:
    # Same keys as facebook/dinov3-*'s preprocessor_config.json; only mean/std matter to our teacher.
    return {
        "image_processor_type": "DINOv3ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
    }


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"out: {out} exists and is not empty (pass --overwrite to replace it)")


def make_tiny_teacher(out: str | Path, seed: int = 0, size: str = "tiny", overwrite: bool = False) -> Path:
    """Build a random DINOv3ViTModel of `size`, save it with save_pretrained into `out`, return `out`."""
    import torch
    from dinocache.teacher.model import _quiet_progress
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    if size not in SIZES:
        raise ConfigError(f"size: {size!r} is not one of {list(SIZES)}")
    out = Path(out)
    _check_out(out, overwrite)
    config = DINOv3ViTConfig(**COMMON, **SIZES[size])
    # fork_rng: seeding must not disturb the caller's global RNG state (tests, training).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DINOv3ViTModel(config).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes 0700; the folder should look like any saved checkpoint
        with _quiet_progress():
            model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(), indent=2) + "\n")
        (tmp / "README.md").write_text(
            f"Random DINOv3 ViT ({size}, seed {seed}) made by `dinocache make-tiny-teacher`.\n"
            "Its features are meaningless; it exists to exercise the pipeline. Replace this folder with a\n"
            "real DINOv3 checkpoint (e.g. facebook/dinov3-vitl16-pretrain-lvd1689m) for real distillation.\n"
        )
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """`dinocache make-tiny-teacher OUT [--size tiny|vits|vitb|vitl] [--seed N] [--overwrite]`"""
    ap = argparse.ArgumentParser(prog="dinocache make-tiny-teacher", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder (config.json + model.safetensors + preprocessor_config.json)")
    ap.add_argument("--size", default="tiny", help=f"one of {', '.join(SIZES)} (default tiny)")
    ap.add_argument("--seed", default="0", help="seed of the random weights (default 0)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    args = ap.parse_args(argv)
    try:
        cfg = build(
            TinyTeacherConfig,
            {"out": args.out, "size": args.size, "seed": args.seed, "overwrite": args.overwrite},
            "command line",
        )
        out = make_tiny_teacher(cfg.out, seed=cfg.seed, size=cfg.size, overwrite=cfg.overwrite)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = _count_params(out)
    print(f"saved a random DINOv3 ViT ({cfg.size}, seed {cfg.seed}, {n / 1e6:.2f}M params) to {out}")
    return 0


def _count_params(out: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


if __name__ == "__main__":
    sys.exit(main())
