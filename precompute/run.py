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

This module is the runner (`Precompute`: lock, teacher, store, fit, write pass, in that order) and the two
command lines that start it (`dinocache precompute`, `dinocache cache repair`); the stages live beside it:
options in config.py, image loading in images.py, the store checks in prepare.py, the PCA fit in fit.py,
the write pass in loop.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from dinocache.precompute import fit as fitting
from dinocache.precompute import loop, prepare
from dinocache.precompute.config import PrecomputeConfig, parse_shard
from dinocache.precompute.images import Loaded, flipped_view, load_image, prefetch, to_batch
from dinocache.precompute.job import Job

from dinocache.core.config import ConfigError, load
from dinocache.core.errors import DinocacheError

# Raw teacher outputs of PCA-fit batches kept in RAM for the write pass (float32 (B, C_t, h, w); 256 ViT-L
# maps at 512 px are 1 GiB); beyond it the remaining fit batches are recomputed when written.
KEEP_BYTES = 4 << 30


@dataclass
class PrecomputeResult:
    """What `Precompute.run()` did."""

    # 0, or 2 when some images could not be cached (their rows stay not done, every other row is written)
    exit_code: int
    # the store written (teachers/NAME inside a multi-teacher cache)
    cache: str
    # done rows of the store after the run, of `n_rows`
    rows_done: int
    n_rows: int
    # rows of the shards this run wrote (the PCA fit's kept batches included)
    rows_computed: int = 0
    # rows the write pass ran the teacher on, and its seconds (decode -> teacher -> PCA -> fp16 -> written;
    # start-up, listing, hashing, teacher load and the PCA fit excluded): the benchmarks' throughput
    loop_rows: int = 0
    compute_seconds: float = 0.0
    # repair: (bad rows found, shards reset to not done); (0, 0) otherwise
    repaired: tuple[int, int] = (0, 0)
    # image file -> why it could not be cached
    bad_images: dict[str, str] = field(default_factory=dict)


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
        self.job = Job(self.cfg, [], [], self.rank, self.world)
        # the PCA fit's outputs of owned batches, written by the write pass instead of recomputed
        self.kept: fitting.Kept = {}
        self.repaired = (0, 0)

    def log(self, msg: str) -> None:
        self.job.log(msg)

    def run(self) -> PrecomputeResult:
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

    def _run(self) -> PrecomputeResult:
        import dinocache.cache.format as fmt
        import torch
        from dinocache.cache.freshness import snapshot
        from dinocache.teacher.registry import load_teacher

        from dinocache.core.data import DataError, image_key, list_images
        from dinocache.core.device import select_device

        cfg = self.cfg
        root, files = list_images(cfg.data, cfg.split)
        if not files:
            raise DataError(f"{cfg.data}: split '{cfg.split}' has no images; nothing to precompute")
        self.job.files, self.job.keys = files, [image_key(f, root) for f in files]
        keys = self.job.keys
        # each image's size+mtime before any is hashed: recorded at the end for those that kept it, so the
        # trainer can tell a changed image with one stat (cache/freshness.py)
        stat_before = snapshot(files)
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
            teacher_files=prepare.teacher_files(cfg.dino_root),
            created_by=f"dinocache {_version()}",
            created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            source={"data": str(Path(cfg.data).resolve()), "split": cfg.split},
        )
        with ThreadPoolExecutor(max(1, cfg.workers), thread_name_prefix="decode") as pool:
            self.job.pool = pool
            if self.multi_root is not None:
                prepare.check_multi(self.multi_root, cfg, keys)
            writer = self.open_store(spec, keys, teacher)
            if self.multi_root is not None and self.rank == 0:
                from dinocache.cache.multi import register

                register(self.multi_root, cfg.teacher_name, writer.spec, cfg.storage_options)
            blocked = prepare.save_config(cfg, self.rank, self.world)
            kept, self.kept = self.kept, {}
            with torch.inference_mode():
                done = loop.compute(self.job, writer, teacher, kept, blocked)
        return self.finish(writer, done, stat_before)

    def open_store(self, spec: Any, keys: list[str], teacher: Any) -> Any:
        """The store to write: shard i > 0 waits for shard 0's; shard 0 resumes (or repairs) a finished one,
        recreates a half-created one, refuses anything else at the path, or fits the PCA and creates it."""
        import dinocache.cache.format as fmt
        from dinocache.cache.errors import CacheError
        from dinocache.cache.locations import check_reachable, delete, exists, read_attrs
        from dinocache.cache.writer import CacheWriter

        cfg, so = self.cfg, self.cfg.storage_options
        check_reachable(cfg.cache, so)  # object store: credentials and bucket, before any compute
        if self.rank > 0:
            prepare.wait_ready(cfg, self.world, self.log)
            writer = CacheWriter(cfg.cache, so)
            prepare.check_compatible(writer, spec, keys, cfg.cache)
            prepare.check_layout(writer, cfg, self.world)
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
                self.repaired = prepare.repair(writer, cfg, keys, self.log)
            prepare.check_compatible(writer, spec, keys, cfg.cache)
            prepare.check_layout(writer, cfg, self.world)
            self.log(f"resuming {cfg.cache}: {prepare.rows_done(writer)}/{spec.n} rows done")
            return writer
        if isinstance(block, dict):  # ours, but creation never finished: nobody wrote rows into it
            fmt.check_attrs(attrs or {}, cfg.cache)
            self.log(f"{cfg.cache} was left half-created; recreating it")
            delete(cfg.cache, so)
        elif exists(cfg.cache, so) and not prepare.is_empty_dir(cfg.cache, so):
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

    def fit(self, spec: Any, teacher: Any) -> tuple[Any, np.ndarray, np.ndarray]:
        """PCA basis (or None) and per-stored-channel mean/std (precompute/fit.py); the raw outputs of owned
        fit batches (up to KEEP_BYTES) stay in `self.kept` for the write pass."""
        basis, mean, std, self.kept = fitting.fit(self.job, spec, teacher, KEEP_BYTES)
        return basis, mean, std

    def finish(self, writer: Any, done: loop.LoopResult, stat_before: Any) -> PrecomputeResult:
        is_done = writer.done_rows()
        n_done = int(np.count_nonzero(is_done))
        self.log(f"{self.cfg.cache}: {n_done}/{writer.spec.n} rows done")
        loop.record_images(self.job, writer, is_done, stat_before)
        if done.bad:
            lines = "\n  ".join(f"{f}: {why}" for f, why in sorted(done.bad.items()))
            print(
                f"error: {len(done.bad)} image(s) could not be cached; their rows are left not done, "
                f"every other row was written:\n  {lines}",
                file=sys.stderr,
            )
        return PrecomputeResult(
            exit_code=2 if done.bad else 0,
            cache=self.cfg.cache,
            rows_done=n_done,
            n_rows=writer.spec.n,
            rows_computed=done.rows,
            loop_rows=done.loop_rows,
            compute_seconds=done.seconds,
            repaired=self.repaired,
            bad_images=dict(done.bad),
        )


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
        return Precompute(cfg, shard_explicit=explicit).run().exit_code
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
        res = Precompute(cfg).run()
        n_bad, n_shards = res.repaired
        print(
            f"repair: {args.path}: {n_bad} bad row(s) in {n_shards} shard(s) and {res.rows_computed} "
            f"row(s) recomputed in all{'' if res.exit_code == 0 else ' (some images could not be cached, see above)'}",
            file=sys.stderr,
        )
        return res.exit_code
    except (DinocacheError, json.JSONDecodeError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


__all__ = [
    "KEEP_BYTES",
    "Loaded",
    "Precompute",
    "PrecomputeConfig",
    "PrecomputeResult",
    "flipped_view",
    "load_image",
    "main",
    "parse_shard",
    "prefetch",
    "repair_main",
    "to_batch",
]


if __name__ == "__main__":
    sys.exit(main())
