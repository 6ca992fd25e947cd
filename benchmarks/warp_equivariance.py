"""How far the cached map warped with an augmentation is from the teacher's map of the augmented image.

    python -m benchmarks.warp_equivariance --work DIR [--images 64]

`dinocache warp-check` (train/warp_check.py) of the shipped demo teacher and of the 16x16 mean pool (exactly
equivariant for flips and whole-cell shifts: what the warp itself loses by resampling) on the first images
of signal.pretrain's unlabeled set (demo seed 4, 128 px), into latest.json / BENCHMARKS.md
(`signal.warp_check`). Cache-mode distillation teaches the student warp(teacher(image)); the teacher run
online (and the `views` arm of signal.pretrain) teaches teacher(warp(image)). Where the two differ, the
cache with warping carries a different signal from the one the teacher gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import signal_ab, signal_pretrain

SECTION = "signal.warp_check"


def run(work: Path, images: int) -> list[dict[str, Any]]:
    """warp-check rows of the demo teacher and of the mean pool, each tagged with its teacher."""
    from dinocache.datatools.demo_data import make_demo_dataset
    from dinocache.train.warp_check import main as warp_check

    data = work / "u-gen"
    if not (data / "data.yaml").is_file():  # signal.pretrain's U (its labels mark the object cells)
        make_demo_dataset(data, n_train=images, n_val=1, imgsz=signal_ab.IMGSZ, seed=signal_pretrain.U_SEED,
                          overwrite=True, **signal_ab.SIZES)  # fmt: skip
    rows = []
    for name, teacher in (
        ("demo teacher (make-demo-teacher)", str(signal_ab.teacher(False))),
        ("avgpool", "avgpool"),
    ):
        out = work / f"wc-{Path(teacher).name}"
        rc = warp_check(["--teacher", teacher, "--data", str(data / "data.yaml"), "--imgsz", str(signal_ab.IMGSZ),
                         "--n-images", str(images), "--out", str(out), "viz=0"])  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"warp-check of {teacher} failed (exit {rc})")
        rows += [{"teacher": name, **r} for r in json.loads((out / "warp_check.json").read_text())["rows"]]
    return rows


def report(rows: list[dict[str, Any]], results: Any) -> None:
    for r in rows:
        results.add(
            SECTION, teacher=r["teacher"], family=r["family"], magnitude=r["magnitude"],
            cos_object=signal_ab._r(r["cos_object"]), cos_background=signal_ab._r(r["cos_background"]),
            valid_fraction=signal_ab._r(r["valid_fraction"]), n_images=r["n_images"],
        )  # fmt: skip
    results.note(
        SECTION,
        "Equivariance gap (`dinocache warp-check`, benchmarks/warp_equivariance.py): for each augmentation, the "
        "mean cosine, cell by cell over the valid cells, between the teacher's map of the augmented image and its "
        "map of the plain image warped the same way (what a cache with distill_geometric_aug=warp distils), after "
        "the trainer's per-channel standardisation; object cells (a pixel of a labelled shape) and background "
        "cells apart. 128 px, the first images of signal.pretrain's unlabeled set. avgpool = the 16x16 mean "
        "pool: the warp's own resampling loss. 1.0 = the warped map is the teacher's map of the augmented image.",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--images", type=int, default=64)
    a = ap.parse_args(argv)
    from benchmarks.report import Results

    res = Results()
    report(run(Path(a.work), a.images), res)
    res.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
