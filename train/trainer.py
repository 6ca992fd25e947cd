"""DinoOBBTrainer: Ultralytics' OBB trainer fed with cached (or live) DINOv3 features.

What it changes in Ultralytics' loop, and where:
- `get_model`: a DistillOBBModel (hooks + 1x1 projections; the distillation terms live in its `loss()`).
- `build_dataset`: the training set attaches each image's cached teacher map; flips flip it too.
- `preprocess_batch`: normalises the teacher map on the device, or computes it live (online mode).
- `save_model`: best.pt/last.pt hold a clean OBBModel; resume state goes to weights/resume.pt (tensors only).
- `resume_training`: restores model, projection, EMA, optimizer and epoch from weights/resume.pt.
- `optimizer_step`, `_handle_nan_recovery`: a NaN/inf stops the run before it reaches the weights.
The callbacks it registers (curriculum, epoch speed, the per-epoch evaluation) are in train/callbacks.py;
what resume.pt holds and the RNG streams of an exact resume in train/checkpoint.py; what refuses a run
before it starts in train/preflight.py. What stays (~600 lines) are the overrides of Ultralytics' trainer
methods, one class sharing the trainer's state; the internals they touch are listed in docs/architecture.md.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import torch
from dinocache.train import checkpoint, ddp, eval_hooks
from dinocache.train.callbacks import add_callbacks, apply_curriculum, evaluate_saved_epoch, log_epoch_speed
from dinocache.train.config import TrainConfig
from dinocache.train.context import DINO_ARGS_FILE, RESUME_FILE, TeacherContext, TrainError
from dinocache.train.dataset import (
    TEACHER_KEY,
    DistillDataset,
    MultiTeacherLookup,
    TeacherLookup,
    uses_cache_flips,
)
from dinocache.train.export import export_clean
from dinocache.train.fit import TRAIN_FIT_KEYS, HeldOutFit
from dinocache.train.losses import distill_weight, normalise_teacher, stage_of
from dinocache.train.model import DistillOBBModel
from dinocache.train.results_plot import write_results_png
from dinocache.train.steps import few_steps_warning, planned_steps
from dinocache.train.warp import SRC_KEY, VALID_KEY, warp_batch
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, YAML, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from dinocache.core.config import to_dict
from dinocache.core.errors import DinocacheError
from dinocache.core.logs import quiet_ultralytics


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'"""
    out: list[str] = []
    for i in sorted(ids):
        if out and int(out[-1].split("-")[-1]) == i - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ", ".join(out)


def snapshot(t: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` items as a float32 CPU copy with its own memory. On CPU `.float().cpu()` of a float32
    tensor is the same storage, and Ultralytics' plot_training_samples multiplies batch["img"] by 255 in
    place in the epochs it plots train_batch*.jpg: the DINO viz would show white pictures."""
    return t[:n].detach().to("cpu", torch.float32, copy=True)


class NonFiniteLoss(DinocacheError, RuntimeError):
    """The training loss (or the validation fitness) became NaN/inf: the run stops, the last good checkpoint stays."""


class DinoOBBTrainer(OBBTrainer):
    """OBBTrainer with DINOv3 feature distillation from a cache (or online) and the two-stage curriculum.

    Python API: `DinoOBBTrainer(TrainConfig(...), device="cuda:0").train()` resolves the run like
    `dinocache train` does (train.preflight.prepare). Ultralytics' own form (`cfg`, `overrides`) takes
    `dino`, the TrainConfig, and `ctx`, the resolved teacher context; `resume_state` is the dict loaded
    from weights/resume.pt when continuing a run. On a DDP rank all three come from the DDPHandoff inside
    `_callbacks` instead (Ultralytics rebuilds the trainer there without our arguments; train/ddp.py).
    """

    # pretraining (train/pretrain_trainer.py) sets this: the student learns the maps alone, no detection loss
    distill_only = False
    # the training set's class (pretraining: one that reads no labels)
    dataset_class: type[DistillDataset] = DistillDataset

    def __init__(
        self,
        cfg: Any = DEFAULT_CFG,
        overrides: dict | None = None,
        _callbacks: dict | None = None,
        dino: TrainConfig | None = None,
        ctx: TeacherContext | None = None,
        resume_state: dict | None = None,
        device: str | None = None,
        config: TrainConfig | None = None,
    ) -> None:
        if config is not None:  # the seed's spelling: DinoOBBTrainer(config=train_config, device=device)
            if cfg is not DEFAULT_CFG:
                raise TypeError("DinoOBBTrainer: give the TrainConfig once, positionally or as config=")
            cfg = config
        # the TrainConfig and device of the Python API, kept for train(data_yaml_path=..., epochs=...)
        self._api: tuple[TrainConfig, str | None] | None = None
        if isinstance(cfg, TrainConfig):
            # the Python API: DinoOBBTrainer(TrainConfig(...), device="cuda:0").train(), the same run as
            # `dinocache train` (run folder, preflight checks, augmentation policy: train.preflight.prepare)
            from dinocache.train.preflight import prepare

            dino, ov, ctx, resume_state = prepare(cfg, device)
            self._api = (dino, device)
            cfg, overrides = DEFAULT_CFG, {**ov, **(overrides or {})}
        elif device is not None:
            overrides = {**(overrides or {}), "device": device}
        handoff = ddp.find_handoff(_callbacks) if dino is None else None
        if handoff is not None:
            dino, ctx, resume_state = ddp.unpack_handoff(handoff)
        self.dino = dino or TrainConfig()
        self.ctx = ctx
        self.resume_state = resume_state
        self.stage = "A"
        self.stage_frozen = False
        self.last_logged_weight: float | None = None
        self._teacher: Any = None  # online teacher: held here, never a submodule of the student
        # first samples of each epoch as the student saw them (augmented image, warped teacher map,
        # validity), CPU copies for the DINO viz: shows that warped maps line up with augmented images
        self.aug_viz: dict[str, Any] | None = None
        self._aug_viz_epoch = -1
        self._last_saved_epoch: int | None = None  # epoch of the newest weights/resume.pt (NaN message)
        # resumed run: training seconds before the resume (results.csv `time` goes on from there)
        self._time_offset = 0.0
        self._quiet = quiet_ultralytics()
        # the feature fit logged with each validation (pretraining scores its own fit in place of mAP)
        self._fit = (
            HeldOutFit(self.dino.dino_fit_images)
            if self.dino.distills and self.dino.dino_fit_images > 0 and not self.distill_only
            else None
        )
        # Ultralytics deletes results.csv unless its own resume is used; ours continues it
        csv = Path((overrides or {}).get("save_dir") or ".") / "results.csv"
        kept = csv.read_bytes() if resume_state is not None and csv.is_file() else None
        if kept is not None:
            # rows of epochs after the saved one (written before a checkpoint failed) are done again
            kept = checkpoint.rows_up_to(kept, int(resume_state["epoch"]) + 1)
        super().__init__(cfg, overrides, _callbacks)
        if kept is not None and RANK in {-1, 0} and not self.csv.exists():
            self.csv.write_bytes(kept)
        ddp.drop_handoff(self.callbacks)
        self.stage_frozen = bool(self.args.freeze)
        # a DDP rank gets the parent's callbacks (this one included) back through _callbacks
        if apply_curriculum not in self.callbacks["on_train_epoch_start"]:
            self.add_callback("on_train_epoch_start", apply_curriculum)
        if log_epoch_speed not in self.callbacks["on_train_epoch_end"]:
            self.add_callback("on_train_epoch_end", log_epoch_speed)
        if evaluate_saved_epoch not in self.callbacks["on_model_save"]:
            self.add_callback("on_model_save", evaluate_saved_epoch)
        if RANK in {-1, 0}:
            self._write_args()

    def _setup_train(self) -> None:
        self._quiet.frozen = 0
        super()._setup_train()
        if self._fit is not None and isinstance(self.metrics, dict):
            # results.csv's columns come from its first row: the fit's are there before the first validation,
            # 0 until it runs, as Ultralytics' own metrics
            self.metrics = {**self.metrics, **dict.fromkeys(TRAIN_FIT_KEYS, 0.0)}
        self._log_freeze()
        if RANK in {-1, 0} and not self.args.time:
            self._log_planned_steps()

    def _log_planned_steps(self) -> None:
        """One line with the optimizer steps the run will make (Ultralytics' accumulation and warmup rule,
        train/steps.py), a warning with the fix when they are few."""
        nb = len(self.train_loader)
        plan = planned_steps(
            nb, self.epochs, self.accumulate, self._get_warmup_iterations(nb), self.start_epoch
        )
        n = len(self.train_loader.dataset)
        warning = few_steps_warning(
            plan, n, self.batch_size, self.args.nbs, self.accumulate, self.args.warmup_epochs
        )
        self.planned_steps = plan
        if warning:
            LOGGER.warning(f"{colorstr('dinocache:')} {warning}")
        else:
            LOGGER.info(
                f"{colorstr('dinocache:')} {sum(plan)} optimizer steps planned ({plan[-1] if plan else 0} per "
                f"epoch after the warmup, one per {self.accumulate} batch(es) of {self.batch_size})"
            )

    def _log_freeze(self) -> None:
        """One line for Stage A's freeze instead of Ultralytics' line per parameter."""
        d = self.dino
        tag = colorstr("dinocache:")
        if d.stage_a_epochs == 0:
            return
        if not self.stage_frozen:
            why = (
                f"model={d.model} starts from random weights, nothing to protect; set stage_a_freeze=N to freeze"
                if d.stage_a_freeze is None
                else "stage_a_freeze=0"
            )
            LOGGER.info(f"{tag} Stage A (epochs 1-{d.stage_a_epochs}) trains every layer: {why}")
            return
        model = unwrap_model(self.model)
        layers = [int(n.split(".")[1]) for n in self.freeze_layer_names if n.startswith("model.")]
        n = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        what = (
            f"{tag} Stage A (epochs 1-{d.stage_a_epochs}): layers {_ranges(layers)} frozen "
            f"({self._quiet.frozen} tensors, {n / 1e6:.2f} M parameters)"
        )
        if not d.pretrained_student:
            # the seed's stage_a_freeze: 10 on a random student: say it once, plainly
            LOGGER.warning(
                f"{what} although model={d.model} starts from random weights: freezing random layers protects "
                "no pretrained features, it only keeps them random until Stage B; start from a pretrained .pt or "
                "hub id, or set stage_a_freeze=0"
            )
            return
        LOGGER.info(f"{what}; Stage B unfreezes them")

    def train(
        self,
        data_yaml_path: str | Path | None = None,
        epochs: int | None = None,
        callbacks: Any = None,
        **config_keys: Any,
    ) -> None:
        """Ultralytics' train(); with several devices it launches the DDP ranks and hands them our config.

        The seed's call `train(data_yaml_path=..., epochs=..., callbacks=[...])` overrides the TrainConfig for
        this run (any other TrainConfig key works too, e.g. `batch=8`): the run is resolved again exactly as
        `DinoOBBTrainer(config, device=...)` resolved it (same run folder, preflight on the new values).
        `callbacks` take any form of `add_callbacks`.

        Ends with `EvalFailed` when an evaluation failed during training (train/eval_hooks.py): the epochs ran
        and the checkpoints are saved, but the run does not look like a good one."""
        changes = dict(config_keys)
        if data_yaml_path is not None:
            # a data.yaml given here replaces dataset_root's (which would refuse a file outside it)
            changes.update(data=str(data_yaml_path), dataset_root="")
        if epochs is not None:
            changes["epochs"] = epochs
        if changes:
            self._reconfigure(changes)
        add_callbacks(self, callbacks)
        if not self.ddp:
            result = super().train()
            eval_hooks.raise_if_failed(self)
            return result
        handoff = ddp.make_handoff(self)
        self.callbacks[ddp.HANDOFF_EVENT].append(handoff)
        if self.ctx is not None:
            self.ctx = self.ctx.for_ranks()  # each rank loads its own online teacher on its own GPU
        # Ultralytics' generate_ddp_command deletes save_dir unless resuming; ours keeps resume.pt there
        was_resume = self.resume
        self.resume = self.resume or self.resume_state is not None
        try:
            result = super().train()
        except subprocess.CalledProcessError as e:
            again = (
                f"; continue with resume=true name={self.dino.name}"
                if (self.wdir / RESUME_FILE).exists()
                else ""
            )
            raise TrainError(
                f"multi-GPU training (device={self.args.device}) stopped: a DDP rank exited with code "
                f"{e.returncode} (its error is printed above){again}"
            ) from None
        finally:
            self.resume = was_resume
            ddp.drop_handoff(self.callbacks)
        eval_hooks.raise_if_failed(self)  # a DDP rank 0 that evaluated; the launcher itself has nothing
        return result

    def _reconfigure(self, changes: dict[str, Any]) -> None:
        """Rebuild this trainer for `TrainConfig(**{**config, **changes})`, keeping its callbacks."""
        import dataclasses

        if self._api is None:
            raise TypeError(
                f"train({', '.join(changes)}=...): overriding the config needs a trainer built from a TrainConfig, "
                "DinoOBBTrainer(config=TrainConfig(...), device=...)"
            )
        cfg, device = self._api
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"train(): {unknown} are not TrainConfig keys")
        if cfg.resume:
            raise TypeError("train(): a resumed run continues with its saved config; pass no overrides")
        # same run id: the folder prepare() made for this trainer (nothing but args.yaml is in it yet)
        self.__init__(dataclasses.replace(cfg, **changes), device=device, _callbacks=self.callbacks)

    def plot_metrics(self) -> None:
        """results.png from a copy of results.csv made for Ultralytics' plot_results (train/results_plot.py):
        the distillation loss unweighted with its weight w as a panel of its own, always-zero loss panels
        dropped."""
        write_results_png(Path(self.csv), self.dino, self.save_dir / "results.png")
        self.on_plot(self.save_dir / "results.png")

    # -- run folder ------------------------------------------------------------------------------------------
    def _write_args(self) -> None:
        """dinocache_args.yaml = our TrainConfig; args.yaml = Ultralytics' args plus a `dinocache:` section."""
        ours = to_dict(self.dino)
        YAML.save(self.save_dir / DINO_ARGS_FILE, ours)
        ul = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()}
        YAML.save(self.save_dir / "args.yaml", {**ul, "dinocache": ours})

    # -- model -------------------------------------------------------------------------------------------------
    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> DistillOBBModel:
        d = self.dino
        model = DistillOBBModel(
            cfg,
            ch=self.data["channels"],
            nc=self.data["nc"],
            verbose=verbose and RANK == -1,
            distill_layers=d.dino_distill_layers,
            distill_channels=d.dino_distill_channels,
            object_weight=d.dino_distill_object_weight,
            background_weight=d.dino_distill_background_weight,
            enabled=d.distills,
            terms=self.ctx.terms if self.ctx is not None and self.ctx.terms else None,
            projector=d.dino_distill_projector,
            loss_kind=d.dino_distill_loss,
            distill_only=self.distill_only,
        )
        model = self.set_model_names_for_load(model)
        if weights:
            model.load(weights)
        return model

    # -- data --------------------------------------------------------------------------------------------------
    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        if mode != "train" or self.dino.teacher_source != "cache":
            return super().build_dataset(img_path, mode, batch)
        gs = max(int(unwrap_model(self.model).stride.max()), 32)
        flips = False
        if self.ctx.packed:
            # several teachers packed on the finest teacher grid: one flip/warp moves them all
            lookup: Any = MultiTeacherLookup(self.ctx.terms, self.ctx.dataset_root)
        else:
            lookup = TeacherLookup(
                self.ctx.cache_path,
                self.ctx.dataset_root,
                self.dino.dino_distill_channels,
                shuffle_seed=self.dino.seed if self.dino.distill_shuffle_maps else None,
            )
            flips = uses_cache_flips(self.dino.distill_cache_flips, lookup.fc)
            if flips and RANK in {-1, 0}:
                LOGGER.info(
                    f"{colorstr('dinocache:')} the cache holds flipped views (distill_cache_flips="
                    f"{self.dino.distill_cache_flips}): a horizontal flip reads the teacher's map of the flipped "
                    "image instead of mirroring the map"
                )
        # the arguments ultralytics.data.build.build_yolo_dataset passes in train mode, with our subclass
        return self.dataset_class(
            img_path=img_path,
            imgsz=self.args.imgsz,
            batch_size=batch,
            augment=True,
            hyp=self.args,
            rect=False,
            cache=self.args.cache or None,
            single_cls=self.args.single_cls or False,
            stride=gs,
            pad=0.0,
            prefix=colorstr(f"{mode}: "),
            task=self.args.task,
            classes=self.args.classes,
            data=self.data,
            fraction=self.args.fraction,
            teacher=lookup,
            geometric_aug=self.dino.distill_geometric_aug,
            patch=self.ctx.cell_px,
            valid_threshold=self.dino.distill_valid_threshold,
            cache_flips=flips,
        )

    def preprocess_batch(self, batch: dict) -> dict:
        batch = super().preprocess_batch(batch)
        model = unwrap_model(self.model)
        ctx = self.ctx
        if self.dino.teacher_source == "cache" and self.dino.distill_geometric_aug == "warp":
            # maps + geometry from the workers -> warped maps and validity, resampled here on the device
            if SRC_KEY in batch:
                batch[SRC_KEY] = batch[SRC_KEY].to(self.device, non_blocking=True)
            warp_batch(batch, self.dino.distill_valid_threshold)
        if self.dino.teacher_source == "cache" and TEACHER_KEY in batch:
            # (B, D, h, w) float16 from the cache -> standardised float32
            # packed (teachers list): standardised already by the lookup (identity stats of its sum-D channels)
            d = int(ctx.channel_mean.numel()) if ctx.packed else self.dino.dino_distill_channels
            batch[TEACHER_KEY] = normalise_teacher(batch[TEACHER_KEY], ctx.channel_mean, ctx.channel_std, d)
            if VALID_KEY in batch and self._aug_viz_epoch != self.epoch and RANK in {-1, 0}:
                self._aug_viz_epoch = self.epoch
                n = min(2, batch["img"].shape[0])
                self.aug_viz = {
                    "img": snapshot(batch["img"], n),  # (n, 3, H, W) in [0, 1]
                    "teacher": snapshot(batch[TEACHER_KEY], n),  # (n, D, h, w)
                    "valid": snapshot(batch[VALID_KEY], n),  # (n, h, w)
                }
        elif self.dino.teacher_source == "online" and getattr(model, "distill_weight", 0) > 0:
            batch[TEACHER_KEY] = self.online_teacher_features(batch["img"])
        return batch

    def online_teacher(self) -> Any:
        if self._teacher is None:
            if self.ctx is not None and self.ctx.teacher is not None:
                self._teacher = self.ctx.teacher.to(self.device)
                self.ctx = self.ctx.for_ranks()  # held by the trainer only from here on
            else:
                from dinocache.teacher.registry import load_teacher

                self._teacher = load_teacher(
                    self.dino.dino_root,
                    layer=self.dino.dino_layer,
                    device=self.device,
                    family=self.dino.teacher_family,
                )
        return self._teacher

    def online_teacher_features(self, img: torch.Tensor) -> torch.Tensor:
        """Same target as the cache: teacher map -> PCA projection (if the cache has one) -> first D, normalised."""
        ctx = self.ctx
        d = self.dino.dino_distill_channels
        with torch.no_grad():
            feat = self.online_teacher().extract_feature_map(img.float())  # (B, C_t, h, w) float32
            if ctx is not None and ctx.pca is not None:
                feat = ctx.pca.project(feat)  # (B, C_t, h, w) -> (B, K, h, w)
            if ctx is not None and ctx.channel_mean is not None:
                return normalise_teacher(feat, ctx.channel_mean, ctx.channel_std, d)
            return feat[:, :d].float()

    def validate(self) -> tuple[dict[str, Any] | None, float | None]:
        """Ultralytics' validation (mAP, the fitness), plus the feature fit on held-out images (train/fit.py)."""
        metrics, fitness = super().validate()
        if self._fit is not None and RANK in {-1, 0} and isinstance(metrics, dict):
            # under the saved RNG state: gathering the maps (a loader pass, the teacher built once) draws from
            # the random streams, and the training stream (and an exact resume) must not depend on it
            state = checkpoint.rng_state(None)
            try:
                merged = {**metrics, **self._fit(self)}
            finally:
                checkpoint.set_rng_state(state, None)
            # in the order of results.csv's header (made from the first row, which may precede any validation):
            # Ultralytics writes a row's values in its dict's order
            first = [k for k in (self.metrics or {}) if k in merged]
            metrics = {k: merged[k] for k in first + [k for k in merged if k not in first]}
        return metrics, fitness

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_model(self) -> bool:
        """Ultralytics' save with a clean OBBModel in place of the EMA, then weights/resume.pt (state dicts only)."""
        ema_model = self.ema.ema
        self.ema.ema = export_clean(ema_model)
        try:
            saved = super().save_model()
        except OSError as e:  # last.pt / best.pt on a full disk
            self._raise_unsaved(self.last, e)
        finally:
            self.ema.ema = ema_model
        self._save_resume_state(ema_model)
        return saved

    def _save_resume_state(self, ema_model: torch.nn.Module) -> None:
        state = checkpoint.resume_state(self, ema_model)
        tmp = self.wdir / (RESUME_FILE + ".tmp")
        try:
            torch.save(state, tmp)
            tmp.replace(self.wdir / RESUME_FILE)
        except (OSError, RuntimeError) as e:  # a full disk: torch reports it as "unexpected pos" or ENOSPC
            tmp.unlink(missing_ok=True)
            self._raise_unsaved(self.wdir / RESUME_FILE, e)
        self._last_saved_epoch = int(self.epoch)

    def _raise_unsaved(self, path: Path, e: BaseException) -> None:
        saved = self._last_saved_epoch
        kept = (
            f"the previous checkpoint (epoch {saved + 1}) is kept: free space, then continue with "
            f"resume=true name={self.dino.name}"
            if saved is not None
            else "no earlier checkpoint exists: free space and start again"
        )
        raise TrainError(
            f"cannot write the checkpoint {path} at epoch {int(self.epoch) + 1} ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else e!r}; is the disk full?); {kept}"
        ) from None

    def resume_training(self, ckpt: Any) -> None:
        """Continue from weights/resume.pt through Ultralytics' own resume_training: resume.pt holds state dicts
        only (weights_only loadable), so the student is loaded from its EMA state first and handed over as the
        checkpoint's `ema` module; optimizer, scaler, EMA updates, best fitness, early stopping and the
        end-to-end head's criterion are then Ultralytics' code. Unlike Ultralytics the student then continues
        from the live weights and RNG streams saved with them, so the resumed run equals the uninterrupted one."""
        state = self.resume_state
        if state is None:
            return super().resume_training(ckpt)
        start_epoch = int(state["epoch"]) + 1
        if start_epoch >= self.epochs:
            raise RuntimeError(
                f"run in {self.save_dir} already trained {self.epochs} epochs; nothing to resume"
            )
        model = unwrap_model(self.model)
        model.load_state_dict(state["ema"], strict=True)
        as_ckpt = checkpoint.ultralytics_checkpoint(state, model)
        was_resume, self.resume = self.resume, True
        try:
            super().resume_training(as_ckpt)
        finally:
            self.resume = was_resume
        if state.get("model"):
            # continue from the live weights when saved (Ultralytics continues from the EMA weights): exact resume
            model.load_state_dict(state["model"], strict=True)
        self._last_saved_epoch = start_epoch - 1
        if state.get("rng"):
            checkpoint.set_rng_state(state["rng"], getattr(self, "train_loader", None))
        self._time_offset = checkpoint.last_time(self.csv)
        LOGGER.info(
            f"{colorstr('dinocache:')} resuming {self.save_dir} at epoch {start_epoch + 1}/{self.epochs} "
            f"(Stage {stage_of(start_epoch, self.dino)}, w={distill_weight(start_epoch, self.dino):.4g})"
        )

    def save_metrics(self, metrics: dict) -> None:
        """Ultralytics' results.csv row; after a resume its `time` column continues instead of restarting at 0."""
        self.train_time_start -= self._time_offset
        try:
            super().save_metrics(metrics)
        finally:
            self.train_time_start += self._time_offset

    # -- NaN / inf ------------------------------------------------------------------------------------------
    def optimizer_step(self) -> None:
        """Check the loss before every optimizer step, so a NaN/inf never reaches the weights."""
        self._check_finite_loss()
        super().optimizer_step()
        self.epoch_steps = getattr(self, "epoch_steps", 0) + 1

    def _check_finite_loss(self) -> None:
        bad = {k: float(v) for k, v in (self.tloss or {}).items() if not math.isfinite(float(v))}
        if self.loss is not None and not bool(torch.isfinite(self.loss).all()):
            bad.setdefault("loss", float(self.loss.detach().sum()))
        if bad:
            raise NonFiniteLoss(self._non_finite_message(", ".join(f"{k}={v}" for k, v in bad.items())))

    def _handle_nan_recovery(self, epoch: int) -> bool:
        """Ultralytics' NaN hook at the end of each epoch (loss of the last batch, validation fitness; broadcast
        under DDP). Ultralytics would reload last.pt and retry; here a NaN ends the run: last.pt holds a clean
        OBBModel (no projection, no resume state) and a run that produced NaN once is broken, not unlucky."""
        import numpy as np

        loss_nan = self.loss is not None and not bool(torch.isfinite(self.loss).all())
        fitness_nan = self.fitness is not None and not np.isfinite(self.fitness)
        corrupted = RANK in {-1, 0} and (loss_nan or fitness_nan)
        if RANK != -1:
            import torch.distributed as dist

            flag = [corrupted if RANK == 0 else None]
            dist.broadcast_object_list(flag, 0)
            corrupted = flag[0]
        if corrupted:
            what = "training loss" if loss_nan else f"validation fitness ({self.fitness})"
            raise NonFiniteLoss(self._non_finite_message(what))
        return False

    def _non_finite_message(self, what: str) -> str:
        saved = self._last_saved_epoch
        kept = (
            f"the last good checkpoint is kept: {self.last} and {self.wdir / RESUME_FILE} (epoch {saved + 1}); "
            "continue it with resume=true after lowering lr0"
            if saved is not None
            else "no checkpoint had been saved yet, so the run folder is removed"
        )
        return (
            f"NaN/inf during training at epoch {self.epoch + 1}/{self.epochs} ({what}); the run stops and this "
            f"epoch is not saved; {kept}. Check the data (`dinocache dataset validate`) and the cache "
            "(`dinocache cache verify`), or lower lr0"
        )

    def final_eval(self) -> None:
        super().final_eval()
        eval_hooks.finish_run(self)
        self.release_teacher()
        self._drop_resume_state()

    def _drop_resume_state(self) -> None:
        """At a clean finish (every epoch trained, or Ultralytics' early stopping) weights/resume.pt is
        removed unless keep_resume=true: last.pt and best.pt hold the model; resume.pt only serves to
        continue. A run stopped otherwise (a callback, an error) never gets here with epochs left."""
        finished = self.epoch + 1 >= self.epochs or bool(getattr(self.stopper, "possible_stop", False))
        path = self.wdir / RESUME_FILE
        if self.dino.keep_resume or not finished or RANK not in {-1, 0} or not path.is_file():
            return
        path.unlink()
        LOGGER.info(
            f"{colorstr('dinocache:')} finished: removed {path.name} (keep_resume=true keeps it to continue "
            "with more epochs)"
        )

    def release_teacher(self) -> None:
        self._teacher = None


__all__ = [
    "NonFiniteLoss",
    "DinoOBBTrainer",
    "apply_curriculum",
]
