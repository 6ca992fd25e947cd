"""Run the DINOv3 teacher once per training image and store its (PCA-reduced) fp16 maps in the cache.

    dinocache precompute --config config.json [key=value ...] [--shard i/N] [--overwrite]
    torchrun --nproc-per-node N -m dinocache precompute --config config.json [key=value ...]

Flow: list the split exactly as Ultralytics does, key each image by its path relative to the dataset
root; shard 0 fits the PCA on an evenly spaced sample and creates the store; every process then computes
the zarr shards it owns (k % N == i), each shard in fixed batches, and hands finished shards to a
background writer thread, so teacher compute and I/O overlap. Rerunning resumes: shards whose rows are
all done with unchanged file hashes are skipped, others are recomputed with the same batch boundaries,
so the final cache is bit-for-bit that of an uninterrupted run. Images that are not exactly imgsz x
imgsz, or cannot be decoded, are refused by name; their rows stay not-done (NaN) and the run exits 2
after writing every other row. Options and rules: docs/cache.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from dinocache.core.config import Config, ConfigError, check_fields, load, require, rule, to_dict
from dinocache.core.errors import DinocacheError
from dinocache.core.secrets import scrub


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


# ------------------------------------------------------------------------------------------ images


@dataclass
class Loaded:
    """One decoded image: RGB uint8 (imgsz, imgsz, 3), or the reason it cannot be used."""

    rgb: np.ndarray | None
    sha256: str
    error: str | None = None


def load_image(path: Path, imgsz: int) -> Loaded:
    """Decode like Ultralytics' loader (its `imread`, BGR -> RGB); refuse anything not imgsz x imgsz."""
    from ultralytics.utils.patches import imread

    try:
        data = path.read_bytes()
    except OSError as e:
        return Loaded(None, "", f"cannot be read ({e.strerror or e})")
    sha = hashlib.sha256(data).hexdigest()
    im = imread(str(path))
    if im is None:
        return Loaded(None, sha, "cannot be decoded (corrupt or not an image)")
    if im.shape[0] != imgsz or im.shape[1] != imgsz:
        return Loaded(
            None,
            sha,
            f"is {im.shape[1]}x{im.shape[0]}, expected {imgsz}x{imgsz}: the cache stores the exact pixels the "
            "trainer sees, so letterbox the dataset to imgsz first (`dinocache augment`)",
        )
    if im.shape[2] == 1:
        im = np.repeat(im, 3, axis=2)
    return Loaded(np.ascontiguousarray(im[..., 2::-1]), sha)


def prefetch(
    files: Sequence[Path], rows: Sequence[int], imgsz: int, pool: ThreadPoolExecutor, ahead: int
) -> Iterator[Loaded]:
    """Loaded images of `rows` in order, keeping up to `ahead` decodes in flight."""
    pending: list[Future] = []
    it = iter(rows)
    for r in it:
        pending.append(pool.submit(load_image, files[r], imgsz))
        if len(pending) >= ahead:
            break
    while pending:
        fut = pending.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(load_image, files[nxt], imgsz))
        yield fut.result()


def to_batch(images: Sequence[np.ndarray | None], imgsz: int, device: Any) -> Any:
    """RGB uint8 images (None -> zeros, so batch shapes never depend on bad files) -> (B, 3, H, W) in [0, 1]."""
    import torch

    x = np.zeros((len(images), imgsz, imgsz, 3), np.uint8)
    for j, im in enumerate(images):
        if im is not None:
            x[j] = im
    t = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).contiguous()  # (B, H, W, 3) -> (B, 3, H, W)
    return t.float() / 255  # same arithmetic as Ultralytics' preprocess


# ------------------------------------------------------------------------------------------ the run


def flipped_view(x: Any) -> Any:
    """(B, 3, H, W) -> the same canvases mirrored left-right: what the teacher sees of a horizontally
    flipped training image (the loaded image sits centred on the canvas, so its mirror is centred too)."""
    return x.flip(-1)


# Raw teacher outputs of PCA-fit batches kept in RAM for the write pass (float32 (B, C_t, h, w); 256 ViT-L
# maps at 512 px are 1 GiB); beyond it the remaining fit batches are recomputed when written.
KEEP_BYTES = 4 << 30
_DECODED = np.zeros(0, np.uint8)  # stands for the pixels of a kept image that decoded fine


class Precompute:
    """Python API, the same shape as training: `Precompute(PrecomputeConfig(...), device="cuda:0").run()`.

    Under torchrun or SLURM the shard and GPU come from the launcher's environment (precompute/launch.py);
    `shard_explicit` says whether `cfg.shard` was set on purpose (default: when it is not "0/1").
    """

    def __init__(
        self, cfg: PrecomputeConfig, device: str | None = None, shard_explicit: bool | None = None
    ) -> None:
        from dinocache.precompute import launch

        cfg = cfg if device is None else dataclasses.replace(cfg, device=str(device))
        explicit = cfg.shard != "0/1" if shard_explicit is None else shard_explicit
        shard, dev = launch.resolve(cfg.shard, explicit, cfg.device, launch.from_env())
        if (shard, dev) != (cfg.shard, cfg.device):  # re-validated: one writer of several may not overwrite
            cfg = dataclasses.replace(cfg, shard=shard, device=dev)
        self.cfg = cfg
        # multi-teacher cache: this run writes the single-teacher store teachers/NAME inside it
        self.multi_root: str | None = None
        if cfg.teacher_name:
            from dinocache.cache.multi import teacher_path

            self.multi_root = cfg.cache
            self.cfg = dataclasses.replace(self.cfg, cache=teacher_path(cfg.cache, cfg.teacher_name))
        self.rank, self.world = parse_shard(cfg.shard)
        self.bad: dict[str, str] = {}  # file -> reason
        # (shard, b0) -> (raw teacher output (B, C_t, h, w), the same of the flipped views or None, loaded
        # images) of batches the PCA fit ran
        self.kept: dict[tuple[int, int], tuple[Any, Any, list[Loaded]]] = {}

    def log(self, msg: str) -> None:
        tag = f"[shard {self.rank}/{self.world}] " if self.world > 1 else ""
        print(f"precompute: {tag}{msg}", file=sys.stderr, flush=True)

    def run(self) -> int:
        lock = self.lock()
        try:
            return self._run()
        finally:
            # a run refused before the store existed leaves no lock file (nor the folders made for it)
            from dinocache.cache.locations import local_path

            from dinocache.core.locks import release

            lp = local_path(self.cfg.cache)
            release(lock, tidy=lp is not None and not lp.exists())

    def lock(self) -> Any:
        """One writer per (local cache, shard i/N): a second launch of the same writer is refused while the
        first runs (the OS drops the lock when a process dies, so a killed writer's rerun is never blocked).
        None for object stores (no lock there) and for a folder where no lock file can be created."""
        from dinocache.cache.locations import local_path

        from dinocache.core.locks import Busy, hold

        lp = local_path(self.cfg.cache)
        if lp is None:
            return None
        path = lp.parent / f".{lp.name}.writer{self.rank}of{self.world}.lock"
        try:
            return hold(
                path,
                f"cache {self.cfg.cache} (writer {self.rank}/{self.world})",
                "another precompute writes it; wait for it to end (a rerun then resumes), or use another cache",
            )
        except Busy as e:
            from dinocache.cache.errors import CacheError

            raise CacheError(str(e)) from None
        except OSError:  # a read-only folder: nothing can be written there by anyone
            return None

    def _run(self) -> int:
        import dinocache.cache.format as fmt
        import torch
        from dinocache.teacher.registry import load_teacher

        from dinocache.core.data import DataError, image_key, list_images
        from dinocache.core.device import select_device

        cfg = self.cfg
        root, files = list_images(cfg.data, cfg.split)
        if not files:
            raise DataError(f"{cfg.data}: split '{cfg.split}' has no images; nothing to precompute")
        self.files = files
        keys = [image_key(f, root) for f in files]
        self.keys = keys
        from dinocache.cache.freshness import snapshot

        # each image's size+mtime before any is hashed: recorded at the end for those that kept it, so the
        # trainer can tell a changed image with one stat (cache/freshness.py)
        self.stat_before = snapshot(files)
        device = select_device(cfg.device)
        teacher = load_teacher(cfg.dino_root, layer=cfg.dino_layer, device=device, family=cfg.teacher_family)
        teacher.check_imgsz(cfg.imgsz)
        # the teacher's own grid (SAM: 64x64 whatever imgsz) and image pixels per cell
        p = teacher.stride(cfg.imgsz)
        c_t = teacher.channels
        k = c_t if cfg.channels == "full" else int(cfg.channels)
        if k > c_t:
            raise ConfigError(
                f"channels: {k} but the teacher has only {c_t} channels; use <= {c_t} or channels=full"
            )
        grid = list(teacher.grid(cfg.imgsz))
        spec = fmt.Spec(
            n=len(files),
            k=k,
            grid=grid,
            imgsz=cfg.imgsz,
            patch_size=p,
            teacher_channels=c_t,
            shard_size=cfg.shard_size or fmt.auto_shard_size(k * grid[0] * grid[1] * 2, len(files)),
            codec=cfg.codec,
            key_len=max(len(s.encode()) for s in keys),
            pca=cfg.channels != "full",
            pca_fit_images=min(cfg.pca_fit_images, len(files)),
            flips=bool(cfg.cache_flips),
            teacher=teacher.fingerprint(cfg.imgsz),
            teacher_files=self.teacher_files(),
            created_by=f"dinocache {_version()}",
            created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            source={"data": str(Path(cfg.data).resolve()), "split": cfg.split},
        )
        with ThreadPoolExecutor(max(1, cfg.workers), thread_name_prefix="decode") as pool:
            self.pool = pool
            if self.multi_root is not None:
                self.check_multi(keys)
            writer = self.open_store(spec, keys, teacher)
            if self.multi_root is not None and self.rank == 0:
                from dinocache.cache.multi import register

                register(self.multi_root, cfg.teacher_name, writer.spec, cfg.storage_options)
            self.save_config()
            with torch.inference_mode():
                self.compute(writer, teacher)
        return self.finish(writer)

    def teacher_files(self) -> dict[str, Any]:
        """File-level digest of dino_root's weight files (the trainer checks it without loading the teacher)."""
        from dinocache.teacher.digest import DigestError, digest, locate

        folder = locate(self.cfg.dino_root)
        if folder is None:
            raise ConfigError(
                f"dino_root: cannot find the files of {self.cfg.dino_root!r} on disk to digest them"
            )
        try:
            return digest(folder)
        except DigestError as e:
            raise ConfigError(f"dino_root: {e}") from None

    def check_multi(self, keys: list[str]) -> None:
        """A multi-teacher cache: the root is not a single-teacher store, and the other teachers cover the
        same images at the same imgsz."""
        import dinocache.cache.format as fmt
        from dinocache.cache.errors import CacheError
        from dinocache.cache.locations import read_attrs
        from dinocache.cache.multi import check_joinable

        root, so = str(self.multi_root), self.cfg.storage_options
        if fmt.ATTRS_KEY in (read_attrs(root, so) or {}):
            raise CacheError(
                f"{root} is a single-teacher cache; teacher_name={self.cfg.teacher_name} needs a multi-teacher "
                "cache: choose another `cache` path (or drop teacher_name)"
            )
        check_joinable(root, self.cfg.teacher_name, self.cfg.imgsz, keys, so)

    # -- store
    def open_store(self, spec: Any, keys: list[str], teacher: Any) -> Any:
        import dinocache.cache.format as fmt
        from dinocache.cache.errors import CacheError
        from dinocache.cache.locations import check_reachable, delete, exists, read_attrs
        from dinocache.cache.store import CacheWriter

        cfg, so = self.cfg, self.cfg.storage_options
        check_reachable(cfg.cache, so)  # object store: credentials and bucket, before any compute
        if self.rank > 0:
            self.wait_ready()
            writer = CacheWriter(cfg.cache, so)
            self.check_compatible(writer, spec, keys)
            self.check_layout(writer)
            return writer
        if cfg.overwrite and exists(cfg.cache, so):
            self.log(f"--overwrite: deleting {cfg.cache}")
            delete(cfg.cache, so)
        attrs = read_attrs(cfg.cache, so)
        block = (attrs or {}).get(fmt.ATTRS_KEY)
        if cfg.repair and not (isinstance(block, dict) and block.get("ready")):
            raise CacheError(
                f"repair: {cfg.cache} is not a finished feature cache, nothing to repair; run `dinocache precompute` "
                "(it creates or resumes it)"
            )
        if isinstance(block, dict) and block.get("ready"):
            writer = CacheWriter(cfg.cache, so)  # checks format name/version
            if cfg.repair:
                self.repair(writer, keys)
            self.check_compatible(writer, spec, keys)
            self.check_layout(writer)
            self.log(f"resuming {cfg.cache}: {int(np.count_nonzero(_done(writer)))}/{spec.n} rows done")
            return writer
        if isinstance(block, dict):  # ours, but creation never finished: nobody wrote rows into it
            fmt.check_attrs(attrs or {}, cfg.cache)
            self.log(f"{cfg.cache} was left half-created; recreating it")
            delete(cfg.cache, so)
        elif exists(cfg.cache, so) and not _is_empty_dir(cfg.cache, so):
            raise CacheError(
                f"{cfg.cache} exists and is not a dinocache feature cache; choose another `cache` path "
                "or pass --overwrite to delete it"
            )
        else:
            delete(cfg.cache, so)
        pca, mean, std = self.fit(spec, teacher)
        self.log(
            f"creating {cfg.cache}: N={spec.n} K={spec.k} grid={spec.grid} shard_size={spec.shard_size} codec={spec.codec}"
        )
        return CacheWriter.create(cfg.cache, spec, keys, mean, std, pca, so)

    def repair(self, writer: Any, keys: list[str]) -> None:
        """Find every bad row (every chunk re-read through its crc32c, shard files, NaN/inf) and reset its shard to
        not done; keys chunks that fail their checksum are rewritten from the dataset listing."""
        import dinocache.cache.format as fmt
        from dinocache.cache.check import scan
        from dinocache.cache.store import FeatureCache

        fc = FeatureCache(self.cfg.cache, self.cfg.storage_options)
        bad, _, _ = scan(fc)
        spec = writer.spec
        shards = sorted({b.row // spec.shard_size for b in bad})
        for b in bad:
            self.log(f"repair: {b.line()}")
        if len(keys) == spec.n:
            for s in sorted({b.row // spec.shard_size for b in bad if f"/{fmt.KEYS}/" in b.file}):
                writer.write_keys(s, keys)
        for s in shards:
            writer.reset_shard(s)
        self.repaired = (len(bad), len(shards))
        self.log(
            f"repair: {len(bad)} bad row(s) in {len(shards)} shard(s) reset to not done"
            if bad
            else "repair: no damaged rows; recomputing only shards whose images changed (if any)"
        )

    def wait_ready(self) -> None:
        import dinocache.cache.format as fmt
        from dinocache.cache.errors import CacheError
        from dinocache.cache.locations import read_attrs

        t0 = time.monotonic()
        said = False
        while True:
            attrs = read_attrs(self.cfg.cache, self.cfg.storage_options) or {}
            block = attrs.get(fmt.ATTRS_KEY)
            if isinstance(block, dict) and block.get("ready"):
                return
            if time.monotonic() - t0 > self.cfg.wait_timeout:
                raise CacheError(
                    f"gave up after {self.cfg.wait_timeout:.0f}s waiting for shard 0 to create {self.cfg.cache}; "
                    f"start `dinocache precompute --shard 0/{self.world}` (it creates the store)"
                )
            if not said:
                self.log(f"waiting for shard 0/{self.world} to create {self.cfg.cache}")
                said = True
            time.sleep(1.0)

    def check_compatible(self, writer: Any, spec: Any, keys: list[str]) -> None:
        import dinocache.cache.format as fmt

        lines = fmt.compat_diff(writer.spec, spec)
        stored = writer.stored_keys()
        if stored != keys and writer.spec.n == spec.n:
            first = next(i for i, (a, b) in enumerate(zip(stored, keys)) if a != b)
            lines.append(
                f"keys: the dataset listing differs from the cache's (row {first}: cache {stored[first]!r}, now {keys[first]!r})"
            )
        elif writer.spec.n != spec.n:
            # name the images: a count alone leaves the user to diff two listings
            gone, new = sorted(set(stored) - set(keys)), sorted(set(keys) - set(stored))
            for what, names in (
                ("in the cache but no longer in the dataset", gone),
                ("new in the dataset", new),
            ):
                if names:
                    lines.append(
                        f"{len(names)} image(s) {what}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
                    )
        hint = "rerun with --overwrite to delete it and rebuild (single writer), or point `cache` elsewhere"
        fmt.raise_mismatch(f"the existing cache {self.cfg.cache}", lines, hint)

    def check_layout(self, writer: Any) -> None:
        """Refuse to join an unfinished store that writers of another world size N have been writing.

        Each writer leaves precompute.shard{i}of{N}.yaml (precompute.yaml when N = 1) in the store. Rows are
        owned by shard k % N, so writers of two layouts running at once would share zarr shards, and two
        writers of one shard silently lose images; the finished shards of an old layout are fine to keep,
        so `reshard=true` joins anyway once the old writers are gone.
        """
        import re

        from dinocache.cache.errors import CacheError
        from dinocache.cache.locations import list_files

        worlds: dict[int, list[str]] = {}
        for name in list_files(self.cfg.cache, self.cfg.storage_options):
            m = re.fullmatch(r"precompute\.shard(\d+)of(\d+)\.yaml", name)
            n = int(m.group(2)) if m else 1 if name == "precompute.yaml" else None
            if n is not None and n != self.world:
                worlds.setdefault(n, []).append(name)
        if not worlds or self.cfg.reshard or bool(_done(writer).all()):
            return
        old = ", ".join(f"{n} ({', '.join(sorted(v)[:3])})" for n, v in sorted(worlds.items()))
        raise CacheError(
            f"{self.cfg.cache} is unfinished and was written with a different number of writers: {old}, "
            f"but this launch has {self.world} (torchrun WORLD_SIZE, SLURM_NTASKS or --shard i/N). Relaunch "
            f"with {min(worlds)} process(es) to finish it, or, once none of the old writers is still running, "
            "pass reshard=true (finished shards are kept)"
        )

    def save_config(self) -> None:
        import yaml
        from dinocache.cache.locations import write_sidecar

        name = "precompute.yaml" if self.world == 1 else f"precompute.shard{self.rank}of{self.world}.yaml"
        saved = {k: v for k, v in to_dict(self.cfg).items() if k != "repair"}  # how it was made, not mended
        # anyone who can read the store reads this file: credentials stay where fsspec/boto found them
        saved["storage_options"] = scrub(saved["storage_options"])
        text = yaml.safe_dump(saved, sort_keys=False)
        try:
            write_sidecar(self.cfg.cache, name, text, self.cfg.storage_options)
        except OSError as e:  # e.g. a finished cache in a read-only folder: fine unless rows must be written
            self.config_error = f"cannot write {self.cfg.cache}/{name} ({e.strerror or e})"

    # -- PCA
    def batches(self, spec: Any) -> list[tuple[int, int, range]]:
        """Every (shard, b0, rows) teacher batch of the write pass: fixed boundaries inside each shard."""
        out = []
        for s in range(spec.n_shards):
            r = spec.shard_rows(s)
            for b0 in range(0, len(r), self.cfg.batch):
                out.append((s, b0, range(r.start + b0, min(r.stop, r.start + b0 + self.cfg.batch))))
        return out

    def fit_batches(self, spec: Any) -> list[tuple[int, int, range]]:
        """Evenly spaced whole write-pass batches covering at least `pca_fit_images` images.

        Whole batches, so the fit pass runs the teacher on exactly the tensors the write pass would and its
        outputs can be written as rows (teacher once per image, bit-identical to recomputing them).
        """
        allb = self.batches(spec)
        want = spec.pca_fit_images
        k = min(len(allb), -(-want // self.cfg.batch))
        while True:
            pick = np.unique(np.linspace(0, len(allb) - 1, k).round().astype(int))
            if sum(len(allb[i][2]) for i in pick) >= want or k >= len(allb):
                return [allb[i] for i in pick]
            k += 1

    def fit(self, spec: Any, teacher: Any) -> tuple[Any, np.ndarray, np.ndarray]:
        """PCA basis (or None) and per-stored-channel mean/std from evenly spaced whole batches.

        Keeps the raw teacher outputs of the batches this process will write (up to KEEP_BYTES) in
        `self.kept`, so `compute` writes them instead of running the teacher on those images again.
        """
        import torch
        from dinocache.cache.pca import MomentAccumulator
        from tqdm import tqdm

        cfg = self.cfg
        picked = self.fit_batches(spec)
        rows = [r for _, _, rr in picked for r in rr]
        acc = MomentAccumulator(teacher.channels)
        images = prefetch(self.files, rows, cfg.imgsz, self.pool, ahead=2 * cfg.batch)
        used, kept_bytes = 0, 0
        errors: list[str] = []
        t0 = time.perf_counter()
        bar = tqdm(total=len(rows), unit="img", desc="pca fit", dynamic_ncols=True, file=sys.stderr)
        try:
            with torch.inference_mode():
                for s, b0, rr in picked:
                    chunk = [next(images) for _ in rr]
                    for i, ld in zip(rr, chunk):
                        if ld.rgb is None:
                            errors.append(f"{self.files[i]}: {ld.error}")
                            tqdm.write(f"precompute: PCA fit skipped {errors[-1]}", file=sys.stderr)
                    good = [j for j, ld in enumerate(chunk) if ld.rgb is not None]
                    if good:
                        # the same (B, 3, H, W) tensor the write pass builds for this batch
                        x = to_batch([ld.rgb for ld in chunk], cfg.imgsz, teacher.device)
                        y = teacher.extract_feature_map(x)  # (B, C_t, h, w) float32
                        # the statistics come from the unflipped views only: `features` is the same with
                        # or without cache_flips
                        acc.update(y[good] if len(good) < len(chunk) else y)
                        used += len(good)
                        nbytes = y.numel() * y.element_size() * (2 if spec.flips else 1)
                        if s % self.world == self.rank and kept_bytes + nbytes <= KEEP_BYTES:
                            yf = teacher.extract_feature_map(flipped_view(x)) if spec.flips else None
                            # the write pass needs only "decoded or not", the hash and the error, not the pixels
                            light = [
                                Loaded(_DECODED if ld.rgb is not None else None, ld.sha256, ld.error)
                                for ld in chunk
                            ]
                            self.kept[(s, b0)] = (y, yf, light)
                            kept_bytes += nbytes
                    bar.update(len(chunk))
        finally:
            bar.close()
        if used == 0:
            from dinocache.core.data import DataError

            shown = "\n  ".join(errors[:10]) + ("\n  ..." if len(errors) > 10 else "")
            raise DataError(f"none of the {len(rows)} PCA-fit images of {cfg.data} could be used:\n  {shown}")
        reused = sum(len(c) for _, _, c in self.kept.values())
        self.log(
            f"fitted {'PCA' if spec.pca else 'channel stats'} on {used} images in {time.perf_counter() - t0:.1f}s; "
            f"their {reused} teacher outputs are written as rows, not recomputed"
        )
        if not spec.pca:
            mean, std = acc.channel_stats()
            return None, mean, np.maximum(std, 1e-6)
        basis = acc.basis(spec.k)
        # Projected channels have zero mean and variance = explained variance over the fit sample.
        return (
            basis,
            np.zeros(spec.k, np.float32),
            np.sqrt(np.maximum(basis.explained_variance, 1e-12)).astype(np.float32),
        )

    # -- compute + write
    def plan(self, writer: Any) -> list[int]:
        """Owned shards that still need computing (not all done, or an image changed since)."""
        spec = writer.spec
        todo, changed = [], 0
        for s in range(self.rank, spec.n_shards, self.world):
            done, stored = writer.shard_state(s)
            if not done.all():
                todo.append(s)
                continue
            rows = spec.shard_rows(s)
            now = list(self.pool.map(_sha_or_empty, [self.files[r] for r in rows]))
            diff = sum(a != b for a, b in zip(now, stored))
            if diff:
                changed += diff
                todo.append(s)
        if changed:
            self.log(f"{changed} image(s) changed since they were cached; recomputing their shards")
        return todo

    def _shard_batches(self, spec: Any, s: int) -> list[tuple[int, range]]:
        r = spec.shard_rows(s)
        return [
            (b0, range(r.start + b0, min(r.stop, r.start + b0 + self.cfg.batch)))
            for b0 in range(0, len(r), self.cfg.batch)
        ]

    def compute(self, writer: Any, teacher: Any) -> None:
        import torch
        from tqdm import tqdm

        cfg, spec = self.cfg, writer.spec
        basis = writer.basis()  # the stored float32 basis: every writer projects with the same numbers
        todo = self.plan(writer)
        owned = len(range(self.rank, spec.n_shards, self.world))
        rows = [r for s in todo for r in spec.shard_rows(s)]
        self.n_computed = len(rows)
        if owned - len(todo):
            self.log(f"{owned - len(todo)} of {owned} owned shard(s) already done, skipped")
        blocked = getattr(self, "config_error", None)
        if blocked and rows:
            from dinocache.cache.errors import CacheError

            raise CacheError(
                f"{blocked}; {len(rows)} row(s) still need writing: make the cache folder writable"
            )
        if blocked:
            self.log(f"{blocked}; nothing to write, the cache is complete")
        if not rows:
            return
        h, w = spec.grid
        q: queue.Queue = queue.Queue(maxsize=2)
        failure: list[BaseException] = []

        def write_loop() -> None:
            while (item := q.get()) is not None:
                if failure:
                    continue
                try:
                    writer.write_shard(*item)
                except BaseException as e:  # reported by the main thread
                    failure.append(e)

        thread = threading.Thread(target=write_loop, name="cache-writer", daemon=True)
        thread.start()
        todo_set = set(todo)
        kept = {k: v for k, v in self.kept.items() if k[0] in todo_set}
        self.kept = {}
        fresh = [
            r for s in todo for b0, rr in self._shard_batches(spec, s) if (s, b0) not in kept for r in rr
        ]
        images = prefetch(self.files, fresh, cfg.imgsz, self.pool, ahead=max(2 * cfg.batch, 4 * cfg.workers))
        t0 = time.perf_counter()
        bar = tqdm(total=len(rows), unit="img", desc="precompute", dynamic_ncols=True, file=sys.stderr)
        try:
            for s in todo:
                r = spec.shard_rows(s)
                m = len(r)
                feats = np.full((m, spec.k, h, w), np.nan, np.float16)
                flips = np.full((m, spec.k, h, w), np.nan, np.float16) if spec.flips else None
                shas = [""] * m
                ok = np.zeros(m, np.uint8)
                # Fixed batch boundaries inside the shard: a rerun reproduces the same bits.
                for b0, rr in self._shard_batches(spec, s):
                    y = yf = None
                    if (s, b0) in kept:  # computed by the PCA fit pass: same batch, same bits
                        y, yf, chunk = kept.pop((s, b0))
                    else:
                        chunk = [next(images) for _ in rr]
                    for j, ld in enumerate(chunk):
                        if ld.error:
                            self.bad[str(self.files[r.start + b0 + j])] = ld.error
                            tqdm.write(
                                f"precompute: skipped {self.files[r.start + b0 + j]}: {ld.error}",
                                file=sys.stderr,
                            )
                    if y is None:
                        x = to_batch([ld.rgb for ld in chunk], cfg.imgsz, teacher.device)
                        y = teacher.extract_feature_map(x)  # (B, C_t, h, w) float32
                        if spec.flips:  # a batch of its own: the same batch shapes as the unflipped pass
                            yf = teacher.extract_feature_map(flipped_view(x))
                    if basis is not None:
                        y = basis.project(y)  # (B, C_t, h, w) -> (B, K, h, w)
                        yf = None if yf is None else basis.project(yf)
                    y16 = y.to(torch.float16).cpu().numpy()
                    yf16 = None if yf is None else yf.to(torch.float16).cpu().numpy()
                    for j, ld in enumerate(chunk):
                        if ld.rgb is not None:
                            feats[b0 + j] = y16[j]
                            if flips is not None:
                                flips[b0 + j] = yf16[j]
                            shas[b0 + j] = ld.sha256
                            ok[b0 + j] = 1
                    bar.update(len(chunk))
                if failure:
                    break
                q.put((s, feats, shas, ok, flips))
        finally:
            q.put(None)
            thread.join()
            bar.close()
        if failure:
            from dinocache.cache.errors import CacheError

            raise CacheError(f"writing to {cfg.cache} failed: {failure[0]}") from failure[0]
        dt = time.perf_counter() - t0
        self.compute_seconds = dt  # decode -> teacher -> PCA -> fp16 -> written; read by the benchmarks
        # the rows this loop ran the teacher on: the PCA fit's batches were computed before the clock started
        self.compute_rows = len(fresh)
        reused = len(rows) - len(fresh)
        self.log(
            f"computed {len(fresh)} images in {len(todo)} shard(s) in {dt:.1f}s "
            f"({len(fresh) / max(dt, 1e-9):.1f} img/s)"
            + (f"; {reused} more written from the PCA fit pass" if reused else "")
        )

    def finish(self, writer: Any) -> int:
        is_done = _done(writer)
        done = int(np.count_nonzero(is_done))
        self.log(f"{self.cfg.cache}: {done}/{writer.spec.n} rows done")
        self.record_images(writer, is_done)
        if self.bad:
            lines = "\n  ".join(f"{f}: {why}" for f, why in sorted(self.bad.items()))
            print(
                f"error: {len(self.bad)} image(s) could not be cached; their rows are left not done, "
                f"every other row was written:\n  {lines}",
                file=sys.stderr,
            )
            return 2
        return 0

    def record_images(self, writer: Any, is_done: np.ndarray) -> None:
        """Size+mtime of this writer's done rows (their sha256 was just checked or computed by this run)."""
        from dinocache.cache.freshness import record_name, snapshot, write_record

        spec = writer.spec
        rows = [
            r for s in range(self.rank, spec.n_shards, self.world) for r in spec.shard_rows(s) if is_done[r]
        ]
        name = record_name(self.rank, self.world)
        try:
            write_record(
                self.cfg.cache,
                name,
                self.keys,
                self.stat_before,
                snapshot(self.files),
                rows,
                self.cfg.storage_options,
            )
        except OSError as e:  # a finished cache in a read-only folder: the trainer then hashes the images
            self.log(
                f"cannot write {self.cfg.cache}/{name} ({e.strerror or e}); the trainer will hash the images"
            )


def _done(writer: Any) -> np.ndarray:
    import dinocache.cache.format as fmt

    return writer._whole(fmt.DONE)  # a chunk failing its checksum: CacheCorrupt naming it


def _sha_or_empty(path: Path) -> str:
    from dinocache.core.data import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return ""


def _is_empty_dir(path: str, so: dict[str, Any]) -> bool:
    from dinocache.cache.locations import filesystem

    fs, root = filesystem(path, so)
    try:
        return fs.isdir(root) and not fs.ls(root)
    except FileNotFoundError:
        return True


def _version() -> str:
    from dinocache import __version__

    return str(__version__)


def main(argv: list[str] | None = None) -> int:
    """`dinocache precompute --config config.json [key=value ...] [--shard i/N] [--overwrite]`"""
    ap = argparse.ArgumentParser(prog="dinocache precompute", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", default=None, help="config.json (section 'precompute'); default ./config.json if present"
    )
    ap.add_argument("--shard", default=None, help="i/N: write only the zarr shards k with k %% N == i")
    ap.add_argument("--overwrite", action="store_true", help="delete an existing cache first (single writer)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the 'precompute' section")
    args = ap.parse_intermixed_args(argv)

    config = (
        args.config if args.config is not None else ("config.json" if Path("config.json").exists() else None)
    )
    overrides = list(args.overrides)
    if args.shard is not None:
        overrides.append(f"shard={args.shard}")
    if args.overwrite:
        overrides.append("overwrite=true")
    try:
        cfg = load(PrecomputeConfig, config, "precompute", overrides)
        explicit = cfg.shard != "0/1" or any(o.split("=", 1)[0].strip() == "shard" for o in overrides)
        return Precompute(cfg, shard_explicit=explicit).run()
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.overwrite or any(o.replace(" ", "").lower() == "overwrite=true" for o in args.overrides):
            # the same command would delete what was computed so far
            print(
                "error: interrupted; rerun it without --overwrite (overwrite=true) to resume", file=sys.stderr
            )
        else:
            print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def repair_main(argv: list[str] | None = None) -> int:
    """`dinocache cache repair PATH --data DATA [--config config.json] [key=value ...]`

    Recomputes only what is bad or stale in the cache at PATH, with the options it was made with (the
    precompute.yaml it holds; else config.json's precompute section), overridden by key=value (e.g. device=cpu).
    """
    import yaml
    from dinocache.cache.errors import CacheError
    from dinocache.cache.locations import filesystem

    from dinocache.core.config import build, field_names, parse_overrides

    ap = argparse.ArgumentParser(
        prog="dinocache cache repair", description=repair_main.__doc__.splitlines()[0]
    )
    ap.add_argument("path", help="the cache folder or URL")
    ap.add_argument("--data", required=True, help="data.yaml of the dataset the cache was built from")
    ap.add_argument("--config", default=None, help="config.json used when the cache holds no precompute.yaml")
    ap.add_argument(
        "overrides", nargs="*", help="key=value overrides (device=cpu, workers=4, storage_options=...)"
    )
    args = ap.parse_intermixed_args(argv)
    try:
        cli = parse_overrides(args.overrides)
        so = json.loads(cli["storage_options"]) if "storage_options" in cli else None
        fs, root = filesystem(args.path, so)
        if not fs.exists(f"{root.rstrip('/')}/zarr.json"):
            raise CacheError(
                f"repair: no feature cache at {args.path}, nothing to repair; run `dinocache precompute`"
            )
        sidecar = f"{root.rstrip('/')}/precompute.yaml"
        forced = {"cache": args.path, "data": args.data, "repair": True, "overwrite": False, "shard": "0/1"}
        if fs.exists(sidecar):
            saved = yaml.safe_load(fs.cat(sidecar).decode()) or {}
            known = field_names(PrecomputeConfig)
            values = {k: v for k, v in saved.items() if k in known}
            values.update(cli)
            values.update(forced)
            cfg = build(PrecomputeConfig, values, f"{args.path}/precompute.yaml")
        else:
            config = args.config or ("config.json" if Path("config.json").exists() else None)
            extra = [f"{k}={v}" for k, v in forced.items()]
            cfg = load(PrecomputeConfig, config, "precompute", [*args.overrides, *extra])
        run = Precompute(cfg)
        rc = run.run()
        n_bad, n_shards = getattr(run, "repaired", (0, 0))
        print(
            f"repair: {args.path}: {n_bad} bad row(s) in {n_shards} shard(s) and {getattr(run, 'n_computed', 0)} "
            f"row(s) recomputed in all{'' if rc == 0 else ' (some images could not be cached, see above)'}",
            file=sys.stderr,
        )
        return rc
    except (DinocacheError, json.JSONDecodeError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
