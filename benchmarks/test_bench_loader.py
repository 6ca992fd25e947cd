"""The CPU the cache path adds where users train. Run: `pytest benchmarks/test_bench_loader.py --benchmark`.

Sections (BENCHMARKS.md, benchmarks/results/latest.json):
- `loader`: CPU ms per sample of the dataloader (`__getitem__` + collate), plain Ultralytics vs cache (warp
  mode: read + geometry; the warp runs on the device), at 256 and 640 px, on a dataset larger than the mosaic
  buffer; also option B (workers attach keys only, the main process reads each batch).
- `reads`: images/s of one-image and batch-16 random reads, the memory-mapped shard reader (the default for
  local uncompressed caches), tensorstore and zarr-python vs a raw memmap of the same rows, 1 and 2 processes.
- `startup`: time to the first training step and peak RSS, ViT-L-shaped teacher, cache vs none, with 0 and 2
  DataLoader workers.
- `pretrain_loader`: the pretraining loader (`dinocache pretrain`) vs plain image loading, same augmentation.
- `device_warp`: the device-side warp's share of a training step on this CPU.
Nothing is asserted about speed.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import loader as L
from benchmarks.harness import run_scenario


@pytest.fixture(scope="module")
def loader_env(tmp_path_factory: pytest.TempPathFactory, quick: bool) -> dict:
    """Per imgsz: a dataset well above the mosaic buffer (800 images: linked copies) and its cache (tiny teacher,
    K=64); at 256 px also the same cache with flipped views."""
    from dinocache.teacher.tiny import make_tiny_teacher

    base = tmp_path_factory.mktemp("loader")
    teacher = make_tiny_teacher(base / "teacher", seed=0, size="tiny")
    env = {}
    sizes = {256: (100, 8), 640: (100, 8)} if not quick else {256: (40, 4), 640: (20, 4)}
    for imgsz, (unique, copies) in sizes.items():
        data = L.make_linked_dataset(base / f"d{imgsz}", unique, copies, imgsz)
        cache = base / f"c{imgsz}.zarr"
        L.precompute(data, teacher, cache, imgsz)
        flips = None
        if imgsz == 256:  # the same cache with flipped views (cache_flips=true)
            flips = base / f"c{imgsz}-flips.zarr"
            L.precompute(data, teacher, flips, imgsz, flips=True)
        env[imgsz] = (str(data), str(cache), str(flips) if flips else None)
    return env


def test_loader_cpu_per_sample(loader_env: dict, results, quick: bool) -> None:
    section = "loader"
    results.note(
        section,
        "CPU ms per sample (`time.process_time`, one process, 1 torch thread) of the DataLoader's fetch (`ds[i]` per "
        "index, or the dataset's `__getitems__` where it has one, as torch's DataLoader calls it: the cache path reads "
        "the batch's maps first) + collate over random indices, Ultralytics' default augmentation (mosaic, affine, flips, HSV), batch 16, 800 images (100 "
        "generated, each linked 8 times: more than the mosaic buffer, so `reads_per_sample` ~0.85). plain = "
        "Ultralytics' YOLODataset; cache = DistillDataset in warp mode (the sample's map read from the "
        "memory-mapped shard, crc32c and NaN/inf checked, mosaic tiles from the map buffer, geometry attached; "
        "the warp itself runs on the training device); tensorstore = the same with the map read through "
        "tensorstore (the read path before the mapped reader); keys_only = option B (workers attach only keys; "
        "`keys_main_read_ms_per_sample` = the main process's batched read of ~4 tile rows per sample). "
        "Alternated plain/cache/keys/tensorstore(/flips) blocks of 64 samples, median of rounds; `*_spread` = "
        "[min, median, max] of the per-round ratios. Target cpu_ratio <= 1.03. flips (256 px) = cache on a "
        "cache made with cache_flips=true (every horizontal flip, p=0.5, reads the teacher's map of the flipped "
        "image; flipped views are buffered like the maps): `flip_reads_per_sample` of those reads, `flips_ratio` "
        "against plain, `flips_vs_cache` against cache.",
    )
    for imgsz, (data, cache, flips) in loader_env.items():
        r = L.measure(
            data,
            cache,
            imgsz,
            block=32 if quick else 64,
            rounds=3 if quick else 15,
            flips_cache=flips,
            tensorstore_arm=True,
        )
        results.add(section, **r)


def test_pretrain_loader_cpu_per_sample(loader_env: dict, results, quick: bool) -> None:
    section = "pretrain_loader"
    results.note(
        section,
        "CPU ms per sample (`time.process_time`, one process, 1 torch thread) of the DataLoader's fetch + collate: the "
        "pretraining loader of `dinocache pretrain` (UnlabeledDistillDataset: labels never read, the map of "
        "each image read from the memory-mapped cache and warped along in warp mode) against plain image "
        "loading with the same augmentation (the same label-free Ultralytics dataset without maps), the "
        "`loader` section's 256 px images (800) and cache, alternated blocks of 64, median of rounds; "
        "`cpu_ratio_spread` = [min, median, max] of the per-round ratios. Target cpu_ratio <= 1.05.",
    )
    data, cache, _ = loader_env[256]
    results.add(
        section, **L.measure_pretrain(data, cache, 256, block=32 if quick else 64, rounds=3 if quick else 15)
    )


def _make_reads_store(path: Path, n: int, d: int, g: int, codec: str) -> np.ndarray:
    from dinocache.cache import format as fmt
    from dinocache.cache.store import CacheWriter

    s = fmt.auto_shard_size(d * g * g * 2, n)
    spec = fmt.Spec(
        n=n, k=d, grid=[g, g], imgsz=g * 16, patch_size=16, teacher_channels=d, shard_size=s, codec=codec,
        key_len=16, pca=False, pca_fit_images=1, teacher={"bench": True}, teacher_files={},
    )  # fmt: skip
    w = CacheWriter.create(str(path), spec, [f"k{i:08d}" for i in range(n)], np.zeros(d), np.ones(d))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, d, g, g)) * 0.5).astype(np.float16)
    for sh in range(spec.n_shards):
        r = spec.shard_rows(sh)
        w.write_shard(sh, x[r.start : r.stop], ["0" * 64] * len(r), np.ones(len(r), np.uint8))
    return x


READ_KINDS = {"mapped": "auto", "ts": "tensorstore", "zarr": "zarr"}  # -> cache.open's read_path


def _reader(kind: str, path: str, mm_path: str, shape: tuple[int, ...]):
    if kind == "memmap":
        mm = np.memmap(mm_path, np.float16, "r", shape=shape)
        float(mm.sum(dtype=np.float32))  # map every page first: steady state, not this process's first faults

        def read(rows: np.ndarray) -> np.ndarray:
            out = np.empty((len(rows), *shape[1:]), np.float16)
            for j, r in enumerate(np.sort(rows)):
                out[j] = mm[r]
            return out

        return read
    from dinocache import cache

    fc = cache.open(path, read_path=READ_KINDS[kind])
    return lambda rows: fc.read(rows)


def _read_loop(
    kind: str, path: str, mm_path: str, shape: tuple[int, ...], batch: int, count: int, seed: int
) -> float:
    """(wall, CPU) seconds for `count` random images read in batches of `batch` (1 = one image per call)."""
    read = _reader(kind, path, mm_path, shape)
    rng = np.random.default_rng(seed)
    read(rng.integers(0, shape[0], batch))  # open + warm
    rows = [rng.integers(0, shape[0], batch) for _ in range(count // batch)]
    t0, c0 = time.perf_counter(), time.process_time()
    for r in rows:
        read(r)
    return time.perf_counter() - t0, time.process_time() - c0


def _ips(kind, path, mm, shape, batch, count, procs, seed) -> float:
    """Images/s: per CPU second in one process (steady on a shared machine), per wall second over 2 processes."""
    if procs == 1:
        return count / _read_loop(kind, path, mm, shape, batch, count, seed)[1]
    # spawn: a forked child of a process that used tensorstore could not use it (docs/cache.md)
    with mp.get_context("spawn").Pool(procs) as pool:
        secs = pool.starmap(
            _read_loop, [(kind, path, mm, shape, batch, count, seed + i) for i in range(procs)]
        )
    return procs * count / max(s[0] for s in secs)


def test_reads_vs_memmap(tmp_path: Path, results, quick: bool) -> None:
    section = "reads"
    results.note(
        section,
        "Random reads of fp16 maps (D=32 channels, warm page cache), images per CPU second in 1 process and "
        "per wall second over 2 spawned processes, median of 3 alternated rounds: `cache.open(path).read(rows)` "
        "through the memory-mapped shard reader (`mapped`, the default for local uncompressed caches: shard "
        "index, crc32c check, copy), through tensorstore (`ts`, `read_path='tensorstore'`, the default for "
        "compressed and s3:// caches) and through zarr-python (`read_path='zarr'`) vs a raw numpy memmap of "
        "the same rows (no checksum); one image per call and batches of 16. zstd: the mapped reader declines "
        "(compressed), so `mapped` is tensorstore there. Target mapped/memmap >= 0.5 for one read.",
    )
    for g, n in ((16, 2000), (40, 600)) if not quick else ((16, 400), (40, 200)):
        for codec in ("none", "zstd"):
            path = tmp_path / f"r{g}{codec}.zarr"
            x = _make_reads_store(path, n, 32, g, codec)
            mm = tmp_path / f"r{g}.npy"
            if not mm.exists():
                np.memmap(mm, np.float16, "w+", shape=x.shape)[:] = x
            for procs in (1, 2) if codec == "none" else (1,):
                for batch in (1, 16):
                    # 2 processes: 4x the reads each, so both overlap for most of their run
                    count = (256 if batch == 1 else 1024) * (4 if procs == 2 else 1) // (2 if quick else 1)
                    figs: dict[str, list[float]] = {"mapped": [], "ts": [], "zarr": [], "memmap": []}
                    for r in range(3):
                        for kind in figs:
                            figs[kind].append(_ips(kind, str(path), str(mm), x.shape, batch, count, procs, r))
                    med = {k: statistics.median(v) for k, v in figs.items()}
                    results.add(
                        section,
                        grid=f"{g}x{g}",
                        kib_per_image=round(32 * g * g * 2 / 1024, 1),
                        codec=codec,
                        processes=procs,
                        batch=batch,
                        mapped_img_s=round(med["mapped"]),
                        ts_img_s=round(med["ts"]),
                        zarr_img_s=round(med["zarr"]),
                        memmap_img_s=round(med["memmap"]),
                        mapped_vs_memmap=round(med["mapped"] / med["memmap"], 3),
                        mapped_vs_memmap_spread=L.spread(
                            [m / x for m, x in zip(figs["mapped"], figs["memmap"])]
                        ),
                        ts_vs_memmap=round(med["ts"] / med["memmap"], 3),
                        zarr_vs_memmap=round(med["zarr"] / med["memmap"], 4),
                        ts_vs_zarr=round(med["ts"] / med["zarr"], 1),
                    )


@pytest.fixture(scope="module")
def startup_env(tmp_path_factory: pytest.TempPathFactory, quick: bool) -> dict:
    from dinocache.datatools.demo_data import make_demo_dataset
    from dinocache.teacher.tiny import make_tiny_teacher

    base = tmp_path_factory.mktemp("startup")
    size = "vits" if quick else "vitl"
    data = make_demo_dataset(base / "data", n_train=16, n_val=2, imgsz=256, seed=0) / "data.yaml"
    teacher = make_tiny_teacher(base / f"teacher_{size}", seed=0, size=size)
    cache = base / "cache.zarr"
    L.precompute(data, teacher, cache, 256, channels=64)
    return {"data": str(data), "teacher": str(teacher), "cache": str(cache), "size": size}


def test_startup_time_and_memory(startup_env: dict, results, quick: bool) -> None:
    section = "startup"
    e = startup_env
    results.note(
        section,
        f"Time from process start to Ultralytics' first on_train_batch_start and peak RSS (VmHWM) at that "
        f"moment, one fresh process per run (benchmarks/scenarios/startup.py), {e['size']}-shaped random "
        "teacher (dino_root present: cache mode checks its file digest), 16 images at 256 px, batch 8, CPU; "
        "workers 0, and 2 real DataLoader workers (the scenario undoes Ultralytics' workers=0 on a CPU, to "
        "measure what a GPU run pays per worker). `first_step_cpu_s` = the main process's CPU, "
        "`first_step_tree_cpu_s` = with its live workers'; alternated none/cache runs, median of 3, "
        "`*_runs` = each run. Target cache/none <= 1.05 for wall and CPU.",
    )
    keys = ("first_step_s", "first_step_cpu_s", "first_step_tree_cpu_s", "peak_rss_mib")
    for workers in (0, 2):
        runs: dict[str, list[dict]] = {"none": [], "cache": []}
        for _ in range(3):
            for mode in runs:
                args = ["--mode", mode, "--data", e["data"], "--imgsz", "256", "--batch", "8"]
                args += ["--cache", e["cache"], "--dino-root", e["teacher"], "--workers", str(workers)]
                runs[mode].append(run_scenario("benchmarks.scenarios.startup", args, timeout=900))
        med = {m: {k: statistics.median(float(r[k]) for r in rs) for k in keys} for m, rs in runs.items()}
        for mode, rs in runs.items():
            results.add(
                section,
                teacher=e["size"],
                workers=workers,
                mode=mode,
                first_step_s=round(med[mode]["first_step_s"], 2),
                first_step_cpu_s=round(med[mode]["first_step_cpu_s"], 2),
                first_step_tree_cpu_s=round(med[mode]["first_step_tree_cpu_s"], 2),
                peak_rss_mib=round(med[mode]["peak_rss_mib"], 1),
                first_step_runs_s=[r["first_step_s"] for r in rs],
                first_step_tree_cpu_runs_s=[r["first_step_tree_cpu_s"] for r in rs],
                tensorstore_imported=any(r["tensorstore_imported"] for r in rs),
                zarr_imported=any(r.get("zarr_imported", True) for r in rs),
                transformers_model_code=any(r["transformers_model_code_imported"] for r in rs),
            )
        results.add(
            section,
            teacher=e["size"],
            workers=workers,
            mode="cache/none",
            **{k: round(med["cache"][k] / med["none"][k], 3) for k in keys},
        )


def test_stale_check_cost(loader_env: dict, results, quick: bool) -> None:
    """The stale-map check a cache-mode training start runs (train.preflight.check_images_fresh: precompute's
    size+mtime record read, one stat per image, no image hashed when every record matches), CPU per run and per
    image, on the `loader` section's 256 px dataset; a row of the startup section."""
    from dinocache.cache.freshness import read_record, stale_images

    from dinocache import cache
    from dinocache.core.data import image_key, list_split_images

    data, path, _ = loader_env[256]
    fc = cache.open(path)
    known = {k: i for i, k in enumerate(fc.keys)}
    stored = fc.sha256()
    root, files = list_split_images(data, "train")
    times, hashed = [], 0
    for _ in range(3 if quick else 7):
        t0 = time.process_time()
        record = read_record(path)
        keys = [image_key(f, root) for f in files]
        stale, hashed = stale_images(files, keys, [stored[known[k]] for k in keys], record or {})
        times.append(time.process_time() - t0)
        assert not stale
    med = statistics.median(times)
    results.add(
        "startup",
        mode="stale_check",
        images=len(files),
        images_hashed=hashed,
        stale_check_cpu_ms=round(1000 * med, 2),
        stale_check_us_per_image=round(1e6 * med / max(1, len(files)), 2),
        stale_check_runs_ms=[round(1000 * t, 2) for t in times],
    )


def _student_step_ms(batch: dict, nc: int, rounds: int) -> float:
    """CPU ms of one student training step without the optimizer: YOLO26n-OBB forward + loss + backward."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import OBBModel

    m = OBBModel("yolo26n-obb.yaml", nc=nc, verbose=False)
    m.args = get_cfg()
    m.train()
    b = {k: batch[k] for k in ("cls", "bboxes", "batch_idx")}
    b["img"] = batch["img"].float() / 255
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        loss, _ = m.loss(b)
        loss.sum().backward()
        times.append(1000 * (time.process_time() - t0))
        m.zero_grad(set_to_none=True)
    return statistics.median(times)


def test_device_warp_share_of_step(loader_env: dict, results, quick: bool) -> None:
    import torch
    from dinocache.train.warp import GEOM_KEY, SRC_KEY, warp_batch

    section = "device_warp"
    results.note(
        section,
        "The warp moved out of the dataloader: `warp_batch` (tile maps + geometry -> warped maps + validity) "
        "on a real collated warp-mode batch (batch 16, Ultralytics' default mosaic/affine/flips, D=32), CPU ms "
        "(`process_time`, torch default threads), against one student training step on the same CPU "
        "(YOLO26n-OBB forward + loss + backward of that batch, no optimizer). share = warp / (step + warp). "
        "On a GPU both run on the device.",
    )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for imgsz, (data, cache, _) in loader_env.items():
        batch = L.sample_batch(data, cache, imgsz)
        tiles = int((batch[GEOM_KEY][..., 18] > 0).sum())
        src, geom = batch[SRC_KEY], batch[GEOM_KEY]
        warp_ms = []
        for _ in range(5):
            b = {SRC_KEY: src.clone(), GEOM_KEY: geom.clone()}
            t0 = time.process_time()
            warp_batch(b)
            warp_ms.append(1000 * (time.process_time() - t0))
        w = statistics.median(warp_ms)
        from dinocache.core.data import load_data_yaml

        step = _student_step_ms(batch, nc=int(load_data_yaml(data)["nc"]), rounds=2 if quick else 3)
        results.add(
            section,
            imgsz=imgsz,
            batch=int(src.shape[0]),
            tiles=tiles,
            maps_shape=list(src.shape),
            warp_ms=round(w, 2),
            step_ms=round(step, 1),
            share=round(w / (step + w), 4),
        )
