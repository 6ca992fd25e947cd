"""The whole pipeline on the embedded default, in one command.

    dinocache demo --config config.json [--fresh] [train.key=value ...]

Steps: synthetic OBB dataset (`dataset/`) and tiny random DINOv3 (`dinov3/`) when missing, offline
augmentation (`dataset/augmented/`), precompute into the Zarr cache, verify the cache, train the student.
Paths and settings come from config.json, so afterwards `just precompute` / `just train` work on the
same files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from dinocache.core.config import ConfigError, read_section


def _step(title: str, fn, argv: list[str]) -> None:
    print(f"\n==> {title}: dinocache {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = int(fn(argv[1:]) or 0)
    if rc != 0:
        raise SystemExit(f"demo: step '{title}' failed with exit code {rc}")
    print(f"==> {title} done in {time.perf_counter() - t0:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    """`dinocache demo --config config.json`"""
    ap = argparse.ArgumentParser(prog="dinocache demo", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.json")
    ap.add_argument("--fresh", action="store_true", help="delete dataset/, dinov3/ and artifacts/ first")
    ap.add_argument(
        "--only",
        choices=["data", "teacher"],
        default=None,
        help="only make the demo dataset or the tiny teacher named in the config (skipped when present)",
    )
    ap.add_argument("overrides", nargs="*", help="train.key=value or precompute.key=value")
    args = ap.parse_args(argv)

    from dinocache.cache.cli import main as cache_main
    from dinocache.datatools.augment import main as augment_main
    from dinocache.datatools.demo_data import main as demo_data_main
    from dinocache.precompute.run import main as precompute_main
    from dinocache.teacher.tiny import main as tiny_main
    from dinocache.train.cli import main as train_main

    try:
        aug = read_section(args.config, "augment")
        pre = read_section(args.config, "precompute")
        trn = read_section(args.config, "train")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    per_step: dict[str, list[str]] = {"train": [], "precompute": [], "augment": []}
    for o in args.overrides:
        step, _, kv = o.partition(".")
        if step not in per_step or "=" not in kv:
            print(
                f"error: override {o!r} must look like train.key=value or precompute.key=value",
                file=sys.stderr,
            )
            return 2
        per_step[step].append(kv)

    source = Path(aug.get("data", "dataset/data.yaml")).parent
    teacher = Path(pre.get("dino_root", "dinov3"))
    if args.fresh:
        for p in (source, teacher, Path("artifacts")):
            shutil.rmtree(p, ignore_errors=True)
    imgsz = str(aug.get("imgsz", 256))
    if args.only in (None, "data"):
        if (source / "data.yaml").exists():
            print(f"==> demo data: {source} exists, kept (use --fresh to regenerate)")
        else:
            _step("demo data", demo_data_main, ["demo-data", str(source), "--imgsz", imgsz])
    if args.only in (None, "teacher"):
        if (teacher / "config.json").exists():
            print(f"==> teacher: {teacher} exists, kept")
        else:
            _step("tiny teacher", tiny_main, ["make-tiny-teacher", str(teacher)])
    if args.only:
        return 0
    c = ["--config", args.config]
    _step("augment", augment_main, ["augment", *c, "overwrite=true", *per_step["augment"]])
    _step("precompute", precompute_main, ["precompute", *c, *per_step["precompute"]])
    cache_path = pre.get("cache", "artifacts/cache/features.zarr")
    data = pre.get("data", "dataset/augmented/data.yaml")
    _step("verify", cache_main, ["cache", "verify", cache_path, "--data", data, "--dino-root", str(teacher)])
    _step("train", train_main, ["train", *c, *per_step["train"]])
    print(f"\ndemo finished; outputs under {trn.get('artifacts_root', 'artifacts')}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
