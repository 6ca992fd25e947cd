"""`dinocache dataset validate --data annotations.json --split train:0.7,val:0.15,test:0.15 --stratify --seed 42`

Splits a COCO instances JSON into one JSON per split, written next to it (or into --out) as
`<stem>_train.json`, `<stem>_val.json`, `<stem>_test.json`. Every annotation is copied as it is (boxes,
polygon and RLE `segmentation`s, extra keys), so instance masks survive to fine-tuning; `file_name`s are
rewritten relative to the new file's folder only when --out moves it. With --stratify the split is
stratified by class presence (datatools/split.assign_splits: each image in the stratum of its rarest class,
dealt so every split is within one image of its share); without, a seeded shuffle. Same input and seed ->
same files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from dinocache.core.data import DataError

from .formats import read_coco_json
from .split import SPLITS, assign_splits


def parse_split_spec(text: str) -> list[tuple[str, float]]:
    """'train:0.7,val:0.15,test:0.15' -> [(name, share)], names among train/val/test, shares summing to 1."""
    out: list[tuple[str, float]] = []
    for part in [p for p in str(text).split(",") if p.strip()]:
        name, sep, val = part.partition(":")
        name = name.strip()
        try:
            share = float(val)
        except ValueError:
            share = -1.0
        if not sep or name not in SPLITS or share < 0:
            raise DataError(
                f"--split: expected name:share pairs like train:0.7,val:0.15,test:0.15, got {part!r}"
            )
        if any(n == name for n, _ in out):
            raise DataError(f"--split: '{name}' is listed twice")
        out.append((name, share))
    if not out or out[0][0] != "train" or out[0][1] <= 0:
        raise DataError(f"--split: the first entry must be train with a share > 0, got {text!r}")
    s = sum(v for _, v in out)
    if abs(s - 1) > 1e-6:
        raise DataError(f"--split: the shares must sum to 1, got {s:g}")
    return out


def split_coco(
    path: str | Path, spec: list[tuple[str, float]], seed: int, stratify: bool, out: str | Path | None = None
) -> dict[str, Path]:
    """Write one COCO JSON per split; returns {split: path}. Refuses existing outputs? No: they are replaced
    atomically (the split is a pure function of input + seed)."""
    src = Path(path)
    d = read_coco_json(src)
    images = d["images"]
    if not images:
        raise DataError(f"{src}: no images to split")
    by_img: dict = {}
    for a in d["annotations"]:
        by_img.setdefault(a.get("image_id"), []).append(a)
    classes = [
        {int(a["category_id"]) for a in by_img.get(im.get("id"), []) if "category_id" in a} for im in images
    ]
    ratios = [v for _, v in spec]
    names = [n for n, _ in spec]
    if stratify:
        # assign_splits deals to positions train/val/test; map positions to the spec's names
        pos = assign_splits(classes, ratios, seed)
        assigned = [names[SPLITS.index(p)] for p in pos]
    else:
        order = np.random.default_rng(seed).permutation(len(images))
        bounds = np.cumsum([round(r * len(images)) for r in ratios])
        bounds[-1] = len(images)
        assigned = [""] * len(images)
        for k, i in enumerate(order):
            assigned[int(i)] = names[int(np.searchsorted(bounds, k, side="right"))]
    out_dir = Path(out) if out else src.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in names:
        keep = [im for im, s in zip(images, assigned) if s == name]
        ids = {im.get("id") for im in keep}
        part = {k: v for k, v in d.items() if k not in ("images", "annotations")}
        if out_dir.resolve() != src.parent.resolve():  # keep file_name pointing at the same images
            keep = [
                {**im, "file_name": os.path.relpath(src.parent / im["file_name"], out_dir)}
                if not Path(str(im.get("file_name", ""))).is_absolute()
                else im
                for im in keep
            ]
        part["images"] = keep
        part["annotations"] = [a for a in d["annotations"] if a.get("image_id") in ids]
        target = out_dir / f"{src.stem}_{name}.json"
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(part))
        os.replace(tmp, target)
        written[name] = target
    return written


def split_table(written: dict[str, Path]) -> str:
    lines = []
    for name, p in written.items():
        d = json.loads(p.read_text())
        kinds = Counter("mask" if a.get("segmentation") else "box" for a in d["annotations"])
        lines.append(
            f"{name}: {p} ({len(d['images'])} images, {len(d['annotations'])} annotations: "
            f"{kinds['box']} box-only, {kinds['mask']} with masks)"
        )
    return "\n".join(lines)
