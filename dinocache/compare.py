"""Does distillation help on YOUR data and teacher? One command trains the A/B over seeds and tabulates it.

    dinocache compare --config config.json [modes=none,cache,online] [seeds=3] [epochs=N] [out=DIR]
                      [train.KEY=VALUE ...] [pretrain.KEY=VALUE ...]

Every run uses config.json's "train" section (plus `train.KEY=VALUE` overrides) and differs from the
others only in the mode and the seed:

- `none`            no distillation (teacher_source=none)
- `cache`           cached maps, warped with each augmented image (the default cache mode)
- `online`          the teacher runs on each augmented batch (same augmentation as `cache`)
- `cache-off`       cached maps with geometric augmentation off (distill_geometric_aug=off)
- `cache-shuffled`  control: each image gets ANOTHER image's cached map (must not help)
- `cache-flips`     `cache` with the teacher's map of each flipped image read from the cache instead of
                    the mirrored map (distill_cache_flips=on; the cache, or `flips_cache`, must be made with
                    precompute cache_flips=true)
- `pretrain`        `dinocache pretrain` first (config.json's "pretrain" section plus `pretrain.KEY=VALUE`:
                    the cached maps of your unlabeled images, distillation alone, the same seed and student),
                    then the same training as `none` starting from its weights/best.pt (stage_a_freeze=0,
                    so it differs from `none` only in the start weights)
- `pretrain-shuffled`  control: the same, pretrained on shuffled maps (each image learns another's map)

Runs go seed by seed, modes alternating (so a machine that slows down hurts every mode alike), into
OUT/runs/{model}/runs/{mode}-s{seed}/. Scores are the LAST epoch's (no best-epoch pick on the evaluation
set): Ultralytics' mAP50 / mAP50-95 on the data's val split (results.csv) and the project's grade of
last.pt on the same split. OUT gets compare.md, compare.csv (one row per run), compare.json (runs,
per-mode mean/std, per-epoch curves) and val_map.png (val mAP50-95 per epoch, mean +/- std per mode),
rewritten after every run. Default OUT: {artifacts_root}/compare/{YYYYmmdd-HHMMSS}.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from dinocache.core.config import (
    Config,
    ConfigError,
    build,
    check_fields,
    distinct,
    parse_overrides,
    read_section,
    rule,
    to_dict,
)
from dinocache.core.errors import DinocacheError

# mode -> TrainConfig values that make it
MODES: dict[str, dict[str, Any]] = {
    "none": {"teacher_source": "none"},
    "cache": {"teacher_source": "cache", "distill_geometric_aug": "warp"},
    "online": {"teacher_source": "online", "distill_geometric_aug": "warp"},
    "cache-off": {"teacher_source": "cache", "distill_geometric_aug": "off"},
    "cache-shuffled": {
        "teacher_source": "cache",
        "distill_geometric_aug": "warp",
        "distill_shuffle_maps": True,
    },
    "cache-flips": {"teacher_source": "cache", "distill_geometric_aug": "warp", "distill_cache_flips": "on"},
    # fine-tuning after pretraining: plain training (no distillation), nothing frozen; model = the pretrain's
    "pretrain": {"teacher_source": "none", "stage_a_freeze": 0},
    "pretrain-shuffled": {"teacher_source": "none", "stage_a_freeze": 0},
}
# pretrain mode -> PretrainConfig values that make its pretraining
PRETRAIN_MODES: dict[str, dict[str, Any]] = {"pretrain": {}, "pretrain-shuffled": {"shuffle": True}}
SCORES = ("map50", "map50_95", "grade", "val_box_loss", "val_cls_loss")


@dataclass
class CompareConfig(Config):
    # modes to train, in this order within each seed (see the module doc)
    modes: Annotated[
        list[str],
        rule(bool, "name at least one mode"),
        rule(
            lambda ms: all(m in MODES for m in ms),
            lambda ms: f"{[m for m in ms if m not in MODES]} are not modes; choose from {list(MODES)}",
        ),
        distinct("modes"),
    ] = field(default_factory=lambda: ["none", "cache", "online"])
    # number of seeds per mode (seed0, seed0+1, ...)
    seeds: Annotated[int, Field(ge=1)] = 3
    # first seed
    seed0: Annotated[int, Field(ge=0)] = 0
    # epochs per run; 0 = the train section's
    epochs: Annotated[int, Field(ge=0)] = 0
    # output folder; empty = {artifacts_root}/compare/{timestamp}
    out: str = ""
    # validate every N epochs (and always the last); the curves have a point per validation. Ultralytics'
    # per-epoch validation of a small student on a >= 200-image set costs more than its training epoch
    val_every: Annotated[int, Field(ge=1)] = 1
    # also grade last.pt of each run with the project's geometric grade (eval_* keys of the train section)
    grade: bool = True
    # cache-flips mode: a cache of the same images made with `precompute ... cache_flips=true`; empty = the
    # train section's cache (which must then hold flipped views)
    flips_cache: str = ""
    # pretrain modes: PretrainConfig keys (data and cache of the unlabeled images, epochs, ...) over
    # config.json's "pretrain" section; the model and seed are each run's
    pretrain: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)  # every construction path checks, not only the config loader


def pretrain_config(train_values: dict[str, Any], mode: str, seed: int, cfg: CompareConfig, out: Path) -> Any:
    """The PretrainConfig of a pretrain mode's run: the pretrain values, the train section's student and
    device, then the mode, seed, name and folder."""
    from dinocache.train.pretrain import PretrainConfig

    # the train section's student, device and (unless the pretrain values name others) images and teacher
    keys = (
        "model",
        "device",
        "workers",
        "imgsz",
        "data",
        "cache",
        "dino_root",
        "dino_layer",
        "teacher_family",
    )
    values = {k: v for k, v in train_values.items() if k in keys}
    values.update(cfg.pretrain)
    values.update(PRETRAIN_MODES[mode], seed=seed, name=f"{mode}-s{seed}", resume=False)
    values["artifacts_root"] = str(out / "runs")
    return build(PretrainConfig, values, f"compare mode {mode}: pretrain")


def pretrain_one(pcfg: Any) -> dict[str, Any]:
    """Pretrain one run; its weights, last feature fit and cost."""
    from dinocache.train.pretrain import Pretrain

    wall0, cpu0 = time.perf_counter(), time.process_time()
    res = Pretrain(pcfg).run()
    return {
        "pretrained": str(res.best),
        **{f"pretrain_{k.split('/')[1]}": v for k, v in res.fit.items() if k in ("fit/cos", "fit/cos_shuf")},
        "pretrain_wall_s": round(time.perf_counter() - wall0, 1),
        "pretrain_cpu_s": round(time.process_time() - cpu0, 1),
    }


def run_config(
    train_values: dict[str, Any], mode: str, seed: int, cfg: CompareConfig, out: Path, model: str = ""
) -> Any:
    """The TrainConfig of one run: the user's train values, then the mode, seed, name and folder (`model`:
    a pretrain mode's pretrained weights)."""
    from dinocache.train.config import TrainConfig

    values = {**train_values, **MODES[mode], "seed": seed, "name": f"{mode}-s{seed}"}
    if model:
        values["model"] = model
    if mode == "cache-flips" and cfg.flips_cache:
        values["cache"] = cfg.flips_cache
    values["artifacts_root"] = str(out / "runs")
    values["resume"] = False
    if cfg.epochs:
        values["epochs"] = cfg.epochs
    return build(TrainConfig, values, f"compare mode {mode}")


# trainer.metrics keys (validation) -> our names
VAL_METRICS = {
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "val/box_loss": "val_box_loss",
    "val/cls_loss": "val_cls_loss",
}
CURVE_ATTR = "_compare_curves"


def _val_toggle(trainer: Any) -> None:
    """on_train_epoch_end: validate this epoch only every `val_every` epochs (the last always validates)."""
    k = int(getattr(trainer, "_compare_val_every", 1))
    trainer.args.val = (trainer.epoch + 1) % k == 0


def _record_val(trainer: Any) -> None:
    """on_fit_epoch_end: keep this epoch's validation metrics and train losses (only when it validated)."""
    final = trainer.epoch + 1 >= trainer.epochs
    if trainer.epoch + 1 > trainer.epochs:  # final_eval re-fires this with epoch + 1 (best.pt's metrics)
        return
    if not (trainer.args.val or final) or not trainer.metrics:
        return
    c = getattr(trainer, CURVE_ATTR, None)
    if c is None:
        c = {"epoch": [], **{v: [] for v in VAL_METRICS.values()}, "distill_loss": []}
        setattr(trainer, CURVE_ATTR, c)
    c["epoch"].append(trainer.epoch + 1)
    for k, v in VAL_METRICS.items():
        c[v].append(float(trainer.metrics.get(k, math.nan)))
    from dinocache.train.model import DISTILL_KEY

    items = trainer.label_loss_items(trainer.tloss, prefix="train")
    c["distill_loss"].append(float(items.get(f"train/{DISTILL_KEY}", math.nan)))


def _set_val_every(k: int):
    def on_train_start(trainer: Any) -> None:
        trainer._compare_val_every = k

    return on_train_start


def train_one(tcfg: Any, grade: bool, val_every: int = 1) -> dict[str, Any]:
    """Train one run; its scores (last epoch), curves (every validation) and cost."""
    from dinocache.train.run import train

    wall0, cpu0 = time.perf_counter(), time.process_time()
    callbacks = {"on_train_epoch_end": [_val_toggle], "on_fit_epoch_end": [_record_val]}
    if val_every > 1:
        callbacks["on_train_start"] = [_set_val_every(val_every)]
    trainer = train(tcfg, callbacks=callbacks)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    save_dir = Path(trainer.save_dir)
    curves = getattr(trainer, CURVE_ATTR, None) or {"epoch": [], **{v: [] for v in VAL_METRICS.values()}}
    curves.setdefault("distill_loss", [])
    n_img = len(trainer.train_loader.dataset)
    row: dict[str, Any] = {
        "run": tcfg.name,
        "seed": tcfg.seed,
        "epochs": tcfg.epochs,
        "train_images": n_img,
        **{v: (curves[v][-1] if curves[v] else math.nan) for v in VAL_METRICS.values()},
        "distill_loss_last": curves["distill_loss"][-1] if curves["distill_loss"] else math.nan,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        # cost per training image seen (training + the per-epoch validation, as a user pays it)
        "s_per_img": wall / max(1, n_img * tcfg.epochs),
        "cpu_s_per_img": cpu / max(1, n_img * tcfg.epochs),
        "save_dir": str(save_dir),
    }
    if grade:
        from dinocache.grade.evaluate import evaluate

        res = evaluate(
            save_dir / "weights" / "last.pt",
            tcfg.data_yaml,
            tcfg.imgsz,
            conf_thr=tcfg.eval_conf_threshold,
            iou_thr=tcfg.eval_iou_threshold,
            device=str(trainer.device),
            batch=max(1, tcfg.batch),
        )
        row["grade"] = float(res.metrics.get("grade") or 0.0)
    row["curves"] = curves
    return row


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per mode: n, mean and std of each score, mean cost; the delta of each mean against `none`."""
    rows = []
    base = (
        {s: _mean_std([r.get(s, math.nan) for r in runs["none"]])[0] for s in SCORES}
        if runs.get("none")
        else {}
    )
    for mode, rs in runs.items():
        if not rs:
            continue
        row: dict[str, Any] = {"mode": mode, "n": len(rs), "seeds": [r["seed"] for r in rs]}
        for s in SCORES:
            m, sd = _mean_std([r.get(s, math.nan) for r in rs])
            row[f"{s}_mean"], row[f"{s}_std"] = m, sd
            if base and mode != "none":
                row[f"{s}_delta_vs_none"] = m - base[s]
        row["s_per_img"] = statistics.fmean(r["s_per_img"] for r in rs)
        row["cpu_s_per_img"] = statistics.fmean(r["cpu_s_per_img"] for r in rs)
        row["distill_loss_last"] = _mean_std([r["distill_loss_last"] for r in rs])[0]
        rows.append(row)
    return rows


def _pm(m: float, s: float) -> str:
    return "n/a" if math.isnan(m) else f"{m:.4f} ± {s:.4f}"


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# dinocache compare: {meta['epochs']} epochs, seeds {meta['seeds']}, imgsz {meta['imgsz']}",
        "",
        f"Train data {meta['data']} ({meta['train_images']} training images), evaluated on its val split "
        "(last epoch, no best-epoch pick). mean ± std over seeds; Δ = difference of the means against none.",
        "",
        "| mode | n | mAP50 | mAP50-95 | grade | Δ mAP50-95 | val cls loss | val box loss | final distill loss "
        "| s/img (wall) | CPU s/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        d = r.get("map50_95_delta_vs_none")
        lines.append(
            f"| {r['mode']} | {r['n']} | {_pm(r['map50_mean'], r['map50_std'])} | "
            f"{_pm(r['map50_95_mean'], r['map50_95_std'])} | {_pm(r['grade_mean'], r['grade_std'])} | "
            f"{'' if d is None else f'{d:+.4f}'} | {_pm(r['val_cls_loss_mean'], r['val_cls_loss_std'])} | "
            f"{_pm(r['val_box_loss_mean'], r['val_box_loss_std'])} | {r['distill_loss_last']:.4f} | {r['s_per_img']:.4f} | "
            f"{r['cpu_s_per_img']:.4f} |"
        )
    return "\n".join(lines) + "\n\n![val mAP50-95 per epoch](val_map.png)\n"


def plot(runs: dict[str, list[dict[str, Any]]], path: Path, metric: str = "map50_95") -> None:
    """Val `metric` per epoch: mean over seeds per mode, shaded +/- std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode, rs in runs.items():
        if not rs:
            continue
        n = min(len(r["curves"][metric]) for r in rs)
        if n == 0:
            continue
        y = np.array([r["curves"][metric][:n] for r in rs], dtype=float)
        x = np.array(rs[0]["curves"]["epoch"][:n])
        m, s = np.nanmean(y, 0), np.nanstd(y, 0)
        ax.plot(x, m, marker="o", ms=3, label=f"{mode} (n={len(rs)})")
        ax.fill_between(x, m - s, m + s, alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"val {metric.replace('_', '-').replace('map', 'mAP')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(
    out: Path, runs: dict[str, list[dict[str, Any]]], meta: dict[str, Any]
) -> list[dict[str, Any]]:
    summary = summarise(runs)
    flat = [
        {"mode": m, **{k: v for k, v in r.items() if k != "curves"}} for m, rs in runs.items() for r in rs
    ]
    cols: list[str] = []
    for r in flat:
        cols += [k for k in r if k not in cols]
    tmp = out / "compare.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(flat)
    tmp.replace(out / "compare.csv")
    doc = {"meta": meta, "summary": summary, "runs": runs}
    (out / "compare.json.tmp").write_text(json.dumps(doc, indent=2, default=str))
    (out / "compare.json.tmp").replace(out / "compare.json")
    (out / "compare.md").write_text(markdown(summary, meta))
    try:
        plot(runs, out / "val_map.png")
    except Exception as e:  # a plot failure must not lose the numbers
        print(f"compare: plot failed: {e}", file=sys.stderr)
    return summary


def preflight_all(train_values: dict[str, Any], cfg: CompareConfig, out: Path) -> list[Any]:
    """Build and preflight one config per mode before any training: a bad cache fails in seconds."""
    from dinocache.train.preflight import preflight

    cfgs = []
    for mode in cfg.modes:
        tcfg = run_config(train_values, mode, cfg.seed0, cfg, out)
        preflight(tcfg)
        if mode in PRETRAIN_MODES:
            pretrain_config(train_values, mode, cfg.seed0, cfg, out)  # its keys, checked before any run
        cfgs.append(tcfg)
    return cfgs


def compare(train_values: dict[str, Any], cfg: CompareConfig) -> Path:
    """Train every (seed, mode) run and write the tables; returns the output folder."""
    from dinocache.train.config import TrainConfig

    base = build(TrainConfig, dict(train_values), "compare: train section")
    out = Path(cfg.out) if cfg.out else Path(base.artifacts_root) / "compare" / time.strftime("%Y%m%d-%H%M%S")
    out = out.expanduser().resolve()
    if (out / "compare.json").exists():
        raise ConfigError(f"out: {out} already holds a comparison; pick another out=")
    first = preflight_all(train_values, cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.seeds))
    meta = {
        "modes": cfg.modes,
        "seeds": seeds,
        "epochs": first[0].epochs,
        "imgsz": first[0].imgsz,
        "data": str(first[0].data_yaml),
        "dino_root": first[0].dino_root,
        "cache": first[0].cache,
        "train_images": None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.modes}
    for seed in seeds:
        for mode in cfg.modes:
            pre: dict[str, Any] = {}
            if mode in PRETRAIN_MODES:
                pcfg = pretrain_config(train_values, mode, seed, cfg, out)
                print(f"\n==> compare: {mode}, seed {seed}: pretraining ({pcfg.epochs} epochs)", flush=True)
                pre = pretrain_one(pcfg)
            tcfg = run_config(train_values, mode, seed, cfg, out, model=pre.get("pretrained", ""))
            print(f"\n==> compare: {mode}, seed {seed} ({tcfg.epochs} epochs)", flush=True)
            row = {**train_one(tcfg, cfg.grade, cfg.val_every), **pre}
            runs[mode].append(row)
            meta["train_images"] = row["train_images"]
            summary = write_outputs(out, runs, meta)
            print(
                f"==> compare: {mode} seed {seed}: mAP50 {row['map50']:.4f} mAP50-95 {row['map50_95']:.4f}"
                f"{' grade ' + format(row['grade'], '.4f') if 'grade' in row else ''} "
                f"({row['wall_s']:.0f} s)",
                flush=True,
            )
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    summary = write_outputs(out, runs, meta)
    print("\n" + markdown(summary, meta))
    return out


class Compare:
    """Python API, the same shape as `Precompute` and `DinoOBBTrainer`: a config, a device, one call.

        Compare(CompareConfig(modes=["none", "cache"], seeds=3), TrainConfig(...), device="cuda:0").run()

    `train` is the base training config of every run (a TrainConfig or a mapping of train keys, like
    config.json's "train" section); `run()` returns the output folder."""

    def __init__(self, cfg: CompareConfig, train: Any = None, device: str | None = None) -> None:
        self.cfg = cfg
        values = to_dict(train) if dataclasses.is_dataclass(train) else dict(train or {})
        if device is not None:
            values["device"] = str(device)
        self.train_values = values

    def run(self) -> Path:
        return compare(self.train_values, self.cfg)


def main(argv: list[str] | None = None) -> int:
    """`dinocache compare --config config.json [modes=none,cache,online] [seeds=3] [epochs=N] [out=DIR] [train.KEY=V]`"""
    ap = argparse.ArgumentParser(prog="dinocache compare", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.json", help="config.json (its 'train' section)")
    ap.add_argument(
        "options", nargs="*", help="modes=a,b seeds=N epochs=N out=DIR grade=false train.KEY=VALUE"
    )
    args = ap.parse_args(argv)

    try:
        opts = parse_overrides(args.options)
        train_over = {k[len("train.") :]: v for k, v in opts.items() if k.startswith("train.")}
        pre_over = {k[len("pretrain.") :]: v for k, v in opts.items() if k.startswith("pretrain.")}
        ours: dict[str, Any] = {
            k: v for k, v in opts.items() if not k.startswith("train.") and not k.startswith("pretrain.")
        }
        if "modes" in ours:
            ours["modes"] = [m.strip() for m in str(ours["modes"]).strip("[]").split(",") if m.strip()]
        cfg = build(CompareConfig, ours, "command line")
        if set(cfg.modes) & set(PRETRAIN_MODES):
            from dinocache.train.pretrain import PretrainConfig

            from dinocache.core.config import field_names, parse_value

            pre = dict(read_section(args.config, "pretrain", field_names(PretrainConfig)))
            pre.update({k: parse_value(v, k) for k, v in pre_over.items()})
            cfg = dataclasses.replace(cfg, pretrain={**pre, **cfg.pretrain})
        train_values = dict(read_section(args.config, "train"))
        if train_over:
            from dinocache.train.config import TrainConfig

            parsed = build(TrainConfig, {**train_values, **train_over}, "command line")
            train_values.update({k: getattr(parsed, k) for k in train_over})
        out = compare(train_values, cfg)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"dinocache compare: table, CSV, JSON and plot in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
