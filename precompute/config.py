"""Options of `dinocache precompute` (section "precompute" of config.json) and the `shard` i/N they name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from dinocache.core.config import Config, ConfigError, check_fields, require, rule


@dataclass
class PrecomputeConfig(Config):
    # images to cache: a data.yaml (or its folder) of the (augmented) dataset, whose `split` is cached, or
    # unlabeled images: a folder of images (no dataset yaml in it) or a .txt list of images
    data: str = "dataset/augmented/data.yaml"
    # which split of data.yaml to cache (the trainer reads its training images from the cache)
    split: str = "train"
    # cache location: a local folder or an fsspec URL (e.g. s3://bucket/features.zarr)
    cache: Annotated[str, rule(bool, "must be a path or URL")] = "artifacts/cache/features.zarr"
    # fsspec storage options for a URL cache (credentials, endpoint...), passed through unchanged
    storage_options: dict[str, Any] = field(default_factory=dict)
    # teacher checkpoint folder (its library's save layout) or hub id; any family of teacher/registry.py
    dino_root: str = "dinov3"
    # teacher family: auto (read from the checkpoint's config.json) or dinov3_vit, dinov3_timm,
    # dinov3_convnext, dinov2, sam, grounding_dino (a mismatch with the checkpoint is refused)
    teacher_family: str = "auto"
    # teacher layer: -1 = last hidden state after the final norm, i >= 0 = hidden_states[i]
    dino_layer: int = -1
    # multi-teacher cache: write this teacher as `cache`/teachers/NAME (1-8 of a-z0-9_), next to the cache's
    # other teachers (same images and imgsz); empty = `cache` is a single-teacher store (cache/multi.py)
    teacher_name: Annotated[
        str,
        rule(
            lambda n: not n or re.fullmatch(r"[a-z0-9_]{1,8}", n) is not None,
            "{value!r} must be 1-8 characters of a-z, 0-9 and _ (it names teachers/NAME and d_NAME)",
        ),
    ] = ""
    # image side in pixels; every image must already be imgsz x imgsz (the cache holds the pixels the trainer sees)
    imgsz: Annotated[int, Field(gt=0)] = 512
    # K stored channels: top-K PCA components, or "full" to keep the teacher's raw C_t channels
    channels: Annotated[
        int | Literal["full"], rule(lambda c: c == "full" or c >= 1, "must be >= 1 or 'full'")
    ] = 128
    # also store the teacher map of each horizontally flipped image (`features_flip`), so the trainer
    # distils a flipped sample against the teacher's real view of it instead of the mirrored map (a ViT is
    # not flip-equivariant, see docs/warp.md): twice the teacher time and twice the cache's size
    cache_flips: bool = False
    # images (evenly spaced over the split) whose features fit the PCA and the channel statistics
    pca_fit_images: Annotated[int, Field(ge=1)] = 256
    # images per teacher forward; part of the result's identity (see docs: resume uses the same batches)
    batch: Annotated[int, Field(ge=1)] = 16
    # image-decoding threads
    workers: Annotated[int, Field(ge=0)] = 2
    # auto, cpu, cuda, cuda:N or N
    device: str = "auto"
    # compression of the feature chunks: none (default: fp16 features barely compress, 6-15 %, and
    # decompressing costs read CPU in every dataloader worker), or Blosc zstd / lz4 (level 1, byte shuffle)
    codec: Literal["zstd", "lz4", "none"] = "none"
    # images per zarr shard (the unit of writing and of --shard ownership); 0 = auto (~16 MiB, <= 256)
    shard_size: Annotated[int, Field(ge=0)] = 0
    # "i/N": this process writes the zarr shards k with k % N == i (process 0 creates the store); under
    # torchrun or SLURM it comes from RANK/WORLD_SIZE (SLURM_PROCID/SLURM_NTASKS), see precompute/launch.py
    shard: str = "0/1"
    # accept an unfinished store that was started with a different number of writers N (only once none of
    # the old writers runs any more: ownership is shard k % N, so two layouts at once share zarr shards)
    reshard: bool = False
    # delete an existing cache at `cache` and start over (single writer only)
    overwrite: bool = False
    # seconds a shard i > 0 waits for shard 0 to create the store
    wait_timeout: Annotated[float, Field(gt=0)] = 3600.0
    # repair an existing cache: every row `cache verify` finds bad (chunk checksum failure, shard file missing,
    # NaN/inf) has its shard reset to not done, then the usual pass recomputes those shards and the ones whose
    # images changed, with the same batch boundaries: the result equals a fresh cache bit for bit
    repair: bool = False

    def __post_init__(self) -> None:
        check_fields(self)  # every construction path checks, not only the config loader
        self.validate()

    def validate(self) -> None:
        i, n = parse_shard(self.shard)
        require(not (self.repair and self.overwrite), "repair", "and overwrite exclude each other")
        require(
            not (self.repair and n > 1), "repair", f"runs as a single writer, not with shard={self.shard}"
        )
        require(
            not (self.overwrite and n > 1),
            "overwrite",
            f"is only allowed with a single writer (shard={self.shard}); delete the cache first, then start the N writers",
        )


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' -> (i, N) with 0 <= i < N."""
    try:
        a, b = str(text).split("/")
        i, n = int(a), int(b)
    except ValueError:
        raise ConfigError(f"shard: {text!r} must look like i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard: {text!r} needs 0 <= i < N")
    return i, n
