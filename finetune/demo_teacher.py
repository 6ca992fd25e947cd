"""A knowledgeable tiny DINOv3 teacher, made with the project's own tools, built once and cached.

    dinocache make-demo-teacher [OUT] [--imgsz 128] [--n-train 2000] [--epochs 10] [--seed 0] [--rebuild]

Real DINOv3 weights can't be downloaded everywhere, and a random teacher teaches nothing. This builds one
whose patch features encode the demo's object classes, by the same route a user takes with real weights:

1. `demo-data` with its own seed (`data_seed`, default 1000: never the students' seeds 0..99) ->
   `n_train` + `n_val` labelled images at `imgsz`;
2. `make-tiny-teacher` -> a random DINOv3 ViT (`size`, default tiny: 64-d, 2 blocks, patch 16);
3. `finetune-teacher` with LoRA of rank = hidden size on every Linear layer (q/k/v/o and the MLP's
   up/down projections), class-map objective (a 1x1 head on the last hidden state): the base is random,
   so the knowledge has to be written into the weights, and a full-rank LoRA on all Linear layers can do
   what full fine-tuning of them does while keeping our adapter -> merge path (the head is dropped by the
   merge, so what the head needed must be linearly readable from the features themselves);
4. `merge-teacher` -> a plain DINOv3 folder (config.json + model.safetensors + preprocessor_config.json).

The folder also holds `demo_teacher.json` (the settings, the fine-tuning's val mIoU, the build time). It is
cached: with no OUT it goes to `$DINOCACHE_HOME/teachers/demo-<key>` (default `~/.cache/dinocache`),
key = hash of the settings, and a later call with the same settings returns it at once. Deterministic on
CPU: every step is seeded (same settings and thread count -> the same weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dinocache.core.config import ConfigError, build, require
from dinocache.core.errors import DinocacheError
from dinocache.core.fsutil import publish_dir

INFO_FILE = "demo_teacher.json"
# every Linear layer of a DINOv3 block
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


@dataclass
class DemoTeacherConfig:
    # output folder; empty = $DINOCACHE_HOME/teachers/demo-<settings hash> (reused when present)
    out: str = ""
    # square image size the teacher is trained at (use the size you precompute at; multiple of 16)
    imgsz: int = 128
    # generated labelled training images
    n_train: int = 2000
    # generated validation images (the fine-tuning's mIoU)
    n_val: int = 200
    # demo-data seed of the teacher's images (the students' data use other seeds)
    data_seed: int = 1000
    # object long side as a fraction of imgsz (demo-data's min_size/max_size); at 128 px twice demo-data's
    # defaults, so objects span as many 16-px patches as the default demo's do at 256 px
    min_size: float = 0.16
    max_size: float = 0.6
    # seed of the random base weights and of the fine-tuning
    seed: int = 0
    # base shape (dinocache make-tiny-teacher --size)
    size: str = "tiny"
    # fine-tuning epochs
    epochs: int = 10
    # fine-tuning batch size
    batch: int = 32
    # peak learning rate of the adapters (random base: far above the usual LoRA rate)
    lr: float = 5e-3
    # LoRA rank; 0 = the base's hidden size (full rank)
    lora_r: int = 0
    # build again even when the output folder exists
    rebuild: bool = False

    def validate(self) -> None:
        require(
            self.imgsz >= 32 and self.imgsz % 16 == 0, "imgsz", f"must be a multiple of 16, got {self.imgsz}"
        )
        require(self.n_train >= 8, "n_train", f"must be >= 8, got {self.n_train}")
        require(self.n_val >= 1, "n_val", f"must be >= 1, got {self.n_val}")
        require(self.data_seed >= 100, "data_seed", "must be >= 100 (0..99 are the students' data seeds)")
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.batch >= 1, "batch", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.lora_r >= 0, "lora_r", "must be >= 0")

    def key(self) -> str:
        """Hash of everything that changes the weights (not `out`/`rebuild`)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("out", "rebuild")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def cache_home() -> Path:
    return Path(os.environ.get("DINOCACHE_HOME") or Path.home() / ".cache" / "dinocache").expanduser()


def default_out(cfg: DemoTeacherConfig) -> Path:
    return cache_home() / "teachers" / f"demo-{cfg.key()}"


def _is_built(out: Path, cfg: DemoTeacherConfig) -> bool:
    info = out / INFO_FILE
    if not (info.is_file() and (out / "config.json").is_file() and (out / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(info.read_text()).get("key") == cfg.key()
    except json.JSONDecodeError:
        return False


def make_demo_teacher(cfg: DemoTeacherConfig | None = None, **values: Any) -> Path:
    """The knowledgeable teacher folder for `cfg` (or DemoTeacherConfig(**values)); builds it when missing."""
    if cfg is None:
        cfg = build(DemoTeacherConfig, values, "make_demo_teacher")
    out = Path(cfg.out).expanduser() if cfg.out else default_out(cfg)
    if not cfg.rebuild and _is_built(out, cfg):
        return out
    if out.exists() and any(out.iterdir()) and not cfg.rebuild and not (out / INFO_FILE).is_file():
        raise ConfigError(
            f"out: {out} exists, is not empty and is no demo teacher (pass --rebuild to replace it)"
        )
    return _build(cfg, out)


def _build(cfg: DemoTeacherConfig, out: Path) -> Path:
    from dinocache.datatools.demo_data import make_demo_dataset
    from dinocache.finetune.merge import merge_adapter
    from dinocache.finetune.train import FinetuneConfig, run
    from dinocache.teacher.tiny import SIZES, make_tiny_teacher

    require(cfg.size in SIZES, "size", f"{cfg.size!r} is not one of {list(SIZES)}")
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".demo-teacher-work-", dir=out.parent))
    try:
        data = make_demo_dataset(
            work / "data",
            n_train=cfg.n_train,
            n_val=cfg.n_val,
            imgsz=cfg.imgsz,
            seed=cfg.data_seed,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
        )
        base = make_tiny_teacher(work / "base", seed=cfg.seed, size=cfg.size)
        r = cfg.lora_r or int(SIZES[cfg.size]["hidden_size"])
        ft = build(
            FinetuneConfig,
            dict(
                data=str(data / "data.yaml"),
                dino_root=str(base),
                project=str(work),
                name="ft",
                imgsz=cfg.imgsz,
                epochs=cfg.epochs,
                batch=cfg.batch,
                lr=cfg.lr,
                warmup_epochs=0.5,
                lora_r=r,
                lora_alpha=r,  # scale 1
                lora_dropout=0.0,
                lora_target_modules=ALL_LINEAR,
                best_metric="miou",
                patience=0,
                device="cpu",  # tiny: the GPU would not pay off; and CPU keeps it bit-reproducible
                workers=0,
                seed=cfg.seed,
                tensorboard=False,
            ),
            "make_demo_teacher",
        )
        meta = run(ft)
        if meta.get("failed"):
            raise RuntimeError(f"make-demo-teacher: fine-tuning failed: {meta.get('message')}")
        merged = merge_adapter(ft.out_dir, work / "merged")
        best = meta.get("best") or {}
        info = {
            "key": cfg.key(),
            "settings": {k: v for k, v in asdict(cfg).items() if k not in ("out", "rebuild")},
            "method": f"LoRA r={r} alpha={r} on {ALL_LINEAR}, merged (merge-teacher)",
            "finetune_val_miou": best.get("value"),
            "finetune_best_epoch": best.get("epoch"),
            "history": meta.get("history"),
            "build_s": round(time.perf_counter() - t0, 1),
        }
        (merged / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        (merged / "README.md").write_text(
            "Knowledgeable tiny DINOv3 made by `dinocache make-demo-teacher` (fine-tuned on generated\n"
            f"demo-data, seed {cfg.data_seed}); see {INFO_FILE}. For real work use real DINOv3 weights.\n"
        )
        if out.exists():
            shutil.rmtree(out)
        publish_dir(merged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """`dinocache make-demo-teacher [OUT] [--imgsz 128] [--n-train 2000] [--epochs 10] [--seed 0] [--rebuild]`"""
    ap = argparse.ArgumentParser(prog="dinocache make-demo-teacher", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "out", nargs="?", default="", help="output folder (default: the per-settings cache folder)"
    )
    ap.add_argument("--imgsz", default="128")
    ap.add_argument("--n-train", default="2000")
    ap.add_argument("--n-val", default="200")
    ap.add_argument("--data-seed", default="1000")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--epochs", default="10")
    ap.add_argument("--lr", default="5e-3")
    ap.add_argument("--min-size", default="0.16")
    ap.add_argument("--max-size", default="0.6")
    ap.add_argument("--rebuild", action="store_true", help="build again even when OUT holds one")
    args = ap.parse_args(argv)
    try:
        cfg = build(
            DemoTeacherConfig,
            {
                "out": args.out,
                "imgsz": args.imgsz,
                "n_train": args.n_train,
                "n_val": args.n_val,
                "data_seed": args.data_seed,
                "seed": args.seed,
                "size": args.size,
                "epochs": args.epochs,
                "lr": args.lr,
                "min_size": args.min_size,
                "max_size": args.max_size,
                "rebuild": args.rebuild,
            },
            "command line",
        )
        out = make_demo_teacher(cfg)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = json.loads((out / INFO_FILE).read_text())
    print(
        f"make-demo-teacher: {out} (fine-tuning val mIoU {info.get('finetune_val_miou')}, built in "
        f"{info.get('build_s')} s); use dino_root={out}"
    )
    print(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
