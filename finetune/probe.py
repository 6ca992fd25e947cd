"""How much a teacher knows: a linear probe of each patch's class from its *cached* (PCA) features.

    python -m dinocache.finetune.probe TEACHER [TEACHER ...] [--imgsz 128] [--channels 32] [--images 200]

Held-out images (demo-data, seed `data_seed`: neither the teacher's nor the students' seed) go through the
real `dinocache precompute` (PCA to K channels) into a cache; the first `channels` components of each
image's map are the features, the class of each patch (background = 0, class i = i + 1; the box class map
of finetune/dataset.py, patches with >= `purity` of one class) the target. A multinomial logistic
regression (class-balanced loss) is fitted on the first half of the images and scored on the other half: accuracy, balanced
accuracy (mean per-class recall; background dominates), the majority-class baseline, and objectness (object vs
background, the mean of the two recalls), also split into pure patches (one class covers all of it) and mixed
ones (a box edge crosses it): at stride 16 the mixed patches are where a map must place an edge within a cell.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

# a patch is "pure" when one class covers at least this share of it (the box maps are area fractions)
PURE = 0.999


def _patch_labels(
    data_yaml: Path, imgsz: int, patch: int, purity: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """image key -> ((g, g) int64 patch class, -1 where no class covers >= purity of the patch; (g, g) share of
    the patch its class covers)."""
    from dinocache.finetune.dataset import DenseTargetDataset
    from dinocache.finetune.objectives import choose_objective, read_yolo_split

    from dinocache.core.data import image_key, list_split_images

    recs, summary = read_yolo_split(data_yaml, "train")
    ds = DenseTargetDataset(recs, choose_objective(summary), imgsz, patch)
    root, _ = list_split_images(data_yaml, "train")
    out = {}
    for i, rec in enumerate(recs):
        frac = ds[i]["box"].numpy()  # (C+1, g, g)
        lab, share = frac.argmax(0), frac.max(0)
        lab[share < purity] = -1
        out[image_key(rec.path, root)] = (lab, share)
    return out


def _fit_logreg(x: np.ndarray, y: np.ndarray, n_cls: int, l2: float = 1e-3, seed: int = 0) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    # class-balanced: ~90 % of the patches are background, an unweighted fit predicts only that
    counts = torch.bincount(yt, minlength=n_cls).float()
    w = torch.where(counts > 0, counts.sum() / (n_cls * counts.clamp(min=1)), torch.zeros_like(counts))
    lin = torch.nn.Linear(x.shape[1], n_cls)
    with torch.no_grad():
        lin.weight.normal_(0, 0.01, generator=g)
        lin.bias.zero_()
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt, weight=w) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe_teacher(
    teacher: str | Path,
    work: str | Path,
    imgsz: int = 128,
    channels: int = 32,
    images: int = 200,
    data_seed: int = 2000,
    purity: float = 0.5,
    min_size: float = 0.16,
    max_size: float = 0.6,
) -> dict[str, Any]:
    """Linear-probe scores of `teacher`'s cached PCA features on held-out demo images (see module doc)."""
    import torch
    from dinocache.datatools.demo_data import CLASSES, make_demo_dataset
    from dinocache.precompute.run import main as precompute
    from dinocache.teacher.registry import load_teacher

    from dinocache import cache

    work = Path(work)
    data = work / f"probe-data-{data_seed}-{images}-{imgsz}-{min_size}-{max_size}"
    if not (data / "data.yaml").is_file():
        make_demo_dataset(
            data, n_train=images, n_val=1, imgsz=imgsz, seed=data_seed, overwrite=True,
            min_size=min_size, max_size=max_size,
        )  # fmt: skip
    t = load_teacher(teacher, device="cpu")
    k = min(t.channels, max(channels, 32))
    store = work / f"probe-cache-{Path(teacher).name}.zarr"
    (work / "empty.json").write_text("{}")
    rc = precompute(
        ["--config", str(work / "empty.json"), f"data={data / 'data.yaml'}", f"cache={store}",
         f"dino_root={teacher}", f"imgsz={imgsz}", f"channels={k}", "device=cpu", "batch=16",
         "workers=0", "overwrite=true"]
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"probe: precompute of {teacher} failed (exit {rc})")
    labels = _patch_labels(data / "data.yaml", imgsz, t.stride(imgsz), purity)  # pixels per cell
    fc = cache.open(store)
    keys = sorted(labels)
    half = len(keys) // 2
    n_cls = len(CLASSES) + 1

    def xy(ks: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, ys, cover = [], [], []
        for key in ks:
            f = np.asarray(fc.get(key, channels=channels), dtype=np.float32)  # (D, g, g)
            lab, share = labels[key]
            m = lab >= 0
            xs.append(f[:, m].T)
            ys.append(lab[m])
            cover.append(share[m])
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(cover)

    xtr, ytr, _ = xy(keys[:half])
    xte, yte, cover = xy(keys[half:])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    lin = _fit_logreg((xtr - mu) / sd, ytr, n_cls)
    with torch.no_grad():
        pred = lin(torch.as_tensor((xte - mu) / sd)).argmax(1).numpy()
    recalls = {
        ("background" if c == 0 else CLASSES[c - 1]): float((pred[yte == c] == c).mean())
        for c in range(n_cls)
        if (yte == c).any()
    }
    majority = int(np.bincount(ytr, minlength=n_cls).argmax())
    # object vs background (what a detector needs first): mean of the two recalls
    obj_t, obj_p = yte > 0, pred > 0

    def objectness(m: np.ndarray) -> float:
        """Over the patches in mask `m`: NaN when they hold no object patch or no background one."""
        obj, bg = m & obj_t, m & ~obj_t
        if not (obj.any() and bg.any()):
            return math.nan
        return 0.5 * (float(obj_p[obj].mean()) + float((~obj_p[bg]).mean()))

    # pure = one class (background included) covers the whole patch; mixed = a box edge crosses it, where a
    # stride-16 map must say on which side of 50 % the patch falls
    pure = cover >= PURE
    return {
        "teacher": str(teacher),
        "channels": channels,
        "images_fit": half,
        "images_test": len(keys) - half,
        "patches_test": int(len(yte)),
        "accuracy": float((pred == yte).mean()),
        "balanced_accuracy": float(np.mean(list(recalls.values()))),
        "majority_baseline": float((yte == majority).mean()),
        "objectness_balanced_accuracy": objectness(np.ones_like(pure)),
        "objectness_pure_patches": objectness(pure),
        "objectness_mixed_patches": objectness(~pure),
        "pure_patch_share": float(pure.mean()),
        "object_patch_accuracy": float((pred[yte > 0] == yte[yte > 0]).mean()) if (yte > 0).any() else None,
        "recall_per_class": recalls,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m dinocache.finetune.probe TEACHER [TEACHER ...] [--imgsz 128] [--channels 32] [--images 200]`"""
    ap = argparse.ArgumentParser(prog="probe", description=__doc__.splitlines()[0])
    ap.add_argument("teachers", nargs="+")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--work", default="probe-work")
    args = ap.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    res = [probe_teacher(t, args.work, args.imgsz, args.channels, args.images) for t in args.teachers]
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
