"""The whole pipeline on the embedded default, in one command.

    dinocache demo --config config.json [--fresh] [--teacher demo|random] [--modes none,cache] [train.key=value ...]

Steps: synthetic OBB dataset (`dataset/`) and a knowledgeable small DINOv3 (`dinov3/`, copied from
`dinocache make-demo-teacher`'s shipped build, or its per-machine cache at another imgsz; `--teacher random` for
random weights) when missing, offline
augmentation (`dataset/augmented/`), precompute into the Zarr cache, verify the cache, then train the
student twice side by side (teacher_source=none and =cache, same settings) and print a table (mAP50, grade,
time) and the three files to open first.
Paths and settings come from config.json, so afterwards `just precompute` / `just train` work on the
same files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from dinocache.core.config import read_section
from dinocache.core.errors import DinocacheError


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
    ap.add_argument(
        "--teacher",
        choices=["demo", "random"],
        default="demo",
        help="demo: a small DINOv3 trained on generated data (dinocache make-demo-teacher: shipped at imgsz 128, "
        "else built once per machine, a few minutes); random: make-tiny-teacher's random weights (instant, "
        "teaches nothing)",
    )
    ap.add_argument(
        "--modes",
        default="none,cache",
        help="teacher_source of each training run, side by side (default none,cache)",
    )
    ap.add_argument("overrides", nargs="*", help="train.key=value, precompute.key=value or augment.key=value")
    args = ap.parse_args(argv)

    from dinocache.cache.cli import main as cache_main
    from dinocache.datatools.augment import main as augment_main
    from dinocache.datatools.demo_data import main as demo_data_main
    from dinocache.finetune.demo_teacher import make_demo_teacher
    from dinocache.precompute.run import main as precompute_main
    from dinocache.teacher.tiny import main as tiny_main
    from dinocache.train.cli import main as train_main

    try:
        aug = read_section(args.config, "augment")
        pre = read_section(args.config, "precompute")
        trn = read_section(args.config, "train")
    except DinocacheError as e:
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
    from dinocache.finetune.demo_teacher import DemoTeacherConfig

    # the students' objects have the size the demo teacher learnt (a fraction of imgsz)
    sizes = DemoTeacherConfig()
    if args.only in (None, "data"):
        if (source / "data.yaml").exists():
            print(f"==> demo data: {source} exists, kept (use --fresh to regenerate)")
        else:
            _step(
                "demo data",
                demo_data_main,
                [
                    "demo-data",
                    str(source),
                    f"min_size={sizes.min_size}",
                    f"max_size={sizes.max_size}",
                    "--imgsz",
                    imgsz,
                ],
            )
    # precompute.teacher_family=F (config or override) makes the demo's teacher a tiny random model of F
    family = str(pre.get("teacher_family", "auto"))
    for kv in per_step["precompute"]:
        if kv.startswith("teacher_family="):
            family = kv.split("=", 1)[1]
    if args.only in (None, "teacher"):
        if (teacher / "config.json").exists():
            print(f"==> teacher: {teacher} exists, kept")
        elif family not in ("auto", "dinov3_vit"):  # another registry family: its tiny random model
            _step("tiny teacher", tiny_main, ["make-tiny-teacher", str(teacher), "--family", family])
        elif args.teacher == "random":
            _step("tiny teacher", tiny_main, ["make-tiny-teacher", str(teacher)])
        else:
            print(
                f"\n==> teacher: a knowledgeable small DINOv3 (dinocache make-demo-teacher --imgsz {imgsz})",
                flush=True,
            )
            t0 = time.perf_counter()
            built = make_demo_teacher(
                imgsz=int(imgsz)
            )  # shipped at imgsz 128, else cached under $DINOCACHE_HOME: built once per machine
            shutil.copytree(built, teacher)
            print(f"==> teacher: {built} -> {teacher} in {time.perf_counter() - t0:.1f}s", flush=True)
    if args.only:
        return 0
    c = ["--config", args.config]
    _step("augment", augment_main, ["augment", *c, "overwrite=true", *per_step["augment"]])
    _step("precompute", precompute_main, ["precompute", *c, *per_step["precompute"]])
    _step("verify", cache_main, ["cache", "verify", *c])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs: list[dict] = []
    for mode in args.modes.split(","):
        name = f"demo-{stamp}-{mode}"
        t0 = time.perf_counter()
        _step(
            f"train ({mode})",
            train_main,
            ["train", *c, f"teacher_source={mode}", f"name={name}", *per_step["train"]],
        )
        runs.append(run_summary(mode, run_folder(trn, name), time.perf_counter() - t0))
    print()
    print(summary_table(runs))
    print()
    print(files_to_open(runs))
    return 0


def run_folder(trn: dict, name: str) -> Path:
    """artifacts/{model_key}/runs/{name}/train, as train.preflight.run_dir lays it out."""
    return (
        Path(trn.get("artifacts_root", "artifacts"))
        / Path(trn.get("model", "yolo26n-obb.yaml")).stem
        / "runs"
        / name
        / "train"
    )


def _last_row(csv_path: Path) -> dict[str, str]:
    import csv

    if not csv_path.exists():
        return {}
    with open(csv_path) as f:
        rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]
    return rows[-1] if rows else {}


def run_summary(mode: str, folder: Path, seconds: float) -> dict:
    """mAP50 (Ultralytics' val, last epoch), best geometric grade and time of one demo run."""
    import csv

    res = _last_row(folder / "results.csv")
    grades = []
    if (folder / "eval" / "grades.csv").exists():
        with open(folder / "eval" / "grades.csv") as f:
            grades = [float(r["grade"]) for r in csv.DictReader(f) if r.get("grade") not in (None, "")]
    return {
        "mode": mode,
        "folder": folder,
        "map50": float(res.get("metrics/mAP50(B)", "nan") or "nan"),
        "grade": max(grades) if grades else float("nan"),
        "seconds": seconds,
    }


def summary_table(runs: list[dict]) -> str:
    lines = [f"{'teacher_source':<16}{'mAP50':>8}{'grade':>8}{'time':>9}   run folder"]
    for r in runs:
        lines.append(
            f"{r['mode']:<16}{r['map50']:>8.3f}{r['grade']:>8.3f}{r['seconds']:>8.0f}s   {r['folder']}"
        )
    return "\n".join(lines)


def files_to_open(runs: list[dict]) -> str:
    """The three pictures to look at first: a grade panel, a DINO teacher/student viz, results.png."""
    last = runs[-1]["folder"]
    distilled = next((r["folder"] for r in reversed(runs) if r["mode"] != "none"), last)

    def newest(folder: Path, pattern: str) -> Path | None:
        """First file matching `pattern` in the newest epoch_NNN folder under `folder`."""
        for epoch in sorted(folder.glob("epoch_*"), reverse=True):
            hits = sorted(epoch.rglob(pattern))
            if hits:
                return hits[0]
        return None

    panels = newest(last / "eval", "index.json")
    panel_what = "eval panel (true vs predicted boxes, last graded epoch)"
    if panels is not None:
        # the panel the overlays name representative: per-image F1 nearest the median of the drawn ones,
        # so the first picture shows what the model typically does, not the first image's luck
        index = json.loads(panels.read_text())
        rep = index.get("representative")
        f1 = next((e.get("f1") for e in index.get("samples", []) if e["files"]["panel"] == rep), None)
        panels = panels.parent / rep if rep else newest(last / "eval", "*_panel.*")
        if rep and f1 is not None:
            panel_what = (
                f"eval panel, a typical image (F1 {f1:.2f}, nearest the median of the "
                f"{len(index['samples'])} drawn; all in {panels.parent.name}/)"
            )
    else:
        panels = newest(last / "eval", "*_panel.*")
    viz = newest(distilled / "dino_viz", "*_teacher.png")
    picks = [
        (panel_what, panels),
        ("DINO viz (teacher map; _student, _diff beside it)", viz),
        ("results.png (losses incl. distill, mAP per epoch)", last / "results.png"),
    ]
    lines = ["open these first:"]
    for what, p in picks:
        lines.append(f"  {what}: {p if p is not None and p.exists() else '(not written)'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
