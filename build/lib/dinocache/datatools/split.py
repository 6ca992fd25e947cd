"""`dinocache dataset split DATA --ratios 0.8,0.1,0.1 --seed 0 --out OUT`

Pools every image of DATA (all its splits) and re-splits it, stratified by class presence: each image
belongs to the stratum of the rarest class it contains (background images form their own stratum),
images are ordered stratum by stratum (shuffled with `seed` inside a stratum) and dealt in that order
to whichever split is furthest below its target share. Each stratum is thus spread over the splits in
proportion to the ratios, the totals match the ratios to within one image, and the same seed and
input always give the same split.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from dinocache.core.data import DataError

from .convert import write_yolo
from .formats import Collection, load_yolo, staged_dir

SPLITS = ("train", "val", "test")


def parse_ratios(text: str) -> list[float]:
    try:
        r = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DataError(f"--ratios: expected numbers like 0.8,0.1,0.1, got {text!r}") from None
    if not 2 <= len(r) <= 3 or any(v < 0 for v in r) or r[0] <= 0:
        raise DataError(f"--ratios: give 2 or 3 non-negative shares (train > 0), got {text!r}")
    s = sum(r)
    if abs(s - 1) > 1e-6:
        raise DataError(f"--ratios must sum to 1, got {s:g}")
    return r


def assign_splits(classes: list[set[int]], ratios: list[float], seed: int) -> list[str]:
    """Split name per image from its set of class ids (stratified, seeded)."""
    freq = Counter(c for cs in classes for c in cs)
    strata = [min(cs, key=lambda c: (freq[c], c)) if cs else -1 for cs in classes]
    rng = np.random.default_rng(seed)
    noise = rng.permutation(len(classes))
    order = sorted(
        range(len(classes)), key=lambda i: (strata[i] == -1, freq.get(strata[i], 0), strata[i], noise[i])
    )
    counts = [0] * len(ratios)
    out = [""] * len(classes)
    for k, i in enumerate(order, 1):
        j = max(range(len(ratios)), key=lambda j: (k * ratios[j] - counts[j], -j))
        counts[j] += 1
        out[i] = SPLITS[j]
    return out


def count_table(col: Collection, counts: dict[str, Counter]) -> str:
    splits = [s for s in SPLITS if s in counts]
    rows = [["class", *splits]]
    rows.append(["images", *(str(counts[s]["images"]) for s in splits)])
    for cid, name in col.names.items():
        rows.append([f"{cid}:{name}", *(str(counts[s][cid]) for s in splits)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def split(
    data: str | Path, out: str | Path, ratios: list[float], seed: int = 0, overwrite: bool = False, log=print
) -> dict[str, Counter]:
    col = load_yolo(data)
    if col.n_errors:
        first = "\n  ".join(str(p) for p in col.problems if p.severity == "error")
        raise DataError(
            f"{data}: {col.n_errors} errors; run `dinocache dataset validate --fix` first:\n  {first}"
        )
    if len(col.items) < len(ratios):
        raise DataError(f"{data}: {len(col.items)} images cannot fill {len(ratios)} splits")
    names = assign_splits([{o.cls for o in it.objects} for it in col.items], ratios, seed)
    of = {id(it): s for it, s in zip(col.items, names)}
    with staged_dir(Path(out), overwrite, protect=[col.root]) as tmp:
        counts = write_yolo(col, tmp, split_of=lambda it: of[id(it)], min_visible=0.0)
    log(count_table(col, counts))
    log(f"wrote {Path(out).resolve()}")
    return counts
