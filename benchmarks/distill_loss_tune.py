"""The detector run's distillation loss (TrainConfig.dino_distill_loss), cosine against mse, on the TUNING split.

    python -m benchmarks.distill_loss_tune --work DIR [--losses cosine,mse] [--epochs 24] [--report]

The signal benchmark's students (benchmarks/signal_ab.py: 32 demo images at 128 px, the shipped demo teacher's
cache, mode cache, default weights) trained once per loss with the same seed, scored on the tuning split (demo
seed 3, never the reporting set): mAP at the last epoch and the feature fit `dinocache train` logs with each
validation (fit/cos, fit/cos_shuf, fit/gap, fit/pcc on the first 32 validation images; train/fit.py).
Writes DIR/loss-<loss>-e<epochs>.json per loss; `--report` puts them into latest.json / BENCHMARKS.md
(`signal.distill_loss`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import signal_ab

VAL_EVERY = 6  # validation every 6 epochs (and at the last)
FIT = ("fit/cos", "fit/cos_shuf", "fit/gap", "fit/pcc", "fit/pcc_shuf", "fit/cos_obj", "fit/cos_bg")


def run_one(work: Path, loss: str, epochs: int, val_every: int = VAL_EVERY) -> dict[str, Any]:
    """One student distilled with `loss` (seed 0); its row and the validated epochs' fit, kept in a json."""
    paths, base = signal_ab.tuning_values(work, epochs)
    out = work / f"loss-{loss}-e{epochs}"
    doc = signal_ab.compare_into(
        out, {**base, "dino_distill_loss": loss}, modes=["cache"], seeds=1, val_every=val_every
    )
    row = doc["runs"]["cache"][0]
    with open(Path(row["save_dir"]) / "results.csv", newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]
    keep = ("epoch", "metrics/mAP50(B)", "metrics/mAP50-95(B)", "train/distill")
    rec = {"run": row, "rows": [{k: r[k] for k in r if k.startswith("fit/") or k in keep} for r in rows]}
    (work / f"loss-{loss}-e{epochs}.json").write_text(json.dumps(rec, indent=1, default=str))
    return rec


def report(work: Path, losses: list[str], epochs: int, results: Any) -> None:
    for loss in losses:
        rec = json.loads((work / f"loss-{loss}-e{epochs}.json").read_text())
        last = rec["rows"][-1]
        run = rec["run"]
        results.add(
            "signal.distill_loss",
            loss=loss,
            epochs=epochs,
            map50=signal_ab._r(run["map50"]),
            map50_95=signal_ab._r(run["map50_95"]),
            **{k.split("/")[1]: signal_ab._r(float(last[k])) for k in FIT if k in last},
            # w * L_distill of the last epoch: mse's distance is larger than cosine's at the same weights
            distill_last=signal_ab._r(float(last["train/distill"])),
            gap_per_validation=" ".join(
                f"{r['epoch']}:{float(r['fit/gap']):.3f}"
                for i, r in enumerate(rec["rows"])
                if int(r["epoch"]) % VAL_EVERY == 0 or i == len(rec["rows"]) - 1
            ),
        )
    results.note(
        "signal.distill_loss",
        "Tuning split only (demo seed 3 val, 200 images, never the reporting set): the detector run's "
        "distillation loss (`dino_distill_loss`). The signal benchmark's student (YOLO26-n OBB from scratch, 32 "
        f"demo images of seed 1 at 128 px, {epochs} epochs, batch 4, mode cache with the shipped demo teacher, "
        "default weights 0.25/0.08, seed 0, one run per loss), validated every 6 epochs. fit/* = the feature fit "
        "`dinocache train` logs (train/fit.py) on the first 32 validation images at the last validation: cos = "
        "mean cosine of the student's projection with its own image's teacher map, cos_shuf = with another "
        "image's, gap = cos - cos_shuf, pcc = mean per-channel correlation over each image's cells, obj/bg = "
        "object/background cells; distill_last = w * L_distill of the last epoch (at the same weights mse's term "
        "is about twice cosine's, part of what differs); gap_per_validation = epoch:gap "
        "(benchmarks/distill_loss_tune.py).",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--losses", default="cosine,mse")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args(argv)
    losses = a.losses.split(",")
    if a.report:
        from benchmarks.report import Results

        res = Results()
        report(Path(a.work), losses, a.epochs, res)
        res.write()
        return 0
    for loss in losses:
        run_one(Path(a.work), loss, a.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
