"""Distillation-gain benchmark: does the cached map teach the student? Reuses `dinocache compare`.

    python -m benchmarks.signal_ab --work DIR [--quick] [--epochs N] [--seeds N] [--modes a,b,...] [--compare-dir NAME]

1. the knowledgeable teacher (`dinocache make-demo-teacher`, built once and cached) and its linear probe
   against the random base it started from (finetune/probe.py);
2. the students' data: demo-data seed 1 (never the teacher's 1000 or the probe's 2000): `n_train`
   training images and a separate held-out set of `n_val` >= 200 images (the data.yaml's val split, the
   reporting set); a tuning set (seed 3, its own data.yaml) exists for choosing settings, never the
   reporting set;
3. the cache (`dinocache precompute`, PCA to 32 channels) of the training images, and for mode cache-flips
   the same cache made with cache_flips=true (its `features` are the same bits; it adds the flipped views);
4. `dinocache compare` over the modes and seeds, everything else identical; writes DIR/compare/ (or
   DIR/NAME: a later run of more modes with the same settings, merged into the report with --also).

The pytest wrapper (benchmarks/test_signal.py) puts the result into latest.json (`signal.*`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMGSZ = 128
# demo-data object sizes at 128 px (twice the defaults: the objects cover as many 16-px patches as the
# default demo's at 256 px); the teacher was trained on the same distribution (other seeds)
SIZES = {"min_size": 0.16, "max_size": 0.6}
ALL_MODES = ["none", "cache", "online", "cache-off", "cache-shuffled", "cache-flips"]


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "n_train": 16,
            "n_val": 200,
            "epochs": 2,
            "val_every": 1,
            "seeds": 1,
            "modes": ["none", "cache", "cache-shuffled", "cache-flips"],
        }
    # sized for a 2-core CPU (18 runs of about 2.5 min: 45 min); 12 epochs were too few for any student to
    # detect anything (BENCHMARKS.md history); on a GPU raise epochs and n_train
    return {"n_train": 32, "n_val": 200, "epochs": 48, "val_every": 8, "seeds": 3, "modes": ALL_MODES}


def teacher(quick: bool) -> Path:
    from dinocache.finetune.demo_teacher import make_demo_teacher

    if quick:  # a weaker teacher in seconds: the suite's plumbing, not its figures
        return make_demo_teacher(n_train=200, n_val=32, epochs=2, probe_images=0)
    return make_demo_teacher()


def _precompute(work: Path, data: Path, cache: Path, teacher_dir: Path, *extra: str) -> None:
    from dinocache.precompute.run import main as precompute

    if (cache / "zarr.json").exists():
        return
    (work / "empty.json").write_text("{}")
    rc = precompute(
        ["--config", str(work / "empty.json"), f"data={data / 'data.yaml'}", f"cache={cache}",
         f"dino_root={teacher_dir}", f"imgsz={IMGSZ}", "channels=32", "device=auto", "batch=16",
         "workers=0", "overwrite=true", *extra]
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"precompute of {cache} failed (exit {rc})")


def prepare(work: Path, teacher_dir: Path, n_train: int, n_val: int, flips: bool = False) -> dict[str, str]:
    """Data, tuning split and cache under `work` (reused when present)."""
    from dinocache.datatools.demo_data import make_demo_dataset

    work.mkdir(parents=True, exist_ok=True)
    data = work / f"data-{n_train}-{n_val}"
    if not (data / "data.yaml").is_file():
        make_demo_dataset(data, n_train=n_train, n_val=n_val, imgsz=IMGSZ, seed=1, overwrite=True, **SIZES)
    tune = work / f"tune-{n_val}"
    if not (tune / "data.yaml").is_file():
        make_demo_dataset(tune, n_train=1, n_val=n_val, imgsz=IMGSZ, seed=3, overwrite=True, **SIZES)
    # tuning data.yaml: the same training images (same dataset root, so the same cache keys), evaluated on the
    # tuning set's images
    names = (data / "data.yaml").read_text().split("names:", 1)[1]
    (work / "tune.yaml").write_text(
        f"path: {data}\ntrain: images/train\nval: {tune / 'images' / 'val'}\nnames:{names}"
    )
    cache = work / f"cache-{teacher_dir.name}-{n_train}.zarr"
    _precompute(work, data, cache, teacher_dir)
    out = {"data": str(data / "data.yaml"), "tune": str(work / "tune.yaml"), "cache": str(cache)}
    if flips:
        out["flips_cache"] = str(work / f"cache-{teacher_dir.name}-{n_train}-flips.zarr")
        _precompute(work, data, Path(out["flips_cache"]), teacher_dir, "cache_flips=true")
    return out


def train_values(paths: dict[str, str], teacher_dir: Path, epochs: int) -> dict[str, Any]:
    """The train section every run shares (only mode and seed differ)."""
    return {
        "data": paths["data"],
        "cache": paths["cache"],
        "dino_root": str(teacher_dir),
        "model": "yolo26n-obb.yaml",
        "imgsz": IMGSZ,
        "epochs": epochs,
        "batch": 4,
        "nbs": 4,  # an optimizer step per batch (32 images: 8 steps an epoch)
        "workers": 0,
        "device": "auto",
        "warmup_epochs": 1,
        "dino_distill_warmup_epochs": 1,
        "eval_enabled": False,  # compare grades last.pt itself, once
        "dino_viz_enabled": False,
        "wandb_enabled": False,
        "extra": {"plots": False},
    }


def compare_into(out: Path, values: dict[str, Any], **options: Any) -> dict[str, Any]:
    """`dinocache compare` of the train `values` into the folder `out` (an earlier result there is replaced)
    with CompareConfig `options` (modes, seeds, ...); returns its compare.json."""
    import shutil

    from dinocache.compare import CompareConfig, compare
    from dinocache.core.config import build

    if (out / "compare.json").exists():
        shutil.rmtree(out)
    compare(values, build(CompareConfig, {**options, "out": str(out)}, f"benchmark compare {out.name}"))
    return json.loads((out / "compare.json").read_text())


def tuning_values(
    work: Path, epochs: int, n_train: int | None = None
) -> tuple[dict[str, str], dict[str, Any]]:
    """(paths, train values) of the benchmark's students evaluated on the TUNING split (demo seed 3), never the
    reporting set: for the diagnostics that choose or explain settings (signal_oracle.py, signal_tune.py)."""
    s = settings(False)
    tdir = teacher(False)
    paths = prepare(work, tdir, n_train or s["n_train"], s["n_val"])
    return paths, {**train_values(paths, tdir, epochs), "data": paths["tune"]}


def run(work: Path, quick: bool, compare_dir: str = "compare", **over: Any) -> dict[str, Any]:
    s = {**settings(quick), **{k: v for k, v in over.items() if v is not None}}
    tdir = teacher(quick)
    paths = prepare(work, tdir, s["n_train"], s["n_val"], flips="cache-flips" in s["modes"])
    probes = probe(work, tdir)
    doc = compare_into(
        work / compare_dir,
        train_values(paths, tdir, s["epochs"]),
        modes=s["modes"],
        seeds=s["seeds"],
        seed0=s.get("seed0", 0),
        val_every=s["val_every"],
        flips_cache=paths.get("flips_cache", ""),
    )
    doc["settings"] = s
    doc["teacher"] = str(tdir)
    doc["probe"] = probes
    name = "signal.json" if compare_dir == "compare" else f"signal-{compare_dir}.json"
    (work / name).write_text(json.dumps(doc, indent=2, default=str))
    return doc


def merge(doc: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """`doc` plus the runs of `other` (a later run with the same settings: data, epochs, imgsz, training
    images): more modes, or more seeds of the same modes; one summary over all of them. Refused when the
    settings differ, so no table mixes two experiments; a (mode, seed) run present in both is kept once."""
    from dinocache.compare import summarise

    keys = ("epochs", "imgsz", "train_images", "data")
    a, b = ({k: d["meta"].get(k) for k in keys} for d in (doc, other))
    if a != b:
        raise ValueError(f"cannot merge runs of different settings: {a} vs {b}")
    runs = {m: list(rs) for m, rs in doc["runs"].items()}
    for m, rs in other["runs"].items():
        have = {r["seed"] for r in runs.setdefault(m, [])}
        runs[m] += [r for r in rs if r["seed"] not in have]
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    meta = {**doc["meta"], "seeds": seeds, "modes": list(runs)}
    return {**doc, "meta": meta, "runs": runs, "summary": summarise(runs), "merged": True}


def random_teacher(tdir: Path | None = None) -> Path:
    """The random ConvNeXt the demo teacher `tdir` (default: the default build) was trained from (same shape and
    seed): the untrained control, built once under $DINOCACHE_HOME/teachers/random-<key>."""
    import shutil

    from dinocache.finetune.demo_teacher import INFO_FILE, DemoTeacherConfig, cache_home, random_base

    from dinocache.core.config import build

    st = json.loads((tdir / INFO_FILE).read_text())["settings"] if tdir else {}
    cfg = build(DemoTeacherConfig, st, str(tdir / INFO_FILE) if tdir else "default demo teacher")
    rdir = cache_home() / "teachers" / f"random-{cfg.key()}"
    if not (rdir / "config.json").is_file():
        tmp = rdir.with_name(rdir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        random_base(tmp, cfg)
        tmp.rename(rdir)
    return rdir


def probe(work: Path, tdir: Path) -> list[dict[str, Any]]:
    """Linear probe of the knowledgeable teacher and of the random base it was trained from."""
    from dinocache.finetune.probe import probe_teacher

    rows = []
    for name, t in (("knowledgeable (make-demo-teacher)", tdir), ("random base", random_teacher(tdir))):
        r = probe_teacher(t, work / "probe", imgsz=IMGSZ, channels=32, images=200, **SIZES)
        rows.append({"teacher": name, **{k: v for k, v in r.items() if k != "teacher"}})
    return rows


def _r(v: Any, n: int = 4) -> Any:
    return round(v, n) if isinstance(v, float) and v == v else v


def _fill_distill(doc: dict[str, Any]) -> None:
    """Runs recorded before compare read the `train/distill` column: take the last epoch's from results.csv."""
    import csv
    import math
    import statistics

    for mode, rs in doc["runs"].items():
        for r in rs:
            v = r.get("distill_loss_last")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                with open(Path(r["save_dir"]) / "results.csv", newline="") as f:
                    rows = [{k.strip(): x for k, x in row.items()} for row in csv.DictReader(f)]
                r["distill_loss_last"] = float(rows[-1].get("train/distill") or 0.0)
        for row in doc["summary"]:
            if row["mode"] == mode:
                row["distill_loss_last"] = statistics.fmean(r["distill_loss_last"] for r in rs)


def report_probe(probes: list[dict[str, Any]], results: Any, prefix: str = "signal") -> None:
    """The teacher probe rows (`probe`) into the benchmark Results (`{prefix}.teacher_probe`)."""
    for p in probes:
        results.add(
            f"{prefix}.teacher_probe",
            teacher=p["teacher"],
            balanced_accuracy=_r(p["balanced_accuracy"]),
            objectness_balanced_accuracy=_r(p["objectness_balanced_accuracy"]),
            objectness_pure_patches=_r(p["objectness_pure_patches"]),
            objectness_mixed_patches=_r(p["objectness_mixed_patches"]),
            pure_patch_share=_r(p["pure_patch_share"]),
            object_patch_accuracy=_r(p["object_patch_accuracy"]),
            accuracy=_r(p["accuracy"]),
            majority_baseline=_r(p["majority_baseline"]),
            chance_balanced=round(1 / 6, 4),
            patches_test=p["patches_test"],
        )
    from dinocache.finetune.demo_teacher import DemoTeacherConfig

    c = DemoTeacherConfig()
    results.note(
        f"{prefix}.teacher_probe",
        "How much the teacher knows: a class-balanced linear probe predicting each patch's class (background or one "
        "of 5 shapes) from its cached PCA features (32 channels, the trainer's D), fitted on 100 held-out demo "
        "images (seed 2000), scored on 100 others (finetune/probe.py). Knowledgeable = `dinocache "
        f"make-demo-teacher` (a DINOv3 ConvNeXt, stages {c.hidden_sizes} x {c.depths} blocks, stride {c.stride}, "
        f"every weight trained on the class map of {c.n_train} demo images, seed {c.data_seed}, {c.epochs} epochs); "
        "random base = the same model before training (`demo_teacher.random_base`). objectness = object vs "
        "background (mean of the two recalls) over every scored patch; _pure_patches: only patches one class covers "
        "whole; _mixed_patches: the others (a box edge crosses them: >= half of the patch one class, the rest "
        "another); pure_patch_share: the pure patches' share of the scored ones.",
    )


def report(
    doc: dict[str, Any],
    results: Any,
    work: Path,
    prefix: str = "signal",
    probe: bool = True,
    compare_dir: str = "compare",
) -> None:
    """Put one run's figures into the benchmark Results (latest.json `signal.*`, BENCHMARKS.md, the plot)."""
    import shutil

    _fill_distill(doc)
    from benchmarks.report import RESULTS, _slug

    st, meta = doc["settings"], doc["meta"]
    done_seeds = sorted({r["seed"] for rs in doc["runs"].values() for r in rs})  # a stopped run has fewer
    report_probe(doc["probe"] if probe else [], results, prefix)
    for row in doc["summary"]:
        results.add(
            f"{prefix}.modes",
            mode=row["mode"],
            n=row["n"],
            map50=f"{row['map50_mean']:.4f} ± {row['map50_std']:.4f}",
            map50_95=f"{row['map50_95_mean']:.4f} ± {row['map50_95_std']:.4f}",
            grade=f"{row['grade_mean']:.4f} ± {row['grade_std']:.4f}",
            val_cls_loss=f"{row['val_cls_loss_mean']:.4f} ± {row['val_cls_loss_std']:.4f}",
            val_box_loss=f"{row['val_box_loss_mean']:.4f} ± {row['val_box_loss_std']:.4f}",
            d_map50_vs_none=_r(row.get("map50_delta_vs_none")),
            d_val_cls_loss_vs_none=_r(row.get("val_cls_loss_delta_vs_none")),
            distill_loss_last=_r(row["distill_loss_last"]),
            s_per_img=_r(row["s_per_img"]),
            cpu_s_per_img=_r(row["cpu_s_per_img"]),
        )
    results.note(
        f"{prefix}.modes",
        f"Students (YOLO26-n OBB from scratch) trained on {meta['train_images']} demo images (seed 1) at "
        f"{meta['imgsz']} px for {meta['epochs']} epochs, seeds {done_seeds}, everything but the mode identical "
        f"(`dinocache compare`, benchmarks/signal_ab.py); scored at the LAST epoch on a separate held-out set of "
        f"{st['n_val']} images (mean ± std over seeds; Δ = difference of the means against none). s/img = wall "
        "seconds per training image seen, validation included, on the shared 2-core CPU (other jobs running: "
        "compare CPU s/img for cost). Plot: val mAP50-95 per validation epoch, mean ± std per mode.",
    )
    for mode, rs in doc["runs"].items():
        for r in rs:
            results.add(
                f"{prefix}.runs",
                mode=mode,
                seed=r["seed"],
                map50=_r(r["map50"]),
                map50_95=_r(r["map50_95"]),
                grade=_r(r.get("grade")),
                val_cls_loss=_r(r["val_cls_loss"]),
                val_box_loss=_r(r["val_box_loss"]),
                distill_loss_last=_r(r["distill_loss_last"]),
                wall_s=r["wall_s"],
                cpu_s=r["cpu_s"],
                s_per_img=_r(r["s_per_img"]),
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = work / compare_dir / "val_map.png"
    if doc.get("merged"):  # one plot of all merged modes
        from dinocache.compare import plot

        plot(doc["runs"], RESULTS / f"{_slug(prefix + '.modes')}.png")
    elif png.exists():
        shutil.copy2(png, RESULTS / f"{_slug(prefix + '.modes')}.png")


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.signal_ab --work DIR [--quick] [--epochs N] [--seeds N] [--modes a,b]`"""
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--seed0", type=int, help="first seed (more seeds of an earlier run: merge with --also)")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--modes")
    ap.add_argument("--val-every", type=int)
    ap.add_argument(
        "--compare-dir", default="compare", help="folder under WORK for this run's compare outputs"
    )
    ap.add_argument(
        "--also", action="append", default=[], help="--report: merge WORK/NAME/compare.json (same settings)"
    )
    ap.add_argument("--section", default="signal", help="--report: section prefix in latest.json")
    ap.add_argument("--no-probe", action="store_true", help="--report: leave the teacher probe out")
    ap.add_argument(
        "--probe-only",
        action="store_true",
        help="probe the demo teacher and its random base into latest.json",
    )
    ap.add_argument("--conclusion", default="", help="--report: what the figures show, appended to the note")
    ap.add_argument(
        "--from-compare", action="store_true", help="--report: WORK/compare/compare.json (no probe)"
    )
    ap.add_argument(
        "--report",
        action="store_true",
        help="write WORK/signal.json into latest.json/BENCHMARKS.md (no training)",
    )
    a = ap.parse_args(argv)
    if a.probe_only:
        from benchmarks.report import Results

        res = Results()
        report_probe(probe(Path(a.work), teacher(False)), res)
        res.write()
        return 0
    if a.report:
        from benchmarks.report import Results

        res = Results()
        work = Path(a.work)
        if a.from_compare:  # a run stopped before signal.json: the runs compare wrote so far
            doc = json.loads((work / a.compare_dir / "compare.json").read_text())
            doc.update(settings={"n_val": 200}, probe=[])
        else:
            doc = json.loads((work / "signal.json").read_text())
        for name in a.also:
            doc = merge(doc, json.loads((work / name / "compare.json").read_text()))
        report(
            doc,
            res,
            work,
            prefix=a.section,
            probe=not (a.no_probe or a.from_compare),
            compare_dir=a.compare_dir,
        )
        if a.conclusion:
            key = f"{a.section}.modes"
            res.note(key, res.notes.get(key, "") + " " + a.conclusion)
        res.write()
        return 0
    modes = a.modes.split(",") if a.modes else None
    run(
        Path(a.work),
        a.quick,
        compare_dir=a.compare_dir,
        epochs=a.epochs,
        seeds=a.seeds,
        seed0=a.seed0,
        modes=modes,
        n_train=a.n_train,
        val_every=a.val_every,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
