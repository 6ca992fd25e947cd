"""Pretraining on unlabeled images from the cache, then fine-tuning on few labels: does it beat scratch?

    python -m benchmarks.signal_pretrain --work DIR [--quick] [--seeds N] [--arms a,b,...] [--report]

Data (demo-data at 128 px, objects 0.16-0.6 of the side, the distribution the demo teacher learnt on its own
seed 1000):
- L labelled training images: demo seed 1 (the signal benchmark's students' data), and its val split of
  `n_val` >= 200 images: the reporting set, never tuned on;
- U unlabeled images: demo seed 4, copied into a folder without labels (what pretraining reads: a folder of
  images); their label files stay in the generator's folder and only the oracle cache reads them.

Caches of U (`dinocache precompute`, PCA to 32 channels): the knowledgeable teacher's (`make-demo-teacher`),
the random teacher's (the same model before training: `demo_teacher.random_base`), and the oracle's (the
random teacher's cache with every row replaced by the image's class coverage from U's hidden labels,
precompute/oracle.py; the upper bound of what the pipe can carry).

Arms, each followed by the SAME fine-tuning on L (teacher_source none, `dinocache compare`'s run and scores):
- scratch: no pretraining (the model yaml);
- teacher: `dinocache pretrain` from the knowledgeable teacher's cache;
- oracle: pretrain from the oracle cache;
- random: pretrain from the random teacher's cache (control);
- shuffled: pretrain from the teacher cache, each image learning another image's map (control);
- online: pretrain with the teacher run on every augmented batch (parity with the cache, and its cost);
- views: `dinocache augment` writes K = 4 views of each unlabeled image (flips, scale, translate, HSV), the
  teacher's cache is made of the views, and pretraining reads them with no geometric augmentation of its own
  (no mosaic, affine or flips), for pretrain_epochs / K epochs (the same optimizer steps): every map is the
  teacher's own map of the image the student sees, where the teacher arm's is its map of the plain image
  warped along (exact only for a teacher that commutes with the augmentation: `dinocache warp-check`).

Pretraining runs once per (arm, pretrain seed); with `pretrain_per_seed` false (the CPU setting) one
pretraining per arm (seed 0) is fine-tuned with every seed, so the paired CIs hold the fine-tuning's seed
variance, not the pretraining's. Runs go seed by seed, arms alternating. Scores are the last epoch's on the
reporting set (Ultralytics mAP50 / mAP50-95, the project's grade of last.pt). Outputs in DIR:
signal_pretrain.json (settings, pretraining fits and costs, fine-tuning runs) and ft/compare.json +
val_map.png (compare's outputs over the arms), rewritten after every run. The pytest wrapper
(benchmarks/test_signal.py) and `--report` put it into latest.json / BENCHMARKS.md (`signal.pretrain.*`).

Why one file of ~700 lines: data, arms, the runs and the report share one settings record and one work
folder layout (signal_pretrain.json), and the pytest wrapper, the CLI and the merge of separate arm
processes (--also) all go through it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import signal_ab

IMGSZ = signal_ab.IMGSZ
SIZES = signal_ab.SIZES
N_CLS = 5  # demo-data classes
U_SEED = 4  # demo-data seed of the unlabeled images (students 1, tuning 3, teacher 1000, probe 2000)
ARMS = ["scratch", "teacher", "oracle", "random", "shuffled", "online", "views"]
VIEWS = 4  # K: offline views per unlabeled image of the views arm
METRICS = ("map50", "map50_95", "grade")
# the held-out validation losses (lower is better): they still separate students that detect nothing yet
LOSSES = ("val_box_loss", "val_cls_loss")


def settings(quick: bool) -> dict[str, Any]:
    if quick:  # plumbing only: every arm, one seed, a few images and epochs
        return {
            "n_label": 8,
            "n_val": 20,
            "n_unlabeled": 48,
            "pretrain_epochs": 1,
            "pretrain_batch": 16,
            "pretrain_loss": "mse",
            "finetune_epochs": 2,
            "val_every": 1,
            "seeds": 1,
            "pretrain_per_seed": False,
            "arms": ARMS,
        }
    # Sized for the shared 2-core CPU (a pretraining epoch ~0.021 CPU s per image of U, a fine-tuning epoch on
    # 32 images ~3.3 CPU s, one torch thread per process): U = 2,000 unlabeled images x 4 epochs of
    # pretraining with the mse loss (484 optimizer steps), 24 fine-tuning epochs (the fewest at which scratch
    # detects: 0.000 mAP50 at 12 epochs, 0.033 at 24 on one seed), validation every 6 epochs.
    return {
        "n_label": 32,
        "n_val": 200,
        "n_unlabeled": 2000,
        "pretrain_epochs": 4,
        "pretrain_batch": 16,
        "pretrain_loss": "mse",
        "finetune_epochs": 24,
        "val_every": 6,
        "seeds": 5,
        "pretrain_per_seed": False,
        "arms": ARMS,
    }


# ------------------------------------------------------------------------------------------------ data


def _precompute(work: Path, data: Path, cache: Path, teacher_dir: Path) -> Path:
    from dinocache.precompute.run import main as precompute

    if (cache / "zarr.json").exists():
        return cache
    (work / "empty.json").write_text("{}")
    rc = precompute(
        ["--config", str(work / "empty.json"), f"data={data}", f"cache={cache}", f"dino_root={teacher_dir}",
         f"imgsz={IMGSZ}", "channels=32", "device=auto", "batch=32", "workers=0", "overwrite=true"]
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"precompute of {cache} failed (exit {rc})")
    return cache


def prepare(
    work: Path, s: dict[str, Any], teacher_dir: Path | None, random_dir: Path, arms: list[str]
) -> dict:
    """Labelled data, the unlabeled folder and its caches under `work` (reused when present)."""
    from dinocache.datatools.demo_data import make_demo_dataset

    work.mkdir(parents=True, exist_ok=True)
    lab = work / f"labelled-{s['n_label']}-{s['n_val']}"
    if not (lab / "data.yaml").is_file():
        make_demo_dataset(
            lab, n_train=s["n_label"], n_val=s["n_val"], imgsz=IMGSZ, seed=1, overwrite=True, **SIZES
        )
    gen = work / f"unlabeled-gen-{s['n_unlabeled']}"
    if not (gen / "data.yaml").is_file():
        make_demo_dataset(
            gen, n_train=s["n_unlabeled"], n_val=1, imgsz=IMGSZ, seed=U_SEED, overwrite=True, **SIZES
        )
    # the images alone, in a folder with no labels anywhere: pretraining never sees one
    u = work / f"unlabeled-{s['n_unlabeled']}"
    if not u.is_dir():
        tmp = u.with_name(u.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in sorted((gen / "images" / "train").iterdir()):
            os.link(f, tmp / f.name)
        tmp.rename(u)
    paths = {"labelled": str(lab / "data.yaml"), "unlabeled": str(u)}
    if {"teacher", "shuffled", "online"} & set(arms):
        paths["teacher_cache"] = str(
            _precompute(work, u, work / f"u-teacher-{s['n_unlabeled']}.zarr", teacher_dir)
        )
    if {"random", "oracle"} & set(arms):
        paths["random_cache"] = str(
            _precompute(work, u, work / f"u-random-{s['n_unlabeled']}.zarr", random_dir)
        )
    if "views" in arms:
        paths["views"], paths["views_cache"] = _views(work, u, s, teacher_dir)
    if "oracle" in arms:  # every row is overwritten: the random teacher's cache is only its frame
        paths["oracle_cache"] = str(
            oracle_cache(Path(paths["random_cache"]), work / f"u-oracle-{s['n_unlabeled']}.zarr", gen)
        )
    return paths


def _views(work: Path, u: Path, s: dict[str, Any], teacher_dir: Path | None) -> tuple[str, str]:
    """K augmented views of U (`dinocache augment`, its default pipeline) and the teacher's cache of them."""
    from dinocache.datatools.augment import main as augment

    out = work / f"unlabeled-views{VIEWS}-{s['n_unlabeled']}"
    if not (out / "data.yaml").is_file():
        (work / "empty.json").write_text("{}")
        rc = augment(["--config", str(work / "empty.json"), f"data={u}", f"out={out}", f"imgsz={IMGSZ}",
                      f"views={VIEWS}", "seed=0", "image_format=png", "overwrite=true"])  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"augment of {u} failed (exit {rc})")
    images = out / "images" / "train"
    cache = _precompute(work, images, work / f"u-views{VIEWS}-teacher-{s['n_unlabeled']}.zarr", teacher_dir)
    return str(images), str(cache)


def oracle_cache(plain: Path, out: Path, gen: Path) -> Path:
    """A copy of a cache of U whose rows are each image's class coverage from U's hidden labels."""
    from dinocache.precompute.oracle import write_oracle_features

    if (out / "zarr.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(plain, tmp)
    labels = gen / "labels" / "train"
    write_oracle_features(tmp, "", N_CLS, label_of=lambda key: labels / Path(key).with_suffix(".txt").name)
    tmp.rename(out)
    return out


# ----------------------------------------------------------------------------------------------- arms


def pretrain_values(arm: str, paths: dict, s: dict, teacher_dir: Path, random_dir: Path) -> dict[str, Any]:
    """The PretrainConfig values of a pretraining arm (only the maps' source differs)."""
    v: dict[str, Any] = {
        "data": paths["unlabeled"],
        "model": "yolo26n-obb.yaml",
        "dino_root": str(teacher_dir),
        "cache": paths.get("teacher_cache", ""),
        "epochs": s["pretrain_epochs"],
        "imgsz": IMGSZ,
        "batch": s["pretrain_batch"],
        "nbs": s["pretrain_batch"],
        "workers": 0,
        "device": "auto",
        "fit_images": fit_images(s),
        "loss": s.get("pretrain_loss", "mse"),
        # pretrain_extra (--pretrain-extra): Ultralytics arguments beyond the defaults, e.g. {"mosaic": 0.0}
        "extra": {"plots": False, **(s.get("pretrain_extra") or {})},
    }
    if arm == "oracle":
        # the oracle map has 1 + N_CLS channels (the rest of the cache's rows are 0): only those are distilled
        # and scored. The constant channels carry nothing: under the mse loss each costs ~1 with ~0 gradient,
        # and in the fit they dilute pcc (a mean over channels) and the cosine (the student's free outputs on
        # them); with all 32, after one epoch: loss 1.06, held-out gap 0.014 (BENCHMARKS.md pretrain.fit_oracle
        # distils the same 6 channels)
        v.update(cache=paths["oracle_cache"], dino_root=str(random_dir), channels=1 + N_CLS)
    elif arm == "random":
        v.update(cache=paths["random_cache"], dino_root=str(random_dir))
    elif arm == "shuffled":
        v["shuffle"] = True
    elif arm == "online":
        v["teacher_source"] = "online"
    elif arm == "views":  # the views are the augmentation: none on top, the same number of optimizer steps
        v.update(data=paths["views"], cache=paths["views_cache"], geometric_aug="off",
                 epochs=max(1, s["pretrain_epochs"] // VIEWS))  # fmt: skip
        # (one epoch when pretrain_epochs <= K: Ultralytics then runs no warmup and no decay, at lr0 throughout)
        v["extra"] = {**v["extra"], "fliplr": 0.0}
    return v


# (process CPU s, wall s) of each training epoch of the running pretraining (the epoch callbacks below)
_EPOCHS: list[tuple[float, float]] = []
_EPOCH_START: list[tuple[float, float]] = []


def _epoch_start(trainer: Any) -> None:
    _EPOCH_START[:] = [(time.process_time(), time.perf_counter())]


def _epoch_end(trainer: Any) -> None:
    c0, w0 = _EPOCH_START[0]
    _EPOCHS.append((time.process_time() - c0, time.perf_counter() - w0))


def fit_images(s: dict[str, Any]) -> int:
    """Held-out U images of the pretraining's feature fit (pretrain's default 64, at most a fifth of U)."""
    return min(64, max(2, s["n_unlabeled"] // 5))


def pretrain(work: Path, arm: str, seed: int, values: dict[str, Any]) -> dict[str, Any]:
    """One `dinocache pretrain` run (reused when its record exists): checkpoint, held-out fit, cost."""
    from dinocache.train.pretrain import Pretrain, PretrainConfig

    from dinocache.core.config import build

    rec = work / "pretrain" / f"{arm}-s{seed}.json"
    if rec.is_file():
        return json.loads(rec.read_text())
    root = work / "pretrain" / "runs"
    shutil.rmtree(root / Path(values["model"]).stem / "pretrain" / f"{arm}-s{seed}", ignore_errors=True)
    cfg = build(
        PretrainConfig, {**values, "seed": seed, "name": f"{arm}-s{seed}", "artifacts_root": str(root)}, arm
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    _EPOCHS.clear()
    res = Pretrain(cfg).run({"on_train_epoch_start": [_epoch_start], "on_train_epoch_end": [_epoch_end]})
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    epochs = list(_EPOCHS)
    out = {
        "arm": arm,
        "seed": seed,
        "best": str(res.best),
        "last": str(res.last),
        "save_dir": str(res.save_dir),
        "fit": res.fit,
        "epochs": cfg.epochs,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        # one training epoch over U (from Ultralytics' epoch start to its end: no start-up, no held-out fit),
        # median over the epochs; CPU time of this process (all threads)
        "cpu_s_per_epoch": round(statistics.median(c for c, _ in epochs), 2) if epochs else None,
        "wall_s_per_epoch": round(statistics.median(w for _, w in epochs), 2) if epochs else None,
        "epoch_times": [[round(c, 2), round(w, 2)] for c, w in epochs],
    }
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps(out, indent=2, default=str))
    return out


def finetune_values(paths: dict, s: dict, teacher_dir: Path, model: str) -> dict[str, Any]:
    """The fine-tuning every arm shares (only the starting weights differ): no distillation, the signal
    benchmark's student settings."""
    return {
        "data": paths["labelled"],
        "dino_root": str(teacher_dir),
        "model": model,
        "imgsz": IMGSZ,
        "epochs": s["finetune_epochs"],
        "batch": 4,
        "nbs": 4,  # an optimizer step per batch (32 images: 8 steps an epoch)
        "workers": 0,
        "device": "auto",
        "warmup_epochs": 1,
        # every layer trains from epoch 1 in every arm (a .pt start would otherwise freeze layers 0-9 in stage A)
        "stage_a_freeze": 0,
        "teacher_source": "none",
        "eval_enabled": False,  # the run grades last.pt itself, once
        "dino_viz_enabled": False,
        "wandb_enabled": False,
        "extra": {"plots": False},
    }


def finetune(work: Path, arm: str, seed: int, values: dict[str, Any], s: dict) -> dict[str, Any]:
    """One fine-tuning run on L, through `dinocache compare`'s run and scores (mode none)."""
    from dinocache.compare import CompareConfig, run_config, train_one
    from dinocache.core.config import build

    out = work / "ft" / arm
    shutil.rmtree(out / "runs" / Path(values["model"]).stem / "runs" / f"none-s{seed}", ignore_errors=True)
    ccfg = build(CompareConfig, {"modes": ["none"], "seeds": 1, "seed0": seed, "val_every": s["val_every"],
                                 "out": str(out)}, f"signal.pretrain {arm}")  # fmt: skip
    tcfg = run_config(values, "none", seed, ccfg, out)
    return train_one(tcfg, grade=True, val_every=s["val_every"])


# ------------------------------------------------------------------------------------------ statistics


def paired(runs: dict[str, list[dict]], arm: str, metric: str, base: str = "scratch") -> dict[str, Any]:
    """Paired difference arm - base over the seeds both have: mean, std, n and the t-based 95 % CI."""
    from scipy import stats

    b = {r["seed"]: r.get(metric) for r in runs.get(base, [])}
    d = [r[metric] - b[r["seed"]] for r in runs.get(arm, []) if r["seed"] in b and r.get(metric) is not None]
    d = [x for x in d if not math.isnan(x)]
    n = len(d)
    if n == 0:
        return {"n": 0}
    m = statistics.fmean(d)
    if n < 2:
        return {"n": n, "mean": m}
    sd = statistics.stdev(d)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": m, "std": sd, "ci95": [m - half, m + half]}


def _ms(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "n/a"
    return f"{statistics.fmean(xs):.4f} ± {(statistics.stdev(xs) if len(xs) > 1 else 0.0):.4f}"


def _ci(p: dict[str, Any]) -> str:
    if p.get("n", 0) < 2:
        return "n/a" if not p.get("n") else f"{p['mean']:+.4f} (n=1)"
    lo, hi = p["ci95"]
    return f"{p['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


# -------------------------------------------------------------------------------------------------- run


def teachers(quick: bool, arms: list[str]) -> tuple[Path | None, Path]:
    """(knowledgeable demo teacher, or None when no arm uses it; its random base of the same shape: the
    random-teacher control)."""
    if quick or {"teacher", "shuffled", "online", "views"} & set(arms):
        tdir = signal_ab.teacher(quick)
        return tdir, signal_ab.random_teacher(tdir)
    return None, signal_ab.random_teacher()


def run(work: Path, quick: bool, **over: Any) -> dict[str, Any]:
    """Every (seed, arm) run not yet in WORK/signal_pretrain.json (same settings): a stopped or partial run
    (`--arms` of a subset) is continued, the runs recorded are kept."""
    from dinocache.compare import write_outputs

    s = {**settings(quick), **{k: v for k, v in over.items() if v is not None}}
    arms = [a for a in ARMS if a in s["arms"]]
    tdir, rdir = teachers(quick, arms)
    t0 = time.perf_counter()
    paths = prepare(work, s, tdir, rdir, arms)
    rec = work / "signal_pretrain.json"
    same = ("n_label", "n_val", "n_unlabeled", "pretrain_epochs", "pretrain_batch", "finetune_epochs",
            "val_every", "pretrain_per_seed", "pretrain_extra")  # fmt: skip
    doc: dict[str, Any] = json.loads(rec.read_text()) if rec.is_file() else {}
    if not doc or any(doc["settings"].get(k) != s.get(k) for k in same):
        doc = {"settings": s, "pretrain": {}, "runs": {}}
    doc["settings"] = {**s, "arms": [a for a in ARMS if a in set(arms) | set(doc["runs"])]}
    doc.update(random_teacher=str(rdir), paths={**doc.get("paths", {}), **paths})
    if tdir is not None:
        doc["teacher"] = str(tdir)
    doc.setdefault("prepare_wall_s", {})[",".join(arms)] = round(time.perf_counter() - t0, 1)
    doc["threads"] = {
        "torch": __import__("torch").get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    runs = doc["runs"]
    meta = {"modes": list(runs), "seeds": [], "epochs": s["finetune_epochs"], "imgsz": IMGSZ,
            "data": paths["labelled"], "train_images": s["n_label"], "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    (work / "ft").mkdir(parents=True, exist_ok=True)
    seed0 = s.get("seed0") or 0
    if s.get("pretrain_only"):  # the pretraining of each arm alone: its feature fit and cost, no fine-tuning
        for arm in (a for a in arms if a != "scratch"):
            pre = pretrain(work, arm, seed0, pretrain_values(arm, paths, s, tdir or rdir, rdir))
            doc["pretrain"][f"{arm}-s{seed0}"] = pre
            rec.write_text(json.dumps(doc, indent=2, default=str))
        return doc
    for seed in range(seed0, seed0 + s["seeds"]):
        for arm in arms:
            if any(r["seed"] == seed for r in runs.get(arm, [])):
                continue
            model = "yolo26n-obb.yaml"
            if arm != "scratch":
                pseed = seed if s["pretrain_per_seed"] else 0
                pre = pretrain(work, arm, pseed, pretrain_values(arm, paths, s, tdir or rdir, rdir))
                doc["pretrain"][f"{arm}-s{pseed}"] = pre
                model = pre["best"]
            print(f"\n==> signal.pretrain: fine-tune {arm}, seed {seed}", flush=True)
            row = finetune(work, arm, seed, finetune_values(paths, s, rdir, model), s)
            runs.setdefault(arm, []).append(row)
            meta.update(modes=list(runs), seeds=sorted({r["seed"] for rs in runs.values() for r in rs}))
            write_outputs(work / "ft", runs, meta)
            rec.write_text(json.dumps(doc, indent=2, default=str))
            print(f"==> signal.pretrain: {arm} seed {seed}: mAP50 {row['map50']:.4f} mAP50-95 "
                  f"{row['map50_95']:.4f} grade {row.get('grade', math.nan):.4f} ({row['wall_s']:.0f} s)", flush=True)  # fmt: skip
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rec.write_text(json.dumps(doc, indent=2, default=str))
    return doc


# ----------------------------------------------------------------------------------------------- report


def report_variants(variants: list[str], results: Any, section: str, conclusion: str = "") -> dict[str, list]:
    """Arms of several work folders side by side (`--variant LABEL=DIR:ARM`, e.g. the same arm pretrained with
    other Ultralytics arguments): mAP mean ± std, the paired difference against the first variant (scratch) and
    the second (the reference arm), and each pretraining's held-out fit, as `section` rows."""
    runs: dict[str, list] = {}
    fits: dict[str, dict] = {}
    extra: dict[str, Any] = {}
    for v in variants:
        label, _, where = v.partition("=")
        folder, _, arm = where.rpartition(":")
        doc = json.loads((Path(folder) / "signal_pretrain.json").read_text())
        runs[label] = doc["runs"][arm]
        pre = [q["fit"] for q in doc["pretrain"].values() if q["arm"] == arm]  # one, or one per seed
        fits[label] = {k: statistics.fmean(f[k] for f in pre) for k in (pre[0] if pre else {})}
        extra[label] = doc["settings"].get("pretrain_extra") or ""
    base, ref = list(runs)[:2]
    for label, rs in runs.items():
        f = fits[label]
        results.add(
            section, variant=label, n=len(rs), map50=_ms([r["map50"] for r in rs]),
            map50_95=_ms([r["map50_95"] for r in rs]),
            **{f"d_map50_vs_{base} [95% CI]": "" if label == base else _ci(paired(runs, label, "map50", base)),
               f"d_map50_vs_{ref} [95% CI]": "" if label in (base, ref) else _ci(paired(runs, label, "map50", ref))},
            cos=signal_ab._r(f.get("fit/cos", "")), gap=signal_ab._r(f.get("fit/gap", "")),
            pcc=signal_ab._r(f.get("fit/pcc", "")), pretrain_extra=json.dumps(extra[label]) if extra[label] else "",
        )  # fmt: skip
    results.note(
        section,
        "Variants of signal.pretrain's arms side by side (the same data, fine-tuning and seeds; "
        "`python -m benchmarks.signal_pretrain --report-variants --variant LABEL=WORK:ARM ...`): mAP50 mean ± std "
        f"over the fine-tuning seeds, the paired difference against {base} and against {ref} [t-based 95 % CI], "
        "and the pretraining's held-out fit (cos, gap = cos - cos_shuf, pcc, the mean over the pretrainings; see "
        "signal.pretrain.arms). "
        "pretrain_extra = the Ultralytics arguments the pretraining ran with beyond the arm's own. "
        + conclusion,
    )
    return runs


def merge(doc: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """`doc` plus the arms of `other`, a run of other arms with the same settings in another work folder
    (the same data: every input is generated from fixed seeds); refused when the settings differ."""
    keys = (
        "n_label",
        "n_val",
        "n_unlabeled",
        "pretrain_epochs",
        "pretrain_batch",
        "finetune_epochs",
        "val_every",
    )
    a, b = ({k: d["settings"].get(k) for k in keys} for d in (doc, other))
    if a != b:
        raise ValueError(f"cannot merge runs of different settings: {a} vs {b}")
    runs = {m: list(rs) for m, rs in doc["runs"].items()}
    for m, rs in other["runs"].items():
        have = {r["seed"] for r in runs.setdefault(m, [])}
        runs[m] += [r for r in rs if r["seed"] not in have]
    order = [m for m in ARMS if m in runs]
    out = {
        **other,
        **doc,
        "runs": {m: runs[m] for m in order},
        "pretrain": {**other["pretrain"], **doc["pretrain"]},
    }
    out["settings"] = {**doc["settings"], "arms": order}
    return out


def _column(pre: dict[str, Any], key: str) -> list[float]:
    """A column of a pretraining run's results.csv (one value per epoch; empty when the run folder is gone)."""
    import csv

    path = Path(pre["save_dir"]) / "results.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]
    return [float(r[key]) for r in rows if r.get(key)]


def report(
    doc: dict[str, Any], results: Any, work: Path, prefix: str = "signal.pretrain", conclusion: str = ""
) -> None:
    """The figures into the benchmark Results (latest.json `signal.pretrain.*`, BENCHMARKS.md, the plot)."""
    from benchmarks.report import RESULTS, _slug
    from dinocache.compare import plot

    s, runs = doc["settings"], doc["runs"]
    pre = doc["pretrain"]
    pre_arms = {p["arm"] for p in pre.values()}
    for arm in [a for a in ARMS if runs.get(a) or a in pre_arms]:
        rs = runs.get(arm, [])
        row: dict[str, Any] = {"arm": arm, "n": len(rs)}
        for m in METRICS:  # an arm only pretrained (no fine-tuning run) says so
            row[m] = _ms([r.get(m, math.nan) for r in rs]) if rs else "not fine-tuned"
        for m in LOSSES:
            row[m] = _ms([r.get(m, math.nan) for r in rs]) if rs else ""
        for m in METRICS + LOSSES:
            row[f"d_{m}_vs_scratch [95% CI]"] = (
                "" if arm == "scratch" or not rs else _ci(paired(runs, arm, m))
            )
        # does the teacher's knowledge add to what any pretrained start gives (the random teacher), and does the
        # cache lose anything against the teacher run online (online - teacher)
        row["d_map50_vs_random [95% CI]"] = (
            _ci(paired(runs, arm, "map50", "random"))
            if rs and arm not in ("scratch", "random") and runs.get("random")
            else ""
        )
        row["d_map50_online_vs_cache [95% CI]"] = (
            _ci(paired(runs, "online", "map50", "teacher"))
            if arm == "online" and rs and runs.get("teacher")
            else ""
        )
        fits = [p["fit"] for k, p in pre.items() if p["arm"] == arm]
        for k in ("fit/cos", "fit/cos_shuf", "fit/gap", "fit/pcc", "fit/pcc_shuf"):
            vals = [f[k] for f in fits if k in f]
            row[k.split("/")[1]] = round(statistics.fmean(vals), 4) if vals else ""
        row["gap_per_epoch"] = " ".join(
            " ".join(f"{g:.3f}" for g in _column(p, "fit/gap")) for p in pre.values() if p["arm"] == arm
        )
        costs = [p["cpu_s_per_epoch"] for k, p in pre.items() if p["arm"] == arm and p.get("cpu_s_per_epoch")]
        row["pretrain_cpu_s_per_epoch"] = round(statistics.fmean(costs), 1) if costs else ""
        row["finetune_cpu_s"] = round(statistics.fmean(r["cpu_s"] for r in rs), 1) if rs else ""
        results.add(f"{prefix}.arms", **row)
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    n_pre = sorted({p["seed"] for p in pre.values()})
    results.note(
        f"{prefix}.arms",
        f"Pretraining on U = {s['n_unlabeled']} unlabeled demo images (seed {U_SEED}, a folder without labels; "
        f"`dinocache pretrain`, YOLO26-n OBB backbone + neck, {s['pretrain_epochs']} epochs, batch "
        f"{s['pretrain_batch']}, {IMGSZ} px, loss {s.get('pretrain_loss', 'cosine')}, linear projectors, the head's "
        f"inputs P3/P4/P5 distilled, fit on {fit_images(s)} held-out U images, best.pt = best held-out fit/gap), "
        f"then the SAME fine-tuning on L = {s['n_label']} labelled images (seed 1, {s['finetune_epochs']} epochs, "
        f"batch 4, every layer trained from epoch 1, no distillation, validation every {s['val_every']} epochs), "
        f"scored at the last epoch on the held-out set of {s['n_val']} images "
        f"(never tuned on). Fine-tuning seeds {seeds}; pretraining seeds {n_pre} "
        + (
            "(one pretraining per arm, fine-tuned with every seed: the CI holds the fine-tuning's seed variance, "
            "not the pretraining's). "
            if not s["pretrain_per_seed"]
            else "(one per fine-tuning seed). "
        )
        + "Arms: scratch = the model yaml; teacher = the knowledgeable demo teacher's cache (signal.teacher_probe); "
        "oracle = each cell's class coverage from U's hidden labels in the same cache (upper bound of the pipe); "
        "random = the same model untrained (`demo_teacher.random_base`); shuffled = the teacher cache, each image learning another's map; "
        "online = the teacher run on every augmented batch; views = the teacher's cache of K = 4 `augment` "
        "views of each image, pretrained on with no augmentation of its own for pretrain_epochs / K epochs. "
        "mean ± std over seeds; d_* = paired difference "
        "against scratch over the same seeds, mean [t-based 95 % CI] (d_map50_vs_random: against the random-teacher "
        "arm; d_map50_online_vs_cache: online - teacher); val_box_loss / val_cls_loss = the last "
        "validation's losses on the held-out set (lower is better; they separate students that detect nothing yet). fit = held-out feature fit after "
        "pretraining (mean cosine of the student's projection with its own image's map; cos_shuf: with another "
        "image's; gap = cos - cos_shuf; pcc = mean per-channel correlation over each image's cells, what the mse "
        "loss fits). CPU seconds on the shared 2-core machine (benchmarks/signal_pretrain.py)."
        + (" " + conclusion if conclusion else ""),
    )
    for arm, rs in runs.items():
        for r in rs:
            results.add(
                f"{prefix}.runs", arm=arm, seed=r["seed"], map50=signal_ab._r(r["map50"]),
                map50_95=signal_ab._r(r["map50_95"]), grade=signal_ab._r(r.get("grade")),
                val_box_loss=signal_ab._r(r["val_box_loss"]), val_cls_loss=signal_ab._r(r["val_cls_loss"]),
                wall_s=r["wall_s"], cpu_s=r["cpu_s"],
            )  # fmt: skip
    by_arm = {p["arm"]: p for p in pre.values()}
    if "teacher" in by_arm:
        base = by_arm["teacher"]
        for arm in ("teacher", "shuffled", "random", "oracle", "online"):
            if arm in by_arm and by_arm[arm].get("epoch_times"):
                p = by_arm[arm]
                results.add(
                    f"{prefix}.cost",
                    arm=arm,
                    teacher_source="online" if arm == "online" else "cache",
                    images_per_epoch=s["n_unlabeled"] - fit_images(s),
                    cpu_s_per_epoch=p["cpu_s_per_epoch"],
                    wall_s_per_epoch=p["wall_s_per_epoch"],
                    cpu_ratio_vs_cache=round(p["cpu_s_per_epoch"] / base["cpu_s_per_epoch"], 2),
                )
        results.note(
            f"{prefix}.cost",
            "Cost of one pretraining epoch over U (Ultralytics' training epoch: no start-up, no held-out fit; median "
            "over the epochs), CPU time of the process that ran it (process_time, one torch thread), the same "
            "student, images and settings (arms may run in concurrent processes: CPU time, not wall time, is the "
            "cost compared); online = the teacher "
            "(the demo ConvNeXt, 16/48/96 channels: a small teacher, so the ratio is a floor of what a ViT-B "
            "costs) run on every augmented batch. LightlyTrain's distillation of the same student with a "
            "ViT-B/16-shaped teacher, and dinocache's own cache and online rows with that teacher, are in `peers`.",
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        plot(runs, RESULTS / f"{_slug(prefix + '.arms')}.png")
    except Exception as e:  # a plot failure must not lose the numbers
        print(f"signal.pretrain: plot failed: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.signal_pretrain --work DIR [--quick] [--seeds N] [--arms a,b] [--report]`"""
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--seed0", type=int)
    ap.add_argument("--arms")
    ap.add_argument("--n-unlabeled", type=int)
    ap.add_argument("--n-label", type=int)
    ap.add_argument("--pretrain-epochs", type=int)
    ap.add_argument("--finetune-epochs", type=int)
    ap.add_argument("--val-every", type=int)
    ap.add_argument("--pretrain-only", action="store_true", help="pretrain the arms, no fine-tuning")
    ap.add_argument(
        "--pretrain-per-seed",
        action="store_true",
        help="one pretraining per fine-tuning seed (pretraining seed = fine-tuning seed): the CI then holds the "
        "pretraining's variance too",
    )
    ap.add_argument(
        "--pretrain-extra",
        type=json.loads,
        help="Ultralytics arguments of the pretraining as JSON, e.g. '{\"mosaic\": 0.0}' (kept in the settings)",
    )
    ap.add_argument("--section", default="signal.pretrain", help="--report: section prefix in latest.json")
    ap.add_argument("--report", action="store_true", help="write WORK/signal_pretrain.json into latest.json")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        help="--report: merge OTHER/signal_pretrain.json (same settings)",
    )
    ap.add_argument("--conclusion", default="", help="--report: what the figures show, appended to the note")
    ap.add_argument("--report-variants", action="store_true", help="write the --variant arms as --section")
    ap.add_argument("--variant", action="append", default=[], help="LABEL=WORK:ARM (first: the baseline)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    if a.report_variants:
        from benchmarks.report import Results

        res = Results()
        report_variants(a.variant, res, a.section, a.conclusion)
        res.write()
        return 0
    if a.report:
        from benchmarks.report import Results

        res = Results()
        doc = json.loads((work / "signal_pretrain.json").read_text())
        for other in a.also:
            doc = merge(doc, json.loads((Path(other) / "signal_pretrain.json").read_text()))
        report(doc, res, work, prefix=a.section, conclusion=a.conclusion)
        res.write()
        return 0
    run(
        work,
        a.quick,
        seeds=a.seeds,
        seed0=a.seed0,
        arms=a.arms.split(",") if a.arms else None,
        n_unlabeled=a.n_unlabeled,
        n_label=a.n_label,
        pretrain_epochs=a.pretrain_epochs,
        finetune_epochs=a.finetune_epochs,
        val_every=a.val_every,
        pretrain_only=a.pretrain_only or None,
        pretrain_per_seed=a.pretrain_per_seed or None,
        pretrain_extra=a.pretrain_extra,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
