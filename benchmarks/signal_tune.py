"""Tuning the distillation weight on the TUNING split (never the reporting set), for the signal benchmark.

    python -m benchmarks.signal_tune --work DIR [--weights A:B,A:B,...] [--epochs 48] [--seeds 3] [--val-every 8]

The signal benchmark's students (benchmarks/signal_ab.py: same data, teacher, cache, epochs, seeds), mode
`cache`, trained with each (stage_a_distill_weight, stage_b_distill_weight) pair and scored on the tuning split
(demo seed 3). Its baseline is the `none` runs of benchmarks/signal_oracle.py (the same students on the same
split); run that first. Writes DIR/tune-wA-B/ per pair and DIR/tune.json (mean +/- std per pair, next to none).
A pair is only worth re-running on the reporting set (`dinocache compare ... train.stage_b_distill_weight=B`)
when it beats none here by more than the spread.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks import signal_ab


def run(
    work: Path,
    pairs: list[tuple[float, float]],
    epochs: int,
    seeds: int,
    val_every: int,
    oracle: bool = False,
) -> dict[str, Any]:
    """`oracle`: distil towards benchmarks/signal_oracle.py's oracle cache instead of the teacher's (is the
    weight, not the teacher, what limits the gain?); results go to DIR/tune-oracle.json."""
    from dinocache.compare import summarise

    paths, base = signal_ab.tuning_values(work, epochs)
    if oracle:
        base["cache"] = str(work / "cache-oracle.zarr")
    runs: dict[str, list[dict[str, Any]]] = {}
    done = work / "oracle" / "compare.json"
    # the same students without distillation on the same split (and the oracle at the default weights)
    if done.exists():
        prev = json.loads(done.read_text())["runs"]
        runs["none"] = prev["none"]
        if oracle:
            runs["oracle w=0.25/0.08"] = prev["cache"]
    kind = "oracle" if oracle else "cache"
    for a, b in pairs:
        name = f"{kind} w={a:g}/{b:g}"
        if name in runs:
            continue
        out = work / f"tune-{'oracle-' if oracle else ''}w{a:g}-{b:g}"
        if (out / "compare.json").exists():  # done before: reused
            got = json.loads((out / "compare.json").read_text())
        else:
            shutil.rmtree(out, ignore_errors=True)  # a stopped run's partial folder
            weights = {"stage_a_distill_weight": a, "stage_b_distill_weight": b}
            got = signal_ab.compare_into(
                out, {**base, **weights}, modes=["cache"], seeds=seeds, val_every=val_every
            )
        runs[name] = got["runs"]["cache"]
    doc = {"split": paths["tune"], "epochs": epochs, "runs": runs, "summary": summarise(runs)}
    (work / f"tune{'-oracle' if oracle else ''}.json").write_text(json.dumps(doc, indent=2, default=str))
    return doc


def report(doc: dict[str, Any], results: Any) -> None:
    for row in doc["summary"]:
        results.add(
            "signal.tune",
            setting=row["mode"],
            n=row["n"],
            map50=f"{row['map50_mean']:.4f} ± {row['map50_std']:.4f}",
            map50_95=f"{row['map50_95_mean']:.4f} ± {row['map50_95_std']:.4f}",
            d_map50_vs_none=None
            if row.get("map50_delta_vs_none") is None
            else round(row["map50_delta_vs_none"], 4),
            val_cls_loss=f"{row['val_cls_loss_mean']:.4f} ± {row['val_cls_loss_std']:.4f}",
            distill_loss_last=round(row["distill_loss_last"], 4),
        )
    results.note(
        "signal.tune",
        "Distillation weight (stage A / stage B) tuned on the TUNING split (demo seed 3, 200 images), never the "
        f"reporting set: the signal benchmark's students, mode cache, {doc['epochs']} epochs, mean ± std over "
        "seeds; none = the same students without distillation on the same split (benchmarks/signal_tune.py).",
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.signal_tune --work DIR [--weights A:B,...] [--report]`"""
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--weights", default="0.25:0.08,0.0625:0.02,1.0:0.32")
    ap.add_argument("--epochs", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--val-every", type=int, default=8)
    ap.add_argument(
        "--oracle", action="store_true", help="distil towards the oracle cache (signal_oracle.py)"
    )
    ap.add_argument(
        "--report", action="store_true", help="write DIR/tune.json into latest.json / BENCHMARKS.md"
    )
    ap.add_argument("--conclusion", default="", help="--report: appended to the note")
    a = ap.parse_args(argv)
    if a.report:
        from benchmarks.report import Results

        res = Results()
        doc = json.loads((Path(a.work) / "tune.json").read_text())
        extra = Path(a.work) / "tune-oracle.json"
        if extra.exists():  # one table: none, the teacher's cache and the oracle at each weight
            from dinocache.compare import summarise

            other = json.loads(extra.read_text())["runs"]
            doc["runs"].update({k: v for k, v in other.items() if k not in doc["runs"]})
            doc["summary"] = summarise(doc["runs"])
        report(doc, res)
        if a.conclusion:
            res.note("signal.tune", res.notes["signal.tune"] + " " + a.conclusion)
        res.write()
        return 0
    pairs = [tuple(float(x) for x in p.split(":")) for p in a.weights.split(",")]
    run(Path(a.work), pairs, a.epochs, a.seeds, a.val_every, a.oracle)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
