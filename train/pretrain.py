"""`dinocache pretrain`: distil the cached teacher maps of unlabeled images into a student's backbone and neck.

    dinocache pretrain --config config.json [key=value ...]      (section "pretrain"; `just pretrain`)
    Pretrain(PretrainConfig(data="unlabeled/", cache="u.zarr", epochs=100)).run()

The images are those `dinocache precompute` cached (a folder of images, a .txt list, or a dataset yaml whose
labels are ignored); a few of them, evenly spaced, are held out to measure the feature fit every epoch. The
run is the detector run's trainer in distillation-only mode (train/pretrain_trainer.py): Ultralytics' loop,
augmentation with the teacher map warped along (mosaic, affine, flips), EMA, AMP, results.csv/png, exact
resume. Its weights/best.pt is a plain Ultralytics model (projectors dropped, head untrained) that
`dinocache train model=...` and `YOLO(path).train(...)` start from, with or without dinocache installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, NonNegativeInt

from dinocache.core.config import Config, ConfigError, build, check_fields, distinct, require, to_dict

PRETRAIN_ARGS_FILE = "pretrain_args.yaml"
# a pretrain run folder's lock file: one pretraining writes there at a time
RUN_LOCK = ".lock"


@dataclass
class PretrainConfig(Config):
    # unlabeled images, as `dinocache precompute` cached them: a folder of images, a .txt list of images, or
    # a dataset yaml (its `split`; labels are ignored)
    data: str = "dataset/augmented/data.yaml"
    # split of a dataset yaml `data` to read (ignored for a folder or a list)
    split: str = "train"
    # the cache `dinocache precompute` wrote for these images (teacher_source=online: its PCA basis, if any)
    cache: str = "artifacts/cache/features.zarr"
    # teacher folder: cache mode checks the cache was made with it; online mode runs it
    dino_root: str = "dinov3"
    # teacher family (online mode): auto or one of teacher/registry.py FAMILIES
    teacher_family: str = "auto"
    # teacher layer; must match the cache's
    dino_layer: int = -1
    # student: any Ultralytics detect or OBB model yaml (random start) or .pt checkpoint
    model: str = "yolo26n-obb.yaml"
    # student layers distilled, each with its own projector; empty = the detection head's inputs (the neck's
    # P3/P4/P5 outputs: 16, 19, 22 for YOLO26)
    layers: Annotated[list[NonNegativeInt], distinct("layers")] = field(default_factory=list)
    # D: teacher channels distilled (the first D PCA components of the cache)
    channels: Annotated[int, Field(ge=1)] = 32
    # projector per layer: linear (1x1 conv), conv (3x3 conv) or mlp (1x1 conv -> GELU -> 1x1 conv)
    projector: Literal["linear", "conv", "mlp"] = "linear"
    # per-cell distance: mse (per-channel standardised MSE, as PKD: each image's channels standardised over its
    # cells, so the map every image shares (background) cannot be the whole fit) or cosine (1 - cos); mse is
    # the default because cosine fitted only the shared background of oracle maps (BENCHMARKS.md pretrain.fit)
    loss: Literal["cosine", "mse"] = "mse"
    # where the teacher maps come from: cache (read and warped with each augmented image) or online (the
    # teacher runs on every augmented batch: the A/B and cost reference)
    teacher_source: Literal["cache", "online"] = "cache"
    # control arm (cache mode): every image learns ANOTHER image's map (a seeded derangement); it must not help
    shuffle: bool = False
    # images held out (evenly spaced over the list, never trained on) to measure the feature fit each epoch;
    # at most a fifth of the images
    fit_images: Annotated[int, Field(ge=1)] = 64
    # pretraining epochs
    epochs: int = 100
    # square image side; must equal the cache's imgsz
    imgsz: int = 512
    # images per batch (total over the GPUs with device=0,1)
    batch: int | float = 16
    # dataloader workers (Ultralytics forces 0 on CPU)
    workers: int = 8
    # auto, cpu, 0, cuda:0, or 0,1 for several GPUs (Ultralytics' DDP)
    device: str = "auto"
    # Ultralytics optimizer name
    optimizer: str = "AdamW"
    # initial learning rate
    lr0: float = 0.002
    # final learning rate as a fraction of lr0
    lrf: float = 0.01
    # optimizer weight decay
    weight_decay: float = 0.0005
    # nominal batch size (accumulate = round(nbs / batch)); tests use nbs = batch
    nbs: int = 64
    # learning-rate warmup epochs
    warmup_epochs: float = 1.0
    # mixed precision on CUDA
    amp: bool = True
    # random seed (augmentation, initialisation, shuffled maps)
    seed: int = 0
    # warp: mosaic/affine/flips on, each teacher map warped with its image; off: pixel-moving augmentation off
    geometric_aug: Literal["warp", "off"] = "warp"
    # warp mode: a cell is distilled when at least this share of its pixels comes from one source image
    valid_threshold: float = 0.5
    # horizontal flips read the cache's flipped views: auto (when it has them), on (required), off (mirror)
    cache_flips: Literal["auto", "on", "off"] = "auto"
    # runs go to {artifacts_root}/{model stem}/pretrain/{name}/
    artifacts_root: str = "artifacts"
    # run id; empty = a timestamp
    name: str = ""
    # continue the run `name` (or the newest pretrain run of this model) from weights/resume.pt
    resume: bool = False
    # other Ultralytics training arguments (mosaic, fliplr, hsv_v, close_mosaic, patience, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    passthrough_field = "extra"

    @classmethod
    def passthrough_keys(cls) -> set[str]:
        from dinocache.train.config import TrainConfig

        return TrainConfig.passthrough_keys()

    def __post_init__(self) -> None:
        for key in ("data", "cache", "dino_root", "model", "artifacts_root", "name"):
            if isinstance(getattr(self, key), Path):
                setattr(self, key, str(getattr(self, key)))
        check_fields(self)
        self.validate()

    def validate(self) -> None:
        require(
            not self.shuffle or self.teacher_source == "cache",
            "shuffle",
            "shuffles cached maps: needs teacher_source=cache",
        )
        # the remaining checks are the detector run's (epochs, imgsz, batch, device, extra, ...)
        self.train_config(Path("data.yaml"), self.layers or [0])

    @property
    def model_key(self) -> str:
        return Path(self.model).stem

    def train_config(self, data_yaml: Path, layers: list[int]) -> Any:
        """The detector run's TrainConfig of this pretraining: distillation alone at weight 1 from epoch 1,
        every cell weighted alike, no stages, no grading or viz."""
        from dinocache.train.config import TrainConfig

        try:
            return TrainConfig(
                epochs=self.epochs,
                imgsz=self.imgsz,
                batch=self.batch,
                workers=self.workers,
                device=self.device,
                optimizer=self.optimizer,
                lr0=self.lr0,
                lrf=self.lrf,
                weight_decay=self.weight_decay,
                nbs=self.nbs,
                warmup_epochs=self.warmup_epochs,
                amp=self.amp,
                dino_root=self.dino_root,
                teacher_family=self.teacher_family,
                dino_layer=self.dino_layer,
                dino_distill_warmup_epochs=0,
                dino_distill_layers=list(layers),
                dino_distill_channels=self.channels,
                dino_distill_projector=self.projector,
                dino_distill_loss=self.loss,
                dino_distill_object_weight=1.0,
                dino_distill_background_weight=1.0,
                stage_a_ratio=0.0,
                stage_a_freeze=0,
                stage_a_distill_weight=1.0,
                stage_b_distill_weight=1.0,
                dino_viz_enabled=False,
                wandb_enabled=False,
                eval_enabled=False,
                # weights/resume.pt stays after the last epoch: a pretraining is continued with more epochs
                keep_resume=True,
                data=str(data_yaml),
                cache=self.cache,
                artifacts_root=self.artifacts_root,
                model=self.model,
                name=self.name,
                seed=self.seed,
                teacher_source=self.teacher_source,
                distill_geometric_aug=self.geometric_aug,
                distill_valid_threshold=self.valid_threshold,
                distill_shuffle_maps=self.shuffle,
                distill_cache_flips=self.cache_flips,
                extra=dict(self.extra),
            )
        except ConfigError as e:  # name our keys, not the TrainConfig's
            rename = {
                "dino_distill_channels": "channels",
                "dino_distill_layers": "layers",
                "distill_valid_threshold": "valid_threshold",
                "distill_cache_flips": "cache_flips",
            }
            msg = str(e)
            for a, b in rename.items():
                msg = msg.replace(a, b)
            raise ConfigError(msg) from None


@dataclass
class PretrainResult:
    """Where a finished pretraining left its outputs."""

    # the run folder (results.csv, results.png, args, data.yaml with the held-out split)
    save_dir: Path
    # weights/best.pt: the best feature fit on the held-out images; start fine-tuning from it
    best: Path
    # weights/last.pt
    last: Path
    # the last epoch's feature fit (fit/cos, fit/cos_shuf, fit/gap, per layer)
    fit: dict[str, float]


def runs_root(cfg: PretrainConfig) -> Path:
    return Path(cfg.artifacts_root).expanduser().resolve() / cfg.model_key / "pretrain"


def head_inputs(model: str) -> list[int]:
    """The layers the detection head reads (the neck's P3/P4/P5 outputs) of a model yaml or .pt."""
    if Path(model).suffix == ".pt":
        from ultralytics.nn.tasks import load_checkpoint

        f = load_checkpoint(model)[0].model[-1].f
    else:
        from ultralytics.nn.tasks import yaml_model_load

        d = yaml_model_load(model)
        f = d["head"][-1][0]
        if f == -1 or f == [-1]:
            f = len(d["backbone"]) + len(d["head"]) - 2
    return sorted(f) if isinstance(f, list) else [int(f)]


def split_holdout(files: list[Path], n_fit: int) -> tuple[list[Path], list[Path]]:
    """(training images, held-out images): n_fit images evenly spaced over the sorted list are held out."""
    n = len(files)
    idx = sorted(set(np.linspace(0, n - 1, n_fit).round().astype(int).tolist()))
    held = set(idx)
    return [f for i, f in enumerate(files) if i not in held], [files[i] for i in idx]


def write_run_data(cfg: PretrainConfig, save_dir: Path) -> Path:
    """The run's data.yaml: the cached images minus the held-out ones as `train`, those as `val` (image lists
    in the run folder; the keys stay relative to the images' own root, so they find the cache's rows)."""
    import yaml
    from dinocache.train.pretrain_trainer import FIT_LABELS_KEY

    from dinocache.core.data import DataError, find_data_yaml, is_dataset_yaml, list_images, load_data_yaml

    root, files = list_images(cfg.data, cfg.split)
    if len(files) < 2:
        raise DataError(f"{cfg.data}: {len(files)} image(s); pretraining needs at least 2 (one held out)")
    n_fit = min(cfg.fit_images, max(1, len(files) // 5))
    train, held = split_holdout(files, n_fit)
    p = Path(cfg.data).expanduser()
    yaml_src = p.suffix in (".yaml", ".yml") or (
        p.is_dir() and _dataset_dir(p, find_data_yaml, is_dataset_yaml)
    )
    names = load_data_yaml(p, require_val=False)["names"] if yaml_src else {0: "object"}
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "train.txt").write_text("".join(f"{f}\n" for f in train))
    (save_dir / "val.txt").write_text("".join(f"{f}\n" for f in held))
    data = {
        "path": str(root),
        "train": str(save_dir / "train.txt"),
        "val": str(save_dir / "val.txt"),
        "names": {int(k): str(v) for k, v in dict(names).items()},
        # held-out boxes (a dataset yaml's labels) split the fit into object and background cells
        FIT_LABELS_KEY: bool(yaml_src),
    }
    out = save_dir / "data.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _dataset_dir(p: Path, find_data_yaml: Any, is_dataset_yaml: Any) -> bool:
    try:
        return is_dataset_yaml(find_data_yaml(p))
    except Exception:
        return False


def find_resume(cfg: PretrainConfig) -> tuple[PretrainConfig, dict, Path]:
    """(saved config with this call's device/workers, resume state, run folder) of the run to continue."""
    import torch
    import yaml
    from dinocache.train.context import RESUME_FILE, TrainError

    if cfg.name:
        d = runs_root(cfg) / cfg.name
        if not (d / "weights" / RESUME_FILE).exists():
            raise TrainError(
                f"resume: {d / 'weights' / RESUME_FILE} does not exist (pretrain run '{cfg.name}')"
            )
    else:
        cands = sorted(runs_root(cfg).glob(f"*/weights/{RESUME_FILE}"), key=lambda p: p.stat().st_mtime)
        if not cands:
            raise TrainError(f"resume: no pretrain run with weights/{RESUME_FILE} under {runs_root(cfg)}")
        d = cands[-1].parent.parent
    saved = yaml.safe_load((d / PRETRAIN_ARGS_FILE).read_text())
    saved.update(resume=True, name=d.name, device=cfg.device, workers=cfg.workers)
    new = build(PretrainConfig, saved, str(d / PRETRAIN_ARGS_FILE))
    # tensors, numbers and plain dicts only
    state = torch.load(d / "weights" / RESUME_FILE, map_location="cpu", weights_only=True)
    return new, state, d


class Pretrain:
    """`Pretrain(PretrainConfig(...)).run()`: the same run as `dinocache pretrain`."""

    def __init__(self, cfg: PretrainConfig | None = None, **overrides: Any) -> None:
        cfg = cfg or PretrainConfig()
        self.cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
        self.trainer: Any = None

    def prepare(self) -> tuple[Any, dict[str, Any], Any, dict | None, Path]:
        """Run folder (new or resumed), held-out split, checks, Ultralytics arguments; refuses before training.
        Returns (TrainConfig, overrides, teacher context, resume state, run folder)."""
        from dinocache.train.overrides import apply_augmentation_policy, ultralytics_overrides
        from dinocache.train.preflight import (
            TrainError,
            _open_cache,
            check_cache,
            model_layers,
            preflight,
        )

        from dinocache.core.device import ultralytics_device

        cfg, state = self.cfg, None
        ultralytics_device(cfg.device)
        n_layers = model_layers(cfg.model)  # a missing model is refused before the run folder exists
        if cfg.resume:
            cfg, state, save_dir = find_resume(cfg)
            self._lock(save_dir)
            data_yaml = save_dir / "data.yaml"
        else:
            run_id = cfg.name or time.strftime("%Y%m%d-%H%M%S")
            save_dir = runs_root(cfg) / run_id
            self._lock(save_dir)
            if (save_dir / "results.csv").exists() or (save_dir / "weights").exists():
                raise TrainError(
                    f"run folder {save_dir} already holds a run; pass resume=true or another name"
                )
            cfg = dataclasses.replace(cfg, name=run_id)
            self._new_dir = save_dir  # removed again if anything below refuses the run
            data_yaml = write_run_data(cfg, save_dir)
        layers = list(cfg.layers) or head_inputs(cfg.model)
        bad = [i for i in layers if not 0 <= i < n_layers - 1]
        if bad:
            raise TrainError(f"layers: {bad} are not feature layers of {cfg.model} (0..{n_layers - 2})")
        self.cfg = cfg
        tc = cfg.train_config(data_yaml, layers)
        device = ultralytics_device(tc.device)
        ctx = preflight(tc, labels=False)  # label files next to the images are never read
        if tc.teacher_source == "cache":  # the held-out images need their maps too
            from dinocache.core.data import image_key, list_split_images

            root, held = list_split_images(data_yaml, "val")
            check_cache(tc, _open_cache(tc.cache), [image_key(f, root) for f in held])
        ov = ultralytics_overrides(tc, save_dir, device)
        apply_augmentation_policy(tc, ov)
        # every layer above the last distilled one (the detection head) gets no gradient: frozen, it keeps
        # the weights it was built with, so fine-tuning starts it fresh, and DDP sees no unused parameter
        ov["freeze"] = list(range(max(layers) + 1, n_layers))
        ov["val"] = True
        if state is None:
            from dinocache.core.config import save

            save(cfg, save_dir / PRETRAIN_ARGS_FILE)
        return tc, ov, ctx, state, save_dir

    def _lock(self, save_dir: Path) -> None:
        """One pretraining per run folder: its .lock, held until run() ends (a second one is refused)."""
        from dinocache.train.context import TrainError

        from dinocache.core.locks import Busy, hold

        try:
            self._held = hold(
                save_dir / RUN_LOCK,
                f"pretrain run folder {save_dir}",
                "another pretraining writes there; wait for it to end or pass another name=",
            )
        except Busy as e:
            raise TrainError(str(e)) from None

    def run(self, callbacks: dict[str, list] | None = None) -> PretrainResult:
        """Pretrain as configured. `callbacks` maps Ultralytics events to extra module-level `fn(trainer)`."""
        from dinocache.train.pretrain_trainer import PretrainTrainer
        from dinocache.train.run import discard_unsaved_run

        self._new_dir = None
        self._held: Any = None
        try:
            tc, ov, ctx, state, save_dir = self.prepare()
            self.trainer = PretrainTrainer(overrides=ov, dino=tc, ctx=ctx, resume_state=state)
            for event, fns in (callbacks or {}).items():
                for fn in fns:
                    self.trainer.add_callback(event, fn)
            self.trainer.train()
        except BaseException:
            from dinocache.core.locks import release

            release(self._held)
            if self._new_dir is not None:
                discard_unsaved_run(self._new_dir)
            raise
        from dinocache.core.locks import release

        release(self._held)
        t = self.trainer
        fit = {k: float(v) for k, v in (t.metrics or {}).items() if str(k).startswith("fit/")}
        return PretrainResult(save_dir=Path(t.save_dir), best=Path(t.best), last=Path(t.last), fit=fit)


def main(argv: list[str] | None = None) -> int:
    """`dinocache pretrain --config config.json [key=value ...]`: exit 0 trained, 1 NaN stop, 2 refused."""
    ap = argparse.ArgumentParser(prog="dinocache pretrain", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", default="config.json", help="JSON file whose 'pretrain' section holds the options"
    )
    ap.add_argument("overrides", nargs="*", help="key=value options overriding the config file")
    args = ap.parse_args(argv)

    from dinocache.train.cli import _first_cause
    from dinocache.train.trainer import NonFiniteLoss

    from dinocache.core.config import load
    from dinocache.core.errors import DinocacheError

    try:
        cfg = load(PretrainConfig, args.config, "pretrain", args.overrides)
        res = Pretrain(cfg).run()
    except NonFiniteLoss as e:  # the run went wrong: exit 1, not a refusal
        print(f"error: {e}", file=sys.stderr)
        return 1
    except DinocacheError as e:
        print(f"error: {_first_cause(e)}", file=sys.stderr)
        return 2
    fit = ", ".join(
        f"{k.split('/')[1]} {v:.3f}" for k, v in res.fit.items() if k in ("fit/cos", "fit/cos_shuf")
    )
    print(f"dinocache pretrain: outputs in {res.save_dir}; weights {res.best} (held-out fit: {fit})")
    print(f"  fine-tune: dinocache train --config config.json model={res.best}")
    return 0


__all__ = ["Pretrain", "PretrainConfig", "PretrainResult", "main", "to_dict"]

if __name__ == "__main__":
    sys.exit(main())
