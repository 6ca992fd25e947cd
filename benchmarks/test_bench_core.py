"""The benchmark suite of the core claim (caching the teacher is cheap, distillation from the cache works). Run: `pytest benchmarks/ --benchmark` (`just bench`).

Each scenario runs in a fresh subprocess (benchmarks/harness.py) so its memory figure is clean; every
figure is reported as an absolute and as a ratio to its side-by-side baseline from this same run.
Nothing here asserts a speed: the figures go to benchmarks/results/latest.json and BENCHMARKS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.harness import ROOT, peak_mem_mib, run_scenario

TEACHERS = ("tiny", "vits", "vitl")


@pytest.fixture(scope="session")
def bench_env(tmp_path_factory: pytest.TempPathFactory, quick: bool) -> dict:
    """Demo data (64 train images at 256 px; 16 with --bench-quick), random teachers, one cache per teacher."""
    from dinocache.datatools.demo_data import make_demo_dataset
    from dinocache.precompute.run import main as precompute_main
    from dinocache.teacher.tiny import make_tiny_teacher

    base = tmp_path_factory.mktemp("bench")
    n = 16 if quick else 64
    data = make_demo_dataset(base / "data", n_train=n, n_val=4, imgsz=256, seed=0) / "data.yaml"
    env: dict = {"base": base, "data": str(data), "imgsz": 256, "teachers": {}, "caches": {}}
    for size in TEACHERS[:2] if quick else TEACHERS:
        t = make_tiny_teacher(base / f"teacher_{size}", seed=0, size=size)
        c = base / f"cache_{size}.zarr"
        rc = precompute_main(
            [
                f"data={data}",
                f"cache={c}",
                f"dino_root={t}",
                "imgsz=256",
                "channels=64",
                "pca_fit_images=16",
                "batch=16",
            ]
        )
        assert rc == 0
        env["teachers"][size] = str(t)
        env["caches"][size] = str(c)
    return env


def _train(env: dict, mode: str, size: str, epochs: int, *sets: str) -> dict:
    args = [
        "--mode",
        mode,
        "--data",
        env["data"],
        "--imgsz",
        str(env["imgsz"]),
        "--batch",
        "8",
        "--epochs",
        str(epochs),
        "--warmup-epochs",
        "1",
        "--cache",
        env["caches"][size],
        "--dino-root",
        env["teachers"][size],
        "--set",
        *sets,
    ]
    return run_scenario("benchmarks.scenarios.train_epoch", args, timeout=1800)


def test_epoch_time_and_memory(bench_env: dict, results, quick: bool) -> None:
    """Scenario 1: epoch time and peak memory for teacher_source none | cache | online, per teacher size."""
    epochs = 2 if quick else 3
    base = _train(bench_env, "none", "tiny", epochs)
    section = "Training: epoch time and peak memory"
    results.note(
        section,
        f"Demo data ({base['n_images']} train images at {bench_env['imgsz']} px), batch 8, {epochs} epochs, the first "
        "dropped as warm-up; only the training loop is timed (no validation). Teachers are random DINOv3 "
        "ViTs with real shapes (compute equals the real ones). Peak memory = CUDA max allocated on a GPU, "
        "else the subprocess's peak RSS. `cache` rows use the default `distill_geometric_aug=warp` (mosaic, "
        "affine and flips on, exactly like `none`, the teacher map warped along); `cache-off` switches geometric "
        "augmentation off instead; `online` runs the teacher each step on the same augmented batch. "
        "`time_vs_none` of `cache` and `online_vs_cache_time` are the ratios the product claims.",
    )
    results.add(
        section,
        label="none",
        mode="none",
        teacher="-",
        epoch_s=base["epoch_s"],
        per_image_ms=base["per_image_ms"],
        peak_mem_mib=peak_mem_mib(base),
    )
    for size in bench_env["teachers"]:
        cached = _train(bench_env, "cache", size, epochs)
        online = _train(bench_env, "online", size, epochs)
        for r in (cached, online):
            results.add(
                section,
                label=f"{r['mode']}/{size}",
                mode=r["mode"],
                teacher=size,
                epoch_s=r["epoch_s"],
                per_image_ms=r["per_image_ms"],
                peak_mem_mib=peak_mem_mib(r),
                time_vs_none=round(r["epoch_s"] / base["epoch_s"], 3),
                mem_vs_none=round(peak_mem_mib(r) / peak_mem_mib(base), 3),
                online_vs_cache_time=round(online["epoch_s"] / cached["epoch_s"], 3),
                online_vs_cache_mem=round(peak_mem_mib(online) / peak_mem_mib(cached), 3),
            )
        if size == "tiny":
            # the warp mode (default) against plain cache mode with geometric augmentation off
            off = _train(bench_env, "cache", size, epochs, "distill_geometric_aug=off")
            results.add(
                section,
                label=f"cache-off/{size}",
                mode="cache (aug off)",
                teacher=size,
                epoch_s=off["epoch_s"],
                per_image_ms=off["per_image_ms"],
                peak_mem_mib=peak_mem_mib(off),
                time_vs_none=round(off["epoch_s"] / base["epoch_s"], 3),
                mem_vs_none=round(peak_mem_mib(off) / peak_mem_mib(base), 3),
                warp_vs_off_time=round(cached["epoch_s"] / off["epoch_s"], 3),
            )
        bench_env["trainer_images_per_s"] = max(
            bench_env.get("trainer_images_per_s", 0), cached["images_per_s"]
        )


@pytest.fixture(scope="session")
def eval_env(tmp_path_factory: pytest.TempPathFactory, quick: bool) -> dict:
    """bench_env's data with the tiny teacher and its cache only (the periodic-eval rows need no other)."""
    from dinocache.datatools.demo_data import make_demo_dataset
    from dinocache.precompute.run import main as precompute_main
    from dinocache.teacher.tiny import make_tiny_teacher

    base = tmp_path_factory.mktemp("bench-eval")
    n = 16 if quick else 64
    data = make_demo_dataset(base / "data", n_train=n, n_val=16, imgsz=256, seed=0) / "data.yaml"
    t = make_tiny_teacher(base / "teacher_tiny", seed=0, size="tiny")
    c = base / "cache_tiny.zarr"
    args = [f"data={data}", f"cache={c}", f"dino_root={t}", "imgsz=256", "channels=64", "pca_fit_images=16"]
    assert precompute_main([*args, "batch=16"]) == 0
    return {
        "base": base,
        "data": str(data),
        "imgsz": 256,
        "teachers": {"tiny": str(t)},
        "caches": {"tiny": str(c)},
    }


def test_periodic_eval_cost(eval_env: dict, results, quick: bool) -> None:
    """The seed's performance table: YOLO only, + DINO distill, + periodic eval, as whole epochs."""
    epochs = 2 if quick else 3
    section = "Training: + periodic eval (whole epochs)"
    val = "val=true"  # Ultralytics validation each epoch (the scenario turns it off otherwise)
    off = ["eval_enabled=false", "dino_viz_enabled=false", val]
    on = [
        "eval_enabled=true",
        "eval_interval_epochs=1",
        "dino_viz_enabled=true",
        "dino_viz_every_n_epochs=1",
        val,
    ]
    base = _train(eval_env, "none", "tiny", epochs, *off)
    cached = _train(eval_env, "cache", "tiny", epochs, *off)
    full = _train(eval_env, "cache", "tiny", epochs, *on)
    results.note(
        section,
        f"The seed's table (YOLO only / + DINO distill / + periodic eval) as a user runs it: demo data "
        f"({base['n_images']} train, 16 val images at {eval_env['imgsz']} px), batch 8, {epochs} epochs, the "
        "first dropped; `full_epoch_s` is the whole epoch (training loop, Ultralytics validation, checkpoints "
        "and, in the last row, the geometric grade of last.pt on the val split, the eval panels and the DINO "
        "feature pictures, both every epoch: `eval_interval_epochs=1`, `dino_viz_every_n_epochs=1`); "
        "`train_loop_s` the training loop alone. At the defaults (eval every 2 epochs, viz every 5) the "
        "added cost per epoch is about half the eval share. Wall and CPU seconds, same machine, same run.",
    )
    for label, r in (("YOLO only", base), ("+ DINO distill (cache/tiny)", cached), ("+ periodic eval", full)):
        results.add(
            section,
            label=label,
            full_epoch_s=r["full_epoch_s"],
            cpu_full_epoch_s=r["cpu_full_epoch_s"],
            train_loop_s=r["epoch_s"],
            peak_mem_mib=peak_mem_mib(r),
            vs_yolo_only=round(r["full_epoch_s"] / base["full_epoch_s"], 3),
            cpu_vs_yolo_only=round(r["cpu_full_epoch_s"] / base["cpu_full_epoch_s"], 3),
            vs_distill=round(r["full_epoch_s"] / cached["full_epoch_s"], 3),
            cpu_vs_distill=round(r["cpu_full_epoch_s"] / cached["cpu_full_epoch_s"], 3),
        )


def test_precompute_throughput(bench_env: dict, results) -> None:
    """Scenario 2: full precompute vs teacher forward alone, and scaling with --shard writers."""
    section = "Precompute throughput"
    results.note(
        section,
        "`forward` times only the teacher on decoded in-memory batches; `precompute K=...` is the steady-state compute loop of the real command (decode + sha256, teacher, PCA projection, fp16, background Zarr writes until the last shard is on disk), without its one-off start-up (imports, listing, teacher load, PCA fit on 8 images); `end to end` rows time whole `dinocache precompute` processes, start-up included: one writer with 2 torch threads against two `--shard i/2` writers with 1 thread each.",
    )
    for size in ("tiny", "vits"):
        common = [
            "--data",
            bench_env["data"],
            "--dino-root",
            bench_env["teachers"][size],
            "--imgsz",
            "256",
            "--batch",
            "16",
        ]
        fwd = run_scenario("benchmarks.scenarios.precompute_tp", ["--what", "forward", *common])
        rows = {}
        for k in ("32", "full"):
            c = str(bench_env["base"] / f"tp_{size}_{k}.zarr")
            rows[k] = run_scenario(
                "benchmarks.scenarios.precompute_tp",
                ["--what", "precompute", *common, "--cache", c, "--set", f"channels={k}", "pca_fit_images=8"],
            )
        results.add(
            section,
            teacher=size,
            what="teacher forward only",
            images_per_s=fwd["images_per_s"],
            ratio=1.0,
            peak_mem_mib=peak_mem_mib(fwd),
        )
        for k, r in rows.items():
            results.add(
                section,
                teacher=size,
                what=f"precompute K={k}",
                images_per_s=r["images_per_s"],
                ratio=round(r["images_per_s"] / fwd["images_per_s"], 3),
                peak_mem_mib=peak_mem_mib(r),
            )
        # --shard scaling, end to end (process start-up included in both): one writer with 2 threads
        # against two `--shard i/2` writers with 1 thread each, filling one store
        n = rows["32"]["n_images"]
        one = _precompute_procs(bench_env, size, 1)
        two = _precompute_procs(bench_env, size, 2)
        for procs, dt in ((1, one), (2, two)):
            results.add(
                section,
                teacher=size,
                what=f"precompute K=32 end to end, {procs} writer(s)",
                images_per_s=round(n / dt, 2),
                ratio=round(n / dt / fwd["images_per_s"], 3),
                vs_one_writer=round(one / dt, 3),
            )


def _precompute_procs(env: dict, size: str, writers: int) -> float:
    """Wall seconds of `writers` concurrent `dinocache precompute --shard i/N` processes into one store."""
    c = str(env["base"] / f"tp_{size}_w{writers}.zarr")
    threads = str(max(1, (os.cpu_count() or 2) // writers))
    penv = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "dinocache.cli",
        "precompute",
        f"data={env['data']}",
        f"cache={c}",
        f"dino_root={env['teachers'][size]}",
        "imgsz=256",
        "batch=16",
        "pca_fit_images=8",
        "shard_size=8",
    ]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*cmd, f"shard={i}/{writers}"],
            cwd=ROOT,
            env=penv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(writers)
    ]
    codes = [p.wait(timeout=1200) for p in procs]
    assert codes == [0] * writers, codes
    return time.perf_counter() - t0


def test_cache_read_storage_and_scaling(bench_env: dict, results, quick: bool, tmp_path: Path) -> None:
    """Scenarios 3-5: random batched reads vs memmap and trainer demand; bytes per image; flat memory in N."""
    read_s = "Cache reads (random order, batch 16)"
    results.note(
        read_s,
        "Synthetic PCA-like fp16 rows in a real cache (Zarr v3, sharded, Blosc zstd1+shuffle), read in random "
        "batches of 16 through `cache.open(...).read` (the tensorstore path, which the trainer takes for a "
        "compressed or remote cache; a default cache, uncompressed and local, is read from its memory-mapped "
        "shards instead: section `reads`), in one and in two processes at once, against a raw numpy memmap of the same rows (the disk's ceiling on a warm page cache) and "
        "against the trainer's demand (images/s it consumes in `cache` mode, scenario 1).",
    )
    n = 2000 if quick else 5000
    for k in (32, 128):
        p = str(tmp_path / f"read_k{k}.zarr")
        w = run_scenario(
            "benchmarks.scenarios.cache_scale", ["--what", "write", "--path", p, "--n", str(n), "--k", str(k)]
        )
        one = run_scenario(
            "benchmarks.scenarios.cache_scale", ["--what", "read", "--path", p, "--n", str(n), "--k", str(k)]
        )
        mm = run_scenario(
            "benchmarks.scenarios.cache_scale",
            ["--what", "memmap", "--path", p, "--n", str(n), "--k", str(k)],
        )
        two = _parallel_reads(p, n, k)
        demand = bench_env.get("trainer_images_per_s")
        results.add(
            read_s,
            k=k,
            grid="16x16",
            n=n,
            zarr_1proc=one["images_per_s"],
            zarr_2proc=two,
            memmap=mm["images_per_s"],
            zarr_vs_memmap=round(one["images_per_s"] / mm["images_per_s"], 3),
            zarr2_vs_memmap=round(two / mm["images_per_s"], 3),
            trainer_demand=demand,
            zarr_vs_demand=round(one["images_per_s"] / demand, 1) if demand else None,
            write_images_per_s=w["write_images_per_s"],
        )

    store_s = "Storage: bytes per image"
    results.note(
        store_s,
        "Real caches of the demo images from a random ViT-S-shaped teacher (384 channels). `raw` = K*h*w*2 "
        "bytes; `disk` = bytes on disk / N, including shard indexes and metadata. Random teachers give "
        "noisier maps than trained ones, so real compression may be somewhat better.",
    )
    from dinocache.precompute.run import main as precompute_main

    for imgsz in (256, 512):
        data = bench_env["data"]
        if imgsz == 512:
            from dinocache.datatools.demo_data import make_demo_dataset

            data = str(
                make_demo_dataset(tmp_path / "d512", n_train=16, n_val=2, imgsz=512, seed=1) / "data.yaml"
            )
        for k in ("32", "128", "full"):
            c = tmp_path / f"st_{imgsz}_{k}.zarr"
            assert (
                precompute_main(
                    [
                        f"data={data}",
                        f"cache={c}",
                        f"dino_root={bench_env['teachers']['vits']}",
                        f"imgsz={imgsz}",
                        f"channels={k}",
                        "pca_fit_images=8",
                    ]
                )
                == 0
            )
            from dinocache import cache

            fc = cache.open(str(c))
            raw = fc.k * fc.grid[0] * fc.grid[1] * 2
            results.add(
                store_s,
                imgsz=imgsz,
                K=k,
                channels=fc.k,
                grid=f"{fc.grid[0]}x{fc.grid[1]}",
                raw_bytes=raw,
                disk_bytes=round(fc.disk_bytes() / fc.n),
                ratio=round(fc.disk_bytes() / fc.n / raw, 3),
            )

    scale_s = "Scaling: memory vs N"
    results.note(
        scale_s,
        "Peak RSS of the writer (whole-shard writes) and of a reader doing 2000 random reads, "
        "in fresh processes, as the number of rows N grows (K=32, 16x16 grid).",
    )
    for n_rows in (1000, 5000) if quick else (1000, 5000, 20000):
        p = str(tmp_path / f"scale_{n_rows}.zarr")
        w = run_scenario(
            "benchmarks.scenarios.cache_scale",
            ["--what", "write", "--path", p, "--n", str(n_rows), "--no-memmap"],
        )
        r = run_scenario(
            "benchmarks.scenarios.cache_scale", ["--what", "read", "--path", p, "--n", str(n_rows)]
        )
        results.add(
            scale_s,
            n=n_rows,
            writer_peak_rss_mib=w["peak_rss_mib"],
            reader_peak_rss_mib=r["peak_rss_mib"],
            disk_mib=round(w["bytes_per_image_disk"] * n_rows / 2**20, 1),
        )


def _parallel_reads(path: str, n: int, k: int) -> float:
    """Images/s of two reader processes at once (sum of both)."""
    import json
    import tempfile

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as td:
        outs = [Path(td) / f"{i}.json" for i in range(2)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.scenarios.cache_scale",
                    "--out",
                    str(o),
                    "--what",
                    "read",
                    "--path",
                    path,
                    "--n",
                    str(n),
                    "--k",
                    str(k),
                    "--seed",
                    str(i),
                ],
                cwd=ROOT,
                env=env,
            )
            for i, o in enumerate(outs)
        ]
        assert [p.wait(timeout=600) for p in procs] == [0, 0]
        return round(sum(json.loads(o.read_text())["images_per_s"] for o in outs), 1)


def test_lora_vs_full_finetune(bench_env: dict, results, quick: bool) -> None:
    """Peak memory and step time of LoRA vs full fine-tuning of the same ViT on the same batch."""
    from dinocache.finetune.bench import lora_vs_full

    section = "Teacher fine-tuning: LoRA vs full"
    size = "vits"
    res = lora_vs_full(bench_env["teachers"][size], batch=4, imgsz=256, steps=3 if quick else 5)
    results.note(
        section,
        f"Same random ViT-{size[-1].upper()}-shaped DINOv3, same batch (4 x 256 px), "
        "each variant in a fresh process; memory = CUDA max allocated, else peak RSS.",
    )
    for name in ("lora", "full"):
        r = res[name]
        results.add(section, variant=name, **{k: v for k, v in r.items() if not isinstance(v, (dict, list))})
    results.add(
        section,
        variant="full/lora",
        memory_ratio=res.get("memory_ratio"),
        time_ratio=res.get("time_ratio"),
        param_ratio=res.get("param_ratio"),
    )
