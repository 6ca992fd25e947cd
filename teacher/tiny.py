"""Random teachers of every registered family, saved exactly like real ones (demo, tests, speed).

    dinocache make-tiny-teacher OUT [--family F] [--size tiny|base|vits|vitb|vitl] [--seed N] [--overwrite]

Each family is saved by its library's own writer (transformers `save_pretrained` + the image processor's
`preprocessor_config.json`; timm `save_for_hf`), so `load_teacher(OUT)` reads it through the same code
path as a user's real weights. Weights are random (seeded): the features mean nothing, but shapes, speed
and every byte of the pipeline are real. `--size base` gives the shape of the released model of the family
(speed measurements); `tiny` runs in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from dinocache.core.config import Config, ConfigError, build, require, rule
from dinocache.core.errors import DinocacheError
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


FAMILY_SIZES: dict[str, tuple[str, ...]] = {
    "dinov3_vit": tuple(SIZES),
    "dinov3_timm": ("tiny", "base"),
    "dinov3_convnext": ("tiny", "base"),
    "dinov2": ("tiny", "base"),
    "sam": ("tiny", "base"),
    "grounding_dino": ("tiny", "base"),
}


@dataclass
class TinyTeacherConfig(Config):
    # output folder (refused when it exists and is not empty, unless overwrite)
    out: Annotated[Path, rule(lambda p: str(p) != "", "must be a folder path")] = Path("dinov3")
    # teacher family (see teacher/registry.py FAMILIES)
    family: Annotated[
        str, rule(lambda f: f in FAMILY_SIZES, "{value!r} is not one of " + str(list(FAMILY_SIZES)))
    ] = "dinov3_vit"
    # model shape: tiny, or "base" = shaped like the family's released model (dinov3_vit: vits/vitb/vitl)
    size: str = "tiny"
    # seed of the random weights (same seed -> same weights -> same fingerprint)
    seed: int = 0
    # replace a non-empty `out`
    overwrite: bool = False

    def validate(self) -> None:
        sizes = FAMILY_SIZES[self.family]
        require(self.size in sizes, "size", f"{self.size!r} is not one of {list(sizes)} for {self.family}")


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


def make_tiny_teacher(
    out: str | Path, seed: int = 0, size: str = "tiny", overwrite: bool = False, family: str = "dinov3_vit"
) -> Path:
    """Build a random teacher of `family`/`size`, save it with its library's own writer into `out`."""
    import torch
    from dinocache.teacher.base import quiet_progress

    if family not in FAMILY_SIZES:
        raise ConfigError(f"family: {family!r} is not one of {list(FAMILY_SIZES)}")
    if size not in FAMILY_SIZES[family]:
        raise ConfigError(f"size: {size!r} is not one of {list(FAMILY_SIZES[family])} for {family}")
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes 0700; the folder should look like any saved checkpoint
        # fork_rng: seeding must not disturb the caller's global RNG state (tests, training).
        with torch.random.fork_rng(devices=[]), quiet_progress():
            torch.manual_seed(seed)
            real = BUILDERS[family](tmp, size)
        (tmp / "README.md").write_text(
            f"Random {family} teacher ({size}, seed {seed}) made by `dinocache make-tiny-teacher`.\n"
            "Its features are meaningless; it exists to exercise the pipeline. Replace this folder with a\n"
            f"real checkpoint (e.g. {real}) for real distillation.\n"
        )
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _save_dinov3_vit(tmp: Path, size: str) -> str:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    DINOv3ViTModel(DINOv3ViTConfig(**COMMON, **SIZES[size])).eval().save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(), indent=2) + "\n")
    return "facebook/dinov3-vitl16-pretrain-lvd1689m"


def _save_dinov3_timm(tmp: Path, size: str) -> str:
    import timm
    from timm.models import save_for_hf

    shape = {} if size == "base" else dict(embed_dim=64, depth=2, num_heads=2)
    model = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0, **shape)
    save_for_hf(model.eval(), str(tmp), safe_serialization=True)  # config.json + model.safetensors
    return "timm/vit_small_patch16_dinov3.lvd1689m"


def _save_dinov3_convnext(tmp: Path, size: str) -> str:
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    shape = {} if size == "base" else dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
    DINOv3ConvNextModel(DINOv3ConvNextConfig(**shape)).eval().save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(), indent=2) + "\n")
    return "facebook/dinov3-convnext-tiny-pretrain-lvd1689m"


def _save_dinov2(tmp: Path, size: str) -> str:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    shape = (
        dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
        if size == "base"
        else dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    )
    Dinov2Model(Dinov2Config(patch_size=14, image_size=518, **shape)).eval().save_pretrained(tmp)
    # what facebook/dinov2-* ship: BitImageProcessor with ImageNet mean/std
    BitImageProcessor(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(tmp)
    return "facebook/dinov2-small"


def _save_sam(tmp: Path, size: str) -> str:
    from transformers import SamConfig, SamImageProcessor, SamModel

    if size == "base":  # facebook/sam-vit-base
        cfg = SamConfig()
    else:  # the real 1024-px input and 64x64 grid, a 2-block 32-d ViT and a 32-d decoder
        d = 32
        cfg = SamConfig(
            vision_config=dict(
                hidden_size=d,
                output_channels=d,
                num_hidden_layers=2,
                num_attention_heads=2,
                mlp_dim=2 * d,
                window_size=8,
                num_pos_feats=d // 2,  # positional features of the prompt encoder: hidden = 2 x this
                global_attn_indexes=[],  # windowed only: a global 4096-token block costs 10x on CPU
            ),
            prompt_encoder_config=dict(hidden_size=d, mask_input_channels=4),
            mask_decoder_config=dict(
                hidden_size=d, mlp_dim=2 * d, num_hidden_layers=1, iou_head_hidden_dim=d
            ),
        )
    model = SamModel(cfg).eval()
    # transformers' SAM init leaves the patch embedding ~1e-10 (real weights replace it): the random
    # encoder's maps would be ~0 everywhere, so give every near-zero conv/linear weight a normal init
    import torch

    for m in model.modules():
        w = getattr(m, "weight", None)
        if (
            isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
            and w is not None
            and float(w.detach().std()) < 1e-6
        ):
            torch.nn.init.normal_(w, std=0.02)
    model.save_pretrained(tmp)
    SamImageProcessor().save_pretrained(tmp)
    return "facebook/sam-vit-base"


def bert_vocab() -> list[str]:
    """A BERT-uncased-shaped vocabulary: [CLS]=101, [SEP]=102, '.'=1012, '?'=1029 (the ids Grounding DINO's
    phrase masks look for), then lowercase letters/digits as words and '##' pieces (any class name tokenises)."""
    v = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    v += [f"[unused{i}]" for i in range(99, 99 + 1012 - len(v))]
    v += ["."] + [f"[unused{i}]" for i in range(2000, 2016)] + ["?"]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    v += list(chars) + [f"##{c}" for c in chars] + ["-", "_", "##-", "##_"]
    return v


def _save_grounding_dino(tmp: Path, size: str) -> str:
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(bert_vocab())}, do_lower_case=True)
    if size == "base":  # IDEA-Research/grounding-dino-tiny: Swin-T + BERT-base
        cfg = GroundingDinoConfig(
            backbone_config=dict(
                model_type="swin",
                embed_dim=96,
                depths=[2, 2, 6, 2],
                num_heads=[3, 6, 12, 24],
                window_size=7,
                out_indices=[2, 3, 4],
            ),
            text_config=dict(model_type="bert", vocab_size=len(tok)),
        )
    else:
        cfg = GroundingDinoConfig(
            backbone_config=dict(
                model_type="swin",
                embed_dim=16,
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 2, 2],
                window_size=4,
                out_indices=[2, 3, 4],
            ),
            text_config=dict(
                model_type="bert",
                vocab_size=len(tok),
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
            ),
            d_model=32,
            encoder_layers=1,
            decoder_layers=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            num_queries=16,
            encoder_n_points=2,
            decoder_n_points=2,
            max_text_len=32,
        )
    cfg.use_pretrained_backbone = False
    GroundingDinoForObjectDetection(cfg).eval().save_pretrained(tmp)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tok).save_pretrained(tmp)
    return "IDEA-Research/grounding-dino-tiny"


BUILDERS = {
    "dinov3_vit": _save_dinov3_vit,
    "dinov3_timm": _save_dinov3_timm,
    "dinov3_convnext": _save_dinov3_convnext,
    "dinov2": _save_dinov2,
    "sam": _save_sam,
    "grounding_dino": _save_grounding_dino,
}


def main(argv: list[str] | None = None) -> int:
    """`dinocache make-tiny-teacher OUT [--family F] [--size tiny|base|vits|vitb|vitl] [--seed N] [--overwrite]`"""
    ap = argparse.ArgumentParser(prog="dinocache make-tiny-teacher", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder (config.json + model.safetensors + preprocessor_config.json)")
    ap.add_argument(
        "--family", default="dinov3_vit", help=f"one of {', '.join(FAMILY_SIZES)} (default dinov3_vit)"
    )
    ap.add_argument(
        "--size",
        default="tiny",
        help="tiny (default), base (shape of the family's released model); dinov3_vit: vits/vitb/vitl",
    )
    ap.add_argument("--seed", default="0", help="seed of the random weights (default 0)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    args = ap.parse_args(argv)
    try:
        cfg = build(
            TinyTeacherConfig,
            {
                "out": args.out,
                "family": args.family,
                "size": args.size,
                "seed": args.seed,
                "overwrite": args.overwrite,
            },
            "command line",
        )
        out = make_tiny_teacher(
            cfg.out, seed=cfg.seed, size=cfg.size, overwrite=cfg.overwrite, family=cfg.family
        )
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = _count_params(out)
    print(
        f"saved a random {cfg.family} teacher ({cfg.size}, seed {cfg.seed}, {n / 1e6:.2f}M params) to {out}"
    )
    return 0


def _count_params(out: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


if __name__ == "__main__":
    sys.exit(main())
