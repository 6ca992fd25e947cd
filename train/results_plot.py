"""The table results.png is drawn from: results.csv made readable for Ultralytics' `plot_results`, which
draws one panel per column whose name holds `loss` or `metric`.

- A distillation column of results.csv (`train/distill`, or `train/d_NAME` per teacher of a multi-teacher
  run) holds `w * L_distill`, the term the optimizer saw. Plotted as it is, the Stage A -> B change of `w`
  looks like a cliff in learning; divided by that epoch's `w` it is `L_distill` itself (empty where w = 0:
  nothing was distilled), and `w` gets a panel of its own.
- A loss column that is zero in every row (`val/distill`: validation computes no distillation) is left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_columns(
    header: list[str], rows: list[list[str]], weights: dict[str, list[float]]
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for plot_results. `weights` maps a distillation column (stripped name) to the weight `w`
    of each row's epoch; those columns become `<name>_loss (unweighted)` and each gets a
    `metrics/<name> weight w` column beside it."""
    names = [h.strip() for h in header]

    def value(r: list[str], j: int) -> float:
        try:
            return float(r[j])
        except (ValueError, IndexError):
            return math.nan

    out_header: list[str] = []
    cols: list[list[str]] = []
    for j, name in enumerate(names):
        vals = [value(r, j) for r in rows]
        if name in weights:
            w = weights[name]
            out_header.append(f"{name}_loss (unweighted)")
            cols.append([repr(v / wi) if wi > 0 and math.isfinite(v) else "nan" for v, wi in zip(vals, w)])
            out_header.append(f"metrics/{name.split('/')[-1]} weight w")
            cols.append([repr(float(wi)) for wi in w])
            continue
        is_loss = "loss" in name or name.endswith("/distill") or "/d_" in name
        if is_loss and rows and all(v == 0.0 for v in vals):
            continue  # always zero: a flat panel that says nothing
        # Ultralytics plots only columns named *loss*: the distillation columns get the suffix
        out_header.append(name if "loss" in name or not is_loss else f"{name}_loss")
        cols.append([r[j] if j < len(r) else "" for r in rows])
    return out_header, [list(t) for t in zip(*cols)] if cols else []


def write_results_png(results_csv: Path, cfg: Any, out: Path) -> None:
    """results.png of a run (its TrainConfig `cfg`) at `out`, drawn by Ultralytics' plot_results from a copy of
    results.csv made by `plot_columns`, with each epoch's distillation weight (train.losses)."""
    import csv
    import shutil
    import tempfile

    from dinocache.train.config import teacher_terms
    from dinocache.train.losses import distill_weight, term_weights
    from ultralytics.utils.plotting import plot_results

    with open(results_csv, newline="") as f:
        header, *rows = list(csv.reader(f))
    epochs = [int(float(r[0])) - 1 for r in rows]  # results.csv counts epochs from 1
    weights: dict[str, list[float]] = {}  # teacher_source=none: the all-zero distill columns drop out
    if cfg.teacher_source != "none" and cfg.teachers:
        weights = {
            f"train/{t.loss_name}": [term_weights(e, cfg).get(t.teacher, 0.0) for e in epochs]
            for t in teacher_terms(cfg)
        }
    elif cfg.teacher_source != "none":
        weights = {"train/distill": [distill_weight(e, cfg) for e in epochs]}
    weights = {k: v for k, v in weights.items() if k in {h.strip() for h in header}}
    head, body = plot_columns(header, rows, weights)
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / "results.csv", "w", newline="") as f:
            csv.writer(f).writerows([head, *body])
        plot_results(file=Path(tmp) / "results.csv")
        shutil.move(str(Path(tmp) / "results.png"), out)
