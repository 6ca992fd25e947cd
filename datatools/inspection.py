"""`dinocache dataset inspect DATA [--json]`: what a dataset holds, read from the data itself."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from .formats import Collection, load_any


def _oriented(poly) -> bool:
    """True when the box's first edge is not axis-aligned (more than 0.5 degree off)."""
    (x0, y0), (x1, y1) = poly[0], poly[1]
    a = math.degrees(math.atan2(y1 - y0, x1 - x0)) % 90
    return 0.5 < a < 89.5


def summarize(col: Collection, max_problems: int = 20) -> dict:
    per_split: dict[str, dict] = {}
    inst = Counter()
    sizes = Counter()
    n_obj = n_oriented = 0
    for it in col.items:
        s = per_split.setdefault(it.split, {"images": 0, "instances": 0, "background": 0})
        s["images"] += 1
        s["instances"] += len(it.objects)
        s["background"] += not it.objects
        sizes[(it.width, it.height)] += 1
        for o in it.objects:
            inst[o.cls] += 1
            n_obj += 1
            n_oriented += len(o.poly) == 4 and _oriented(o.poly)
    ws = [w for w, _ in sizes.elements()] or [0]
    hs = [h for _, h in sizes.elements()] or [0]
    errors = [p for p in col.problems if p.severity == "error"]
    return {
        "format": col.format,
        "root": str(col.root),
        "images": len(col.items),
        "splits": per_split,
        "names": {int(k): v for k, v in col.names.items()},
        "instances_per_class": {col.names.get(c, str(c)): inst[c] for c in sorted(col.names)},
        "has_boxes": n_obj > 0,
        "has_oriented_boxes": n_oriented > 0,
        "has_masks": col.masks > 0,
        "image_sizes": {
            "min": [min(ws), min(hs)],
            "max": [max(ws), max(hs)],
            "most_common": [[w, h, n] for (w, h), n in sizes.most_common(5)],
        },
        "clipped": col.clipped,
        "problems": {
            "errors": len(errors),
            "warnings": len(col.problems) - len(errors),
            "first": [str(p) for p in col.problems[:max_problems]],
        },
    }


def inspect(data: str | Path, fmt: str | None = None) -> dict:
    return summarize(load_any(data, fmt, decode=False))


def format_table(info: dict) -> str:
    lines = [
        f"format      {info['format']}",
        f"root        {info['root']}",
        f"images      {info['images']}  "
        + "  ".join(
            f"{s}: {v['images']} ({v['instances']} boxes, {v['background']} background)"
            for s, v in info["splits"].items()
        ),
        f"boxes       {info['has_boxes']}   oriented: {info['has_oriented_boxes']}   masks: {info['has_masks']}",
        f"sizes       min {info['image_sizes']['min']}  max {info['image_sizes']['max']}  most common "
        + ", ".join(f"{w}x{h} ({n})" for w, h, n in info["image_sizes"]["most_common"]),
        "classes",
    ]
    for cid, name in info["names"].items():
        lines.append(f"  {cid:>3} {name:<24} {info['instances_per_class'].get(name, 0)}")
    pr = info["problems"]
    lines.append(f"problems    {pr['errors']} errors, {pr['warnings']} warnings")
    if info.get("clipped"):
        lines.append(
            f"clipped     {info['clipped']} label line(s) with corners outside the image (Ultralytics' check "
            "accepts them), clipped to it as Ultralytics does"
        )
    lines += [f"  {p}" for p in pr["first"]]
    if pr["errors"] + pr["warnings"] > len(pr["first"]):
        lines.append("  ... (dinocache dataset validate DATA lists all)")
    return "\n".join(lines)
