"""The GPU benchmark (epoch time, memory, loader and precompute throughput on one GPU), driven by benchmarks/gpu.sh (installs nothing; < 11 min on one GPU).

    python -m benchmarks.gpu_run [--dry-run] [--images 128] [--imgsz 640] [--workers 8] [--out DIR]

On a CUDA machine: a synthetic 640 px OBB dataset, ViT-S- and ViT-L-shaped random teachers, one cache per
teacher (precompute on the GPU), then epoch time (median of the epochs after the first) and
torch.cuda.max_memory_allocated of none / cache / online training runs with 8 dataloader workers, each in
a fresh process (benchmarks/scenarios/train_epoch.py), plus the loader CPU ratio (benchmarks/loader.py: plain vs
cache through the memory-mapped reader vs cache through tensorstore), the pretraining loader vs plain image
loading, one-image reads (mapped reader vs tensorstore vs memmap) and the time to the first step with the
ViT-L-shaped teacher present and the real dataloader workers (cache vs none). Figures go to
benchmarks/results/latest.json and BENCHMARKS.md (sections `gpu_epoch`, `gpu_loader`, `gpu_pretrain_loader`,
`gpu_reads`, `gpu_startup`).

`--dry-run` runs every step at toy sizes on the CPU (tiny teacher, 128 px, 1 worker) and writes to a
temporary folder instead, so the script itself is checked where no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.gpu_run [--dry-run]`"""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU; results to a temp folder")
    ap.add_argument("--images", type=int, default=128, help="training images (synthetic, imgsz x imgsz)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3, help="per run; the first is dropped as warm-up")
    ap.add_argument("--teachers", default="vits,vitl")
    ap.add_argument(
        "--out", default="", help="results folder (default benchmarks/results; dry run: a temp dir)"
    )
    a = ap.parse_args(argv)

    import torch

    from benchmarks import loader as L
    from benchmarks import report
    from benchmarks.harness import run_scenario

    if a.dry_run:
        a.images, a.imgsz, a.workers, a.batch, a.epochs, a.teachers = 8, 128, 1, 4, 2, "tiny"
        device = "cpu"
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device (use --dry-run to check the script on a CPU)", file=sys.stderr)
            return 2
        device = "0"
    out = (
        Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="gpu_dry_")) if a.dry_run else report.RESULTS)
    )
    report.RESULTS = out
    if a.dry_run:
        report.MARKDOWN = out / "BENCHMARKS.md"
    t_start = time.perf_counter()
    from dinocache.datatools.demo_data import make_demo_dataset
    from dinocache.teacher.tiny import make_tiny_teacher

    res = report.Results()
    with tempfile.TemporaryDirectory(prefix="dinocache_gpu_") as td:
        base = Path(td)
        data = (
            make_demo_dataset(base / "data", n_train=a.images, n_val=4, imgsz=a.imgsz, seed=0) / "data.yaml"
        )
        runs: list[tuple[str, str, str, str]] = [("none", "-", "", "")]
        for size in a.teachers.split(","):
            t = make_tiny_teacher(base / f"teacher_{size}", seed=0, size=size)
            c = base / f"cache_{size}.zarr"
            from dinocache.precompute.run import main as precompute_main

            pre = [f"data={data}", f"cache={c}", f"dino_root={t}", f"imgsz={a.imgsz}", "channels=64"]
            rc = precompute_main(
                [*pre, "pca_fit_images=64", f"batch={a.batch}", f"device={'cpu' if a.dry_run else 'cuda'}"]
            )
            if rc != 0:
                print(f"error: precompute for {size} failed ({rc})", file=sys.stderr)
                return 1
            runs += [("cache", size, str(c), str(t)), ("online", size, str(c), str(t))]
        section = "gpu_epoch"
        res.note(
            section,
            f"{'DRY RUN (CPU, toy sizes) - ' if a.dry_run else ''}Epoch time (median of epochs 2..{a.epochs}, "
            f"training loop only) and torch.cuda.max_memory_allocated per run, {a.images} synthetic images at "
            f"{a.imgsz} px, batch {a.batch}, {a.workers} dataloader workers, one fresh process per run "
            "(benchmarks/gpu.sh). cache = warp mode (maps + geometry from the workers, warp on the GPU); "
            "online = the teacher on the augmented batch.",
        )
        base_epoch = None
        for mode, size, cache, teacher in runs:
            args = ["--mode", mode, "--data", str(data), "--imgsz", str(a.imgsz), "--batch", str(a.batch)]
            args += ["--epochs", str(a.epochs), "--warmup-epochs", "1", "--device", device]
            if cache:
                args += ["--cache", cache, "--dino-root", teacher]
            args += ["--set", f"workers={a.workers}"]
            r = run_scenario("benchmarks.scenarios.train_epoch", args, timeout=600)
            base_epoch = base_epoch or r["epoch_s"]
            res.add(
                section,
                mode=mode,
                teacher=size,
                epoch_s=r["epoch_s"],
                images_per_s=r["images_per_s"],
                vs_none=round(r["epoch_s"] / base_epoch, 3),
                cuda_max_allocated_mib=r.get("cuda_max_allocated_mib"),
                peak_rss_mib=r.get("peak_rss_mib"),
            )
        section = "gpu_loader"
        res.note(
            section, "Dataloader CPU per sample on this machine's CPU (benchmarks/loader.py), plain vs cache."
        )
        d_unique, copies = (8, 2) if a.dry_run else (64, 8)
        ld = L.make_linked_dataset(base / "loader", d_unique, copies, a.imgsz)
        lc = base / "loader.zarr"
        L.precompute(ld, base / f"teacher_{a.teachers.split(',')[0]}", lc, a.imgsz)
        res.add(
            section,
            **L.measure(
                str(ld), str(lc), a.imgsz, block=16 if a.dry_run else 64, rounds=3 if a.dry_run else 5,
                tensorstore_arm=True,
            ),
        )  # fmt: skip
        section = "gpu_pretrain_loader"
        res.note(
            section,
            "The pretraining loader (UnlabeledDistillDataset, maps warped along) vs plain image loading with the "
            "same augmentation, CPU ms per sample on this machine's CPU (benchmarks/loader.measure_pretrain).",
        )
        res.add(
            section,
            **L.measure_pretrain(str(ld), str(lc), a.imgsz, block=16 if a.dry_run else 64, rounds=3),
        )
        section = "gpu_reads"
        res.note(
            section,
            "One image per call, random rows of the loader's cache, CPU us per read (median of 3 alternated "
            "rounds): the memory-mapped shard reader (crc32c checked), tensorstore, and a numpy memmap of the same "
            "bytes (no checksum).",
        )
        res.add(section, **_reads(str(lc), 64 if a.dry_run else 512))
        section = "gpu_startup"
        res.note(
            section,
            f"Time to the first training step (benchmarks/scenarios/startup.py), {a.workers} dataloader workers, "
            f"the {a.teachers.split(',')[-1]}-shaped teacher present, none vs cache, one fresh process per run, "
            "alternated, median of 3; tree CPU = main process + live workers.",
        )
        big = a.teachers.split(",")[-1]
        su: dict[str, list[dict]] = {"none": [], "cache": []}
        for _ in range(1 if a.dry_run else 3):
            for mode in su:
                args = ["--mode", mode, "--data", str(data), "--imgsz", str(a.imgsz), "--batch", str(a.batch)]
                args += [
                    "--cache",
                    str(base / f"cache_{big}.zarr"),
                    "--dino-root",
                    str(base / f"teacher_{big}"),
                ]
                args += ["--workers", str(a.workers), "--device", device]
                su[mode].append(run_scenario("benchmarks.scenarios.startup", args, timeout=300))
        keys = ("first_step_s", "first_step_cpu_s", "first_step_tree_cpu_s")
        med = {m: {k: sorted(float(r[k]) for r in rs)[len(rs) // 2] for k in keys} for m, rs in su.items()}
        for mode in su:
            res.add(section, mode=mode, teacher=big, workers=a.workers, **med[mode])
        res.add(section, mode="cache/none", **{k: round(med["cache"][k] / med["none"][k], 3) for k in keys})
    res.write()
    print(json.dumps({"results": str(out), "seconds": round(time.perf_counter() - t_start, 1)}))
    return 0


def _reads(cache: str, count: int) -> dict:
    """CPU us per one-image read: mapped reader, tensorstore, numpy memmap of the same rows."""
    import numpy as np

    from dinocache import cache as cache_mod

    fast, ts = cache_mod.open(cache), cache_mod.open(cache, read_path="tensorstore")
    with tempfile.TemporaryDirectory() as td:
        rows_all = fast.read(np.arange(fast.n))
        mm = np.memmap(Path(td) / "m.npy", np.float16, "w+", shape=rows_all.shape)
        mm[:] = rows_all
        figs: dict[str, list[float]] = {"mapped": [], "tensorstore": [], "memmap": []}
        read = {
            "mapped": lambda r: fast.read([r]),
            "tensorstore": lambda r: ts.read([r]),
            "memmap": lambda r: np.array(mm[r]),
        }
        rng = np.random.default_rng(0)
        for _ in range(3):
            rows = [int(r) for r in rng.integers(0, fast.n, count)]
            for kind, fn in read.items():
                fn(rows[0])
                c0 = time.process_time()
                for r in rows:
                    fn(r)
                figs[kind].append(1e6 * (time.process_time() - c0) / count)
        med = {k: sorted(v)[1] for k, v in figs.items()}
    return {
        "cache_k": fast.k,
        "grid": list(fast.grid),
        **{f"{k}_us": round(v, 1) for k, v in med.items()},
        "mapped_vs_memmap": round(med["memmap"] / med["mapped"], 3),
        "tensorstore_vs_memmap": round(med["memmap"] / med["tensorstore"], 3),
    }


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
