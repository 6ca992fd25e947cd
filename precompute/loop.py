"""The write pass of a precompute run: which owned shards still need computing, then each of them in
fixed batches (decode -> teacher -> PCA projection -> fp16) handed whole to a background writer thread, so
teacher compute and I/O overlap; and the size+mtime record of the rows this writer finished."""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dinocache.precompute.fit import Kept
from dinocache.precompute.images import flipped_view, prefetch, sha_or_empty, to_batch
from dinocache.precompute.job import Job


@dataclass
class LoopResult:
    """What the write pass did."""

    # rows of the shards it wrote (fit-pass rows included)
    rows: int = 0
    # rows it ran the teacher on (the PCA fit's kept batches were computed before its clock started)
    loop_rows: int = 0
    # decode -> teacher -> PCA -> fp16 -> written, for the rows above (the benchmarks read it)
    seconds: float = 0.0
    # image file -> why it could not be cached (its row stays not done)
    bad: dict[str, str] = field(default_factory=dict)


def plan(job: Job, writer: Any) -> list[int]:
    """Owned shards that still need computing (not all done, or an image changed since)."""
    spec = writer.spec
    todo, changed = [], 0
    for s in job.owned(spec):
        done, stored = writer.shard_state(s)
        if not done.all():
            todo.append(s)
            continue
        rows = spec.shard_rows(s)
        now = list(job.pool.map(sha_or_empty, [job.files[r] for r in rows]))
        diff = sum(a != b for a, b in zip(now, stored))
        if diff:
            changed += diff
            todo.append(s)
    if changed:
        job.log(f"{changed} image(s) changed since they were cached; recomputing their shards")
    return todo


def compute(job: Job, writer: Any, teacher: Any, kept: Kept, blocked: str | None) -> LoopResult:
    """Compute and write every owned shard `plan` picks; `kept` holds the fit pass's outputs of owned
    batches (written instead of recomputed); `blocked` is why the store's sidecar could not be written
    (refused when rows still need writing)."""
    import torch
    from tqdm import tqdm

    cfg, spec = job.cfg, writer.spec
    out = LoopResult()
    basis = writer.basis()  # the stored float32 basis: every writer projects with the same numbers
    todo = plan(job, writer)
    owned = len(job.owned(spec))
    rows = [r for s in todo for r in spec.shard_rows(s)]
    out.rows = len(rows)
    if owned - len(todo):
        job.log(f"{owned - len(todo)} of {owned} owned shard(s) already done, skipped")
    if blocked and rows:
        from dinocache.cache.errors import CacheError

        raise CacheError(f"{blocked}; {len(rows)} row(s) still need writing: make the cache folder writable")
    if blocked:
        job.log(f"{blocked}; nothing to write, the cache is complete")
    if not rows:
        return out
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
    kept = {k: v for k, v in kept.items() if k[0] in todo_set}
    fresh = [r for s in todo for b0, rr in job.shard_batches(spec, s) if (s, b0) not in kept for r in rr]
    images = prefetch(job.files, fresh, cfg.imgsz, job.pool, ahead=max(2 * cfg.batch, 4 * cfg.workers))
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
            for b0, rr in job.shard_batches(spec, s):
                y = yf = None
                if (s, b0) in kept:  # computed by the PCA fit pass: same batch, same bits
                    y, yf, chunk = kept.pop((s, b0))
                else:
                    chunk = [next(images) for _ in rr]
                for j, ld in enumerate(chunk):
                    if ld.error:
                        out.bad[str(job.files[r.start + b0 + j])] = ld.error
                        tqdm.write(
                            f"precompute: skipped {job.files[r.start + b0 + j]}: {ld.error}", file=sys.stderr
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
    out.seconds = time.perf_counter() - t0
    out.loop_rows = len(fresh)
    reused = len(rows) - len(fresh)
    job.log(
        f"computed {len(fresh)} images in {len(todo)} shard(s) in {out.seconds:.1f}s "
        f"({len(fresh) / max(out.seconds, 1e-9):.1f} img/s)"
        + (f"; {reused} more written from the PCA fit pass" if reused else "")
    )
    return out


def record_images(job: Job, writer: Any, is_done: np.ndarray, stat_before: Any) -> None:
    """Size+mtime of this writer's done rows (their sha256 was just checked or computed by this run)."""
    from dinocache.cache.freshness import record_name, snapshot, write_record

    spec = writer.spec
    rows = [r for s in job.owned(spec) for r in spec.shard_rows(s) if is_done[r]]
    name = record_name(job.rank, job.world)
    cfg = job.cfg
    try:
        write_record(cfg.cache, name, job.keys, stat_before, snapshot(job.files), rows, cfg.storage_options)
    except OSError as e:  # a finished cache in a read-only folder: the trainer then hashes the images
        job.log(f"cannot write {cfg.cache}/{name} ({e.strerror or e}); the trainer will hash the images")
