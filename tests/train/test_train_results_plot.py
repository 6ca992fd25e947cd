"""results.png reads right: the distillation loss is plotted unweighted with its weight as its own panel (the
Stage A -> B change is a step in w, not a cliff in learning), and always-zero loss panels are dropped."""

from __future__ import annotations

import math

from dinocache.train.results_plot import plot_columns


def test_distill_unweighted_weight_own_panel_zero_panels_dropped() -> None:
    header = ["epoch", "train/box_loss", "train/distill", "metrics/mAP50(B)", "val/box_loss", "val/distill"]
    rows = [
        ["1", "3.0", "0.0", "0.1", "2.9", "0"],  # w = 0 (warmup): nothing distilled
        ["2", "2.5", "0.5", "0.2", "2.4", "0"],  # Stage A, w = 1.0: L = 0.5
        ["3", "2.0", "0.04", "0.3", "2.0", "0"],  # Stage B, w = 0.1: L = 0.4 (learning, not a cliff)
    ]
    head, body = plot_columns(header, rows, {"train/distill": [0.0, 1.0, 0.1]})
    assert "val/distill" not in head and "val/distill_loss" not in head  # always 0
    i, k = head.index("train/distill_loss (unweighted)"), head.index("metrics/distill weight w")
    got = [float(r[i]) for r in body]
    assert math.isnan(got[0]) and got[1] == 0.5 and abs(got[2] - 0.4) < 1e-12
    assert [float(r[k]) for r in body] == [0.0, 1.0, 0.1]
    assert [r[head.index("train/box_loss")] for r in body] == ["3.0", "2.5", "2.0"]


def test_results_png_is_drawn_from_the_table(tmp_path) -> None:
    import csv

    from ultralytics.utils.plotting import plot_results

    header = ["epoch", "train/box_loss", "train/distill", "metrics/mAP50(B)", "val/distill"]
    rows = [[str(e), str(3 - e / 2), str(0.5 / e), str(e / 10), "0"] for e in range(1, 5)]
    head, body = plot_columns(header, rows, {"train/distill": [1.0, 1.0, 0.1, 0.1]})
    with open(tmp_path / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([head, *body])
    plot_results(file=tmp_path / "results.csv")
    assert (tmp_path / "results.png").stat().st_size > 1000
