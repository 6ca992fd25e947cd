"""The GPU benchmark (epoch time, memory, loader and precompute throughput on one GPU), driven by benchmarks/gpu.sh (installs nothing; < 8 min on one GPU).

    python -m benchmarks.gpu_run [--dry-run] [--images 128] [--imgsz 640] [--workers 8] [--out DIR]

On a CUDA machine: a synthetic 640 px OBB dataset, ViT-S- and ViT-L-shaped random teachers, one cache per
teacher (precompute on the GPU), then epoch time (median of the epochs after the first) and
torch.cuda.max_memory_allocated of none / cache / online training runs with 8 dataloader workers, each in
a fresh process (benchmarks/scenarios/train_epoch.py), plus the loader CPU ratio (benchmarks/loader.py).
Figures go to benchmarks/results/latest.json and BENCHMARKS.md (sections `gpu_epoch`, `gpu_loader`).

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
        res.add(section, **L.measure(str(ld), str(lc), a.imgsz, block=16 if a.dry_run else 64, rounds=3))
    res.write()
    print(json.dumps({"results": str(out), "seconds": round(time.perf_counter() - t_start, 1)}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
