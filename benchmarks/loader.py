"""Per-sample CPU of the training dataloader: plain Ultralytics vs the cache path.

Used by benchmarks/test_bench_loader.py and benchmarks/gpu.sh. Both datasets are built the way the
trainer builds them (Ultralytics' `get_cfg` + `build_yolo_dataset` for plain, `DistillDataset` with the
cache's `TeacherLookup` in warp mode for cache) and timed in one process with `time.process_time()`
(all threads): the DataLoader's fetch of random indices (`fetch`: `ds[i]` per index, or the dataset's
`__getitems__` as torch calls it) plus the collate, alternated A/B blocks, median of rounds.

The dataset is made larger than Ultralytics' mosaic buffer (min(n, 8 * batch, 1000) images) by linking
each generated image under several names, so most samples cost a real cache read (their own map is not in
the buffer); `reads_per_sample` reports it.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_linked_dataset(root: Path, unique: int, copies: int, imgsz: int, seed: int = 0) -> Path:
    """A demo dataset of `unique` generated images, each linked `copies` times under new names -> data.yaml."""
    from dinocache.datatools.demo_data import make_demo_dataset

    data = make_demo_dataset(root, n_train=unique, n_val=2, imgsz=imgsz, seed=seed) / "data.yaml"
    img_dir, lab_dir = root / "images" / "train", root / "labels" / "train"
    for img in sorted(img_dir.glob("*.png")):
        lab = lab_dir / f"{img.stem}.txt"
        for c in range(1, copies):
            os.link(img, img_dir / f"{img.stem}_c{c}.png")
            if lab.exists():
                os.link(lab, lab_dir / f"{img.stem}_c{c}.txt")
    for f in root.rglob("*.cache"):
        f.unlink()
    return data


def precompute(
    data: Path, teacher: Path, cache: Path, imgsz: int, channels: int = 64, flips: bool = False
) -> None:
    from dinocache.precompute.run import main as precompute_main

    rc = precompute_main(
        [
            f"data={data}",
            f"cache={cache}",
            f"dino_root={teacher}",
            f"imgsz={imgsz}",
            f"channels={channels}",
            "pca_fit_images=64",
            "batch=16",
            "device=cpu",
            f"cache_flips={str(flips).lower()}",
        ]
    )
    if rc != 0:
        raise RuntimeError(f"precompute of {data} failed ({rc})")


class KeysOnly:
    """Option B stand-in for TeacherLookup: attaches a map without reading it (keys only; read per batch)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.zero = np.zeros(shape, np.float16)

    def __call__(self, im_file: str) -> np.ndarray:
        return self.zero


def build(
    data: str, cache: str, imgsz: int, batch: int, channels: int = 32, lookup: Any = None, flips: bool = False
) -> tuple:
    """(plain YOLODataset, cache DistillDataset, TeacherLookup) built as the trainer builds them."""
    from dinocache.train.dataset import DistillDataset, TeacherLookup
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset

    from dinocache.core.data import list_split_images, load_data_yaml

    info = load_data_yaml(data)
    root, _ = list_split_images(data, "train")
    # Ultralytics' default augmentation (mosaic, affine, flips, HSV); blends are 0 by default (warp needs 0)
    args = get_cfg(overrides={"imgsz": imgsz, "task": "obb", "mixup": 0.0, "cutmix": 0.0, "copy_paste": 0.0})
    plain = build_yolo_dataset(args, info["train"], batch, info, mode="train", rect=False, stride=32)
    real = TeacherLookup(cache, root, channels)
    ds = DistillDataset(
        img_path=plain.img_path,
        imgsz=imgsz,
        batch_size=batch,
        augment=True,
        hyp=args,
        rect=False,
        stride=32,
        pad=0.0,
        task="obb",
        data=info,
        teacher=lookup or real,
        geometric_aug="warp",
        patch=16,
        cache_flips=flips,
    )
    return plain, ds, real


class Counting:
    def __init__(self, inner: Any) -> None:
        self.inner, self.calls, self.flipped = inner, 0, 0

    def __call__(self, im_file: str, flipped: bool = False) -> np.ndarray:
        self.calls += 1
        self.flipped += int(flipped)
        return self.inner(im_file, flipped)


def fetch(ds: Any, indices: Any) -> list:
    """One batch's samples as torch's DataLoader fetches them (`_MapDatasetFetcher`): `ds.__getitems__(indices)` where
    the dataset has it (DistillDataset: the batch's maps read first), else `ds[i]` per index."""
    indices = [int(i) for i in indices]
    if getattr(ds, "__getitems__", None):
        return ds.__getitems__(indices)
    return [ds[i] for i in indices]


def time_block(ds: Any, collate: Any, idx: np.ndarray, batch: int, seed: int | None = None) -> float:
    """CPU ms per sample of the DataLoader's fetch of idx (`fetch`: ds[i] per index, or the dataset's __getitems__)
    plus the collate of each batch. `seed`: Python's, numpy's and torch's
    generators are seeded first (outside the timing), so every arm given the same seed and indexes draws the same
    augmentation: the arms do the same image work and differ only by what the cache path adds."""
    if seed is not None:
        seed_all(seed)
    t0 = time.process_time()
    for b0 in range(0, len(idx), batch):
        collate(fetch(ds, idx[b0 : b0 + batch]))
    return 1000 * (time.process_time() - t0) / len(idx)


def seed_all(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def same_images(arms: list[tuple[Any, Any]], idx: np.ndarray, seed: int) -> bool:
    """Whether datasets in the same state (after the same seeded blocks), given the same seed and indexes, produce the
    same augmented images: the arms are paired. arms: (dataset, collate) pairs, the first the reference."""
    import torch

    imgs = []
    for ds, collate in arms:
        seed_all(seed)
        imgs.append(collate(fetch(ds, idx))["img"])
    return all(bool(torch.equal(imgs[0], x)) for x in imgs[1:])


def spread(values: list[float]) -> list[float]:
    """[min, median, max] of per-round figures."""
    return [round(min(values), 3), round(statistics.median(values), 3), round(max(values), 3)]


def measure(
    data: str,
    cache: str,
    imgsz: int,
    batch: int = 16,
    block: int = 64,
    rounds: int = 3,
    seed: int = 0,
    flips_cache: str | None = None,
    tensorstore_arm: bool = False,
) -> dict[str, Any]:
    """Alternated A (plain) / B (cache, option A: maps in workers) / C (option B: keys only) blocks, D
    (cache_flips: B on a cache with flipped views, each horizontal flip reading one) when `flips_cache`, and E
    (B reading through tensorstore instead of the memory-mapped shards) when `tensorstore_arm`."""
    import torch
    from dinocache.train.dataset import DistillDataset
    from ultralytics.data.dataset import YOLODataset

    from dinocache import cache as cache_mod

    torch.set_num_threads(1)
    plain, ds, real = build(data, cache, imgsz, batch)
    counting = Counting(real)
    ds.teacher = counting
    ts_ds = None
    if tensorstore_arm:
        _, ts_ds, ts_real = build(data, cache, imgsz, batch)
        ts_real._fc = cache_mod.open(cache, read_path="tensorstore")
    fc = cache_mod.open(cache)
    d = min(32, fc.k)
    keys_ds = build(data, cache, imgsz, batch, lookup=KeysOnly((d, *fc.grid)))[1]
    n = len(plain)
    rng = np.random.default_rng(seed)
    flips_ds = None
    if flips_cache:  # D: the same dataset on a cache with flipped views (cache_flips)
        _, flips_ds, freal = build(data, flips_cache, imgsz, batch, flips=True)
        fcount = Counting(freal)
        flips_ds.teacher = fcount
    dc = DistillDataset.collate_fn
    arms: list[tuple[str, Any, Any]] = [("plain", plain, YOLODataset.collate_fn), ("cache", ds, dc)]
    arms += [("keys", keys_ds, dc)]
    arms += [("tensorstore", ts_ds, dc)] if ts_ds is not None else []
    arms += [("flips", flips_ds, dc)] if flips_ds is not None else []
    # warm-up: the same seeded block for every arm (readers opened, mosaic buffers filled alike), then a check that
    # the arms are paired (the same augmented images from the same seed)
    warm = rng.integers(0, n, 8 * batch)
    for _, x, coll in arms:
        time_block(x, coll, warm, batch, seed=seed)
    paired = same_images([(x, coll) for _, x, coll in arms], rng.integers(0, n, batch), seed + 10**6)
    figs: dict[str, list[float]] = {name: [] for name, _, _ in arms}
    reads, main_read, flip_reads = [], [], []
    for r in range(rounds):
        idx = rng.integers(0, n, block)
        s = seed + 1 + r  # every arm of a round: the same indexes and the same augmentation draws
        for k in range(len(arms)):  # the arms' order rotates from round to round
            name, x, coll = arms[(r + k) % len(arms)]
            before, fbefore = counting.calls, fcount.flipped if flips_ds is not None else 0
            figs[name].append(time_block(x, coll, idx, batch, seed=s))
            if name == "cache":
                reads.append((counting.calls - before) / block)
            elif name == "flips":
                flip_reads.append((fcount.flipped - fbefore) / block)
        # option B's main-process side: one batched read of every tile row of a batch (about 4 per sample)
        tiles = int(4 * batch)
        t0 = time.process_time()
        for _ in range(max(1, block // batch)):
            fc.read(rng.integers(0, fc.n, tiles), channels=d)
        main_read.append(1000 * (time.process_time() - t0) / block)
    a, b, c = figs["plain"], figs["cache"], figs["keys"]
    e, f = figs.get("tensorstore", []), figs.get("flips", [])
    pa, pb, pc = statistics.median(a), statistics.median(b), statistics.median(c)
    return {
        "imgsz": imgsz,
        "n_images": n,
        "mosaic_buffer": min(n, 8 * batch, 1000),
        "plain_cpu_ms": round(pa, 2),
        "cache_cpu_ms": round(pb, 2),
        "cpu_ratio": round(pb / pa, 3),
        # per-round cache/plain ratios of the alternated blocks: [min, median, max]
        "cpu_ratio_spread": spread([y / x for x, y in zip(a, b)]),
        # median of the per-round cache - plain differences: what the cache path adds per sample
        "cache_extra_ms": round(statistics.median([y - x for x, y in zip(a, b)]), 3),
        "reads_per_sample": round(statistics.median(reads), 2),
        "paired": paired,
        "keys_only_cpu_ms": round(pc, 2),
        "keys_only_ratio": round(pc / pa, 3),
        "keys_main_read_ms_per_sample": round(statistics.median(main_read), 3),
        **(
            {
                "flips_cpu_ms": round(statistics.median(f), 2),
                "flips_ratio": round(statistics.median(f) / pa, 3),
                "flips_vs_cache": round(statistics.median(f) / pb, 3),
                "flip_reads_per_sample": round(statistics.median(flip_reads), 2),
            }
            if f
            else {}
        ),
        **(
            {
                "tensorstore_cpu_ms": round(statistics.median(e), 2),
                "tensorstore_ratio": round(statistics.median(e) / pa, 3),
                "tensorstore_ratio_spread": spread([y / x for x, y in zip(a, e)]),
            }
            if e
            else {}
        ),
        "plain_rounds_ms": [round(v, 2) for v in a],
        "cache_rounds_ms": [round(v, 2) for v in b],
        "rounds": rounds,
        "block": block,
        "batch": batch,
    }


def measure_pretrain(
    data: str, cache: str, imgsz: int, batch: int = 16, block: int = 64, rounds: int = 3, seed: int = 0
) -> dict[str, Any]:
    """The pretraining loader (`dinocache pretrain`: UnlabeledDistillDataset, labels never read, maps warped
    along) against plain image loading with the same augmentation (the same label-free dataset class without
    maps): alternated blocks of `ds[i]` + collate, CPU ms per sample."""
    import torch
    from dinocache.train.dataset import DistillDataset, TeacherLookup
    from dinocache.train.pretrain_trainer import NoLabels, UnlabeledDistillDataset
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset

    from dinocache.core.data import list_split_images, load_data_yaml

    class UnlabeledPlain(NoLabels, YOLODataset):
        """Ultralytics' YOLODataset reading no labels: the same images and augmentation, no teacher maps."""

    torch.set_num_threads(1)
    info = load_data_yaml(data)
    root, _ = list_split_images(data, "train")
    args = get_cfg(overrides={"imgsz": imgsz, "task": "obb", "mixup": 0.0, "cutmix": 0.0, "copy_paste": 0.0})
    kw = dict(
        img_path=info["train"], imgsz=imgsz, batch_size=batch, augment=True, hyp=args, rect=False, stride=32,
        pad=0.0, task="obb", data=info,
    )  # fmt: skip
    plain = UnlabeledPlain(**kw)
    lookup = Counting(TeacherLookup(cache, root, 32))
    ds = UnlabeledDistillDataset(**kw, teacher=lookup.inner, geometric_aug="warp", patch=16)
    ds.teacher = lookup
    n = len(plain)
    rng = np.random.default_rng(seed)
    warm = rng.integers(0, n, 8 * batch)
    time_block(plain, YOLODataset.collate_fn, warm, batch, seed=seed)
    time_block(ds, DistillDataset.collate_fn, warm, batch, seed=seed)
    arms = [(plain, YOLODataset.collate_fn), (ds, DistillDataset.collate_fn)]
    paired = same_images(arms, rng.integers(0, n, batch), seed + 10**6)
    a, b, reads = [], [], []
    for r in range(rounds):
        idx = rng.integers(0, n, block)
        s = seed + 1 + r  # both arms: the same indexes and augmentation draws; which goes first alternates
        for arm in (0, 1) if r % 2 == 0 else (1, 0):
            if arm == 0:
                a.append(time_block(plain, YOLODataset.collate_fn, idx, batch, seed=s))
            else:
                before = lookup.calls
                b.append(time_block(ds, DistillDataset.collate_fn, idx, batch, seed=s))
                reads.append((lookup.calls - before) / block)
    pa, pb = statistics.median(a), statistics.median(b)
    return {
        "imgsz": imgsz,
        "n_images": n,
        "plain_images_cpu_ms": round(pa, 2),
        "pretrain_cpu_ms": round(pb, 2),
        "cpu_ratio": round(pb / pa, 3),
        "cpu_ratio_spread": spread([y / x for x, y in zip(a, b)]),
        "pretrain_extra_ms": round(statistics.median([y - x for x, y in zip(a, b)]), 3),
        "reads_per_sample": round(statistics.median(reads), 2),
        "paired": paired,
        "rounds": rounds,
        "block": block,
        "batch": batch,
    }


def sample_batch(data: str, cache: str, imgsz: int, batch: int = 16, seed: int = 0) -> dict:
    """One collated warp-mode batch (maps + geometry) of the cache dataset, for the device-warp timing."""
    import random

    from dinocache.train.dataset import DistillDataset

    _, ds, _ = build(data, cache, imgsz, batch)
    random.seed(seed)
    rng = np.random.default_rng(seed)
    return DistillDataset.collate_fn(fetch(ds, rng.integers(0, len(ds), batch)))
