"""Which projector, loss and layers make pretraining FIT the teacher maps: tuning split only.

    python -m benchmarks.pretrain_fit_tune --work DIR [--teacher DIR | --oracle] [--n 192] [--epochs 6] [--arms a,b,...]

Demo data of a tuning seed (never the reporting set) stands in for unlabeled images: `--n` images at 128 px
(labels unused), cached once with the teacher (`--teacher`: a teacher folder; default the tiny random
DINOv3). Each arm pretrains the same student from the same cache for `--epochs` and reports the last epoch's
feature fit on the same held-out images: fit/cos (the student's projection vs each image's own map),
fit/cos_shuf (vs another image's map) and fit/gap = their difference; the `shuffled` arm trains on permuted
maps (the control: what fitting the maps' average alone gives). Writes DIR/fit_tune.json and prints a table.
`--oracle`: the cached maps are each image's per-cell class coverage from its labels (precompute/oracle.py, 1 +
n_cls channels): a teacher that knows everything the labels say; the fit then also splits object and
background cells (the data are the demo's dataset yaml, whose labels pretraining ignores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

IMGSZ = 128
TUNE_SEED = 7  # demo-data seed of the tuning images (the signal benchmark reports on other seeds)
N_CLS = 5  # the demo data's classes

# arm -> PretrainConfig keys
ARMS: dict[str, dict[str, Any]] = {
    "linear-cos-P345": {"projector": "linear", "loss": "cosine"},
    "mlp-cos-P345": {"projector": "mlp", "loss": "cosine"},
    "conv-cos-P345": {"projector": "conv", "loss": "cosine"},
    "linear-mse-P345": {"projector": "linear", "loss": "mse"},
    "mlp-mse-P345": {"projector": "mlp", "loss": "mse"},
    "linear-cos-P4": {"projector": "linear", "loss": "cosine", "layers": [19]},
    "shuffled-linear-cos-P345": {"projector": "linear", "loss": "cosine", "shuffle": True},
}


def prepare(work: Path, n: int, teacher: str | None, oracle: bool = False) -> tuple[Path, Path, str, int]:
    """(images: a folder, or the demo yaml with --oracle; cache; teacher folder; channels), cached once."""
    from dinocache.datatools.demo_data import make_demo_dataset
    from dinocache.precompute.run import main as precompute
    from dinocache.teacher.tiny import make_tiny_teacher

    images = work / "images"
    if oracle:
        images = work / "demo" / "data.yaml"
        if not images.exists():
            make_demo_dataset(work / "demo", n_train=n, n_val=1, imgsz=IMGSZ, seed=TUNE_SEED)
    elif not images.exists():
        root = make_demo_dataset(work / "demo", n_train=n, n_val=1, imgsz=IMGSZ, seed=TUNE_SEED)
        (root / "images" / "train").rename(images)  # a folder of images: labels stay behind
    if teacher is None:
        teacher = str(work / "dinov3")
        if not Path(teacher).exists():
            make_tiny_teacher(teacher, seed=0)
    cache = work / "cache.zarr"
    if not (cache / "zarr.json").exists():
        rc = precompute(
            [f"data={images}", f"cache={cache}", f"dino_root={teacher}", f"imgsz={IMGSZ}", "channels=32"]
            + ["device=cpu", "batch=16", "workers=1"]
        )
        assert rc == 0, "precompute failed"
        if oracle:
            from dinocache.precompute.oracle import write_oracle_features

            write_oracle_features(cache, images, N_CLS)
    return images, cache, teacher, (1 + N_CLS if oracle else 32)


def run(
    work: Path, n: int, epochs: int, arms: list[str], teacher: str | None, oracle: bool = False
) -> dict[str, Any]:
    from dinocache.train.pretrain import Pretrain, PretrainConfig

    work.mkdir(parents=True, exist_ok=True)
    images, cache, teacher, channels = prepare(work, n, teacher, oracle)
    out_json = work / "fit_tune.json"
    results: dict[str, Any] = json.loads(out_json.read_text()) if out_json.exists() else {}
    for arm_seed in arms:
        arm, _, seed = arm_seed.partition("@")  # "name@seed": the same arm with another seed
        if arm_seed in results:
            continue
        t0 = time.perf_counter()
        cfg = PretrainConfig(
            data=str(images),
            cache=str(cache),
            dino_root=teacher,
            imgsz=IMGSZ,
            channels=channels,
            epochs=epochs,
            batch=16,
            nbs=16,
            warmup_epochs=0,
            workers=0,
            device="cpu",
            fit_images=32,
            artifacts_root=str(work / "runs"),
            name=arm_seed.replace("@", "-s"),
            seed=int(seed or 0),
            extra={"plots": False},
            **ARMS[arm],
        )
        res = Pretrain(cfg).run()
        import csv

        with open(res.save_dir / "results.csv") as f:
            rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        results[arm_seed] = {
            "settings": ARMS[arm],
            "per_epoch": [{k: r[k] for k in r if k.startswith("fit/") or k == "train/distill"} for r in rows],
            "last": {k: v for k, v in rows[-1].items() if k.startswith("fit/")},
            "seconds": time.perf_counter() - t0,
        }
        out_json.write_text(json.dumps(results, indent=1))
    what = "oracle maps" if oracle else f"teacher={teacher}"
    print(
        f"{'arm':<26} {'fit/cos':>8} {'cos_shuf':>9} {'gap':>7} {'obj':>6} {'bg':>6}   epochs={epochs} n={n} {what}"
    )
    for arm, r in results.items():
        last = r["last"]
        ob = [f"{last[k]:6.3f}" if k in last else "     -" for k in ("fit/cos_obj", "fit/cos_bg")]
        print(
            f"{arm:<26} {last['fit/cos']:8.3f} {last['fit/cos_shuf']:9.3f} {last['fit/gap']:7.3f} {' '.join(ob)}"
        )
    return results


def record(results: dict[str, Any], section: str, note: str) -> None:
    """Write the arms' last-epoch fit (and each arm's per-epoch fit/cos) into BENCHMARKS.md's `section`."""
    from benchmarks.report import Results

    res = Results()
    for arm, r in results.items():
        last = r["last"]
        row = {"arm": arm, **{k.split("/")[1]: round(v, 4) for k, v in last.items()}}
        row["cos_per_epoch"] = " ".join(f"{e['fit/cos']:.3f}" for e in r["per_epoch"])
        row["s"] = round(r["seconds"])
        res.add(section, **row)
    res.note(section, note)
    res.write()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--teacher", default=None, help="teacher folder (default: the tiny random DINOv3)")
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument(
        "--arms", default=",".join(ARMS), help="arm names; arm@seed repeats an arm with that seed"
    )
    ap.add_argument("--oracle", action="store_true", help="oracle maps (class coverage from the labels)")
    ap.add_argument("--record", default="", help="BENCHMARKS.md section to write the table to")
    ap.add_argument("--note", default="", help="the section's note (setup, what it shows)")
    a = ap.parse_args(argv)
    results = run(a.work, a.n, a.epochs, [s for s in a.arms.split(",") if s], a.teacher, a.oracle)
    if a.record:
        record(results, a.record, a.note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
