"""Why no gain? The signal benchmark's A/B with a PERFECT teacher: cached maps computed from the labels.

    python -m benchmarks.signal_oracle --work DIR [--epochs 48] [--seeds 3] [--val-every 8] [--n-train N]
                                      [--weights A:B] [--modes none,cache] [--out NAME]

Same students, data, epochs and seeds as benchmarks/signal_ab.py (run that first: it makes DIR's data and
cache), but the cache's features are replaced by each training image's oracle map (per-cell class coverage
of its own boxes, datatools/oracle.py, expressed in the cache's stored channel statistics, so the trainer's
standardisation yields the oracle's standardised maps), and the runs are scored on the TUNING split (demo
seed 3), never on the reporting set. Modes: none and cache (warp, default). If even the oracle does not lift
the student, the limit is the setting (32 images, 48 epochs, the default distillation weights), not what the
cache carries. Writes DIR/oracle/ (compare outputs); `python -m benchmarks.signal_ab --work DIR --report
--from-compare --compare-dir oracle --section signal.oracle` puts it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks import signal_ab

N_CLS = 5  # demo-data classes


def oracle_cache(plain: Path, out: Path, data_yaml: Path) -> Path:
    """A copy of the plain cache whose `features` rows are the oracle maps of its images (through the writer)."""
    from dinocache.precompute.oracle import write_oracle_features

    if (out / "zarr.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(plain, tmp)
    write_oracle_features(tmp, data_yaml, N_CLS)
    tmp.rename(out)
    return out


def run(
    work: Path,
    epochs: int,
    seeds: int,
    val_every: int,
    n_train: int | None = None,
    weights: tuple[float, float] | None = None,
    modes: list[str] | None = None,
    out_name: str = "oracle",
) -> dict[str, Any]:
    """`weights`: (stage_a_distill_weight, stage_b_distill_weight), default the trainer's; `n_train`: more
    training images than the benchmark's 32 (a separate DIR: the data, caches and tune.yaml are per size)."""
    paths, values = signal_ab.tuning_values(work, epochs, n_train)
    values["cache"] = str(oracle_cache(Path(paths["cache"]), work / "cache-oracle.zarr", Path(paths["data"])))
    if weights:
        values.update(stage_a_distill_weight=weights[0], stage_b_distill_weight=weights[1])
    return signal_ab.compare_into(
        work / out_name, values, modes=modes or ["none", "cache"], seeds=seeds, val_every=val_every
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.signal_oracle --work DIR [--epochs 48] [--seeds 3] [--val-every 8]`"""
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--epochs", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--val-every", type=int, default=8)
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--weights", help="A:B = stage_a_distill_weight:stage_b_distill_weight")
    ap.add_argument("--modes", help="default none,cache")
    ap.add_argument("--out", default="oracle", help="folder under DIR")
    a = ap.parse_args(argv)
    w = tuple(float(x) for x in a.weights.split(":")) if a.weights else None
    modes = a.modes.split(",") if a.modes else None
    run(Path(a.work), a.epochs, a.seeds, a.val_every, a.n_train, w, modes, a.out)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
