"""The trainer's evaluation during a run: periodic grade + best_geo.pt, eval overlays, DINO feature viz, logging.

Two calls from `train.trainer` (rank 0 only; both are no-ops on other ranks):

    def evaluate_saved_epoch(trainer):            # Ultralytics' on_model_save callback
        eval_hooks.after_save_model(trainer, trainer.ema.ema)   # the training EMA (DistillOBBModel)
    def final_eval(self):
        super().final_eval(); ...
        eval_hooks.finish_run(self)               # closes TensorBoard / W&B

Why `on_model_save` and not `on_fit_epoch_end`: Ultralytics fires on_model_save once per epoch right after
validation and after save_model has written last.pt, and `final_eval()` fires on_fit_epoch_end a second time
with best.pt's metrics. The grade is computed on the just-written `weights/last.pt` (the exact weights
best_geo.pt then copies), so `dinocache grade --weights best_geo.pt` reproduces the logged numbers.

A failure inside the evaluation or the viz (e.g. a malformed val label file, which Ultralytics' own
validator only skips with a warning) does not stop training (the epochs and checkpoints are not lost), but
it is never silent: it is logged as an error, recorded in eval/failures.txt (epoch, stage, error), logged
as the scalar `eval/failed`, and once training has finished `DinoOBBTrainer.train()` raises `EvalFailed`
(so `dinocache train` exits 1, not 0). `dinocache grade` on the same data gives the full traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dinocache.grade.evaluate import EvalTracker, Sample, class_names, evaluate, load_split
from dinocache.grade.featviz import feature_viz_dir, save_feature_viz
from dinocache.grade.logging import RunLogger
from dinocache.grade.overlays import eval_dir, write_overlays
from dinocache.train.context import DistillTerm
from dinocache.train.losses import align_to_grid, normalise_teacher

from dinocache.core.errors import DinocacheError

# Defaults for the TrainConfig's eval_viz_max_samples / dino_viz_samples when the trainer has no TrainConfig.
DEFAULT_VIZ_MAX_SAMPLES = 16  # eval_viz_max_samples: val images drawn per evaluation
DEFAULT_DINO_VIZ_SAMPLES = 4  # dino_viz_samples: fixed training images shown in dino_viz/
LOGGED_IMAGES = 4  # eval panels (and DINO viz samples) sent to TensorBoard / W&B per epoch
ATTR = "_dinocache_geo"  # where the per-run state hangs on the trainer


def _rank0() -> bool:
    from ultralytics.utils import RANK

    return RANK in {-1, 0}


FAILURES_FILE = "failures.txt"  # under eval/: one line per failed evaluation or viz


class EvalFailed(DinocacheError, RuntimeError):
    """Training finished (checkpoints saved) but at least one evaluation or DINO viz failed."""


def _record_failure(trainer: Any, geo: GeoEval, epoch: int, what: str, e: Exception) -> None:
    from ultralytics.utils import LOGGER

    line = f"epoch {epoch}: {what} failed: {type(e).__name__}: {e}"
    geo.failures.append(line)
    LOGGER.error(f"dinocache eval: {line} (training goes on; the run will end with EvalFailed)")
    out = Path(trainer.save_dir) / "eval" / FAILURES_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(line + "\n")


def raise_if_failed(trainer: Any) -> None:
    """After training: EvalFailed naming the failed evaluations, so a broken grade never looks like a good run."""
    geo = getattr(trainer, ATTR, None)
    failures = getattr(geo, "failures", None)
    if failures:
        where = Path(trainer.save_dir) / "eval" / FAILURES_FILE
        raise EvalFailed(
            f"{len(failures)} evaluation(s) failed during training (first: {failures[0]}); the weights in "
            f"{Path(trainer.save_dir) / 'weights'} are saved, the failures are listed in {where}; "
            "`dinocache grade` on the same data shows the full error"
        )


# the seed's dashboard names -> the Ultralytics key each copies (results.csv keeps Ultralytics' columns)
SEED_NAMES = {
    "train/loss_box": "train/box_loss",
    "train/loss_cls": "train/cls_loss",
    "train/loss_dfl": "train/dfl_loss",
    "train/loss_angle": "train/angle_loss",
    "train/loss_distill": "train/distill",
    "train/lr": "lr/pg0",
    "val/precision": "metrics/precision(B)",
    "val/recall": "metrics/recall(B)",
    "val/map50": "metrics/mAP50(B)",
    "val/map50_95": "metrics/mAP50-95(B)",
    "val/loss_box": "val/box_loss",
    "val/loss_cls": "val/cls_loss",
    "val/loss_dfl": "val/dfl_loss",
}


def seed_names(scalars: dict[str, Any]) -> dict[str, Any]:
    """The seed's metric names beside Ultralytics' own (both logged, so either dashboard finds its series)."""
    return {seed: scalars[ul] for seed, ul in SEED_NAMES.items() if ul in scalars}


def epoch_scalars(trainer: Any) -> dict[str, float]:
    """Losses (box, cls, dfl/angle, distill), lr, Ultralytics' val metrics, stage and distill weight, each
    under Ultralytics' name and, where the seed has one, the seed's (`train/loss_box`, `val/map50`, ...)."""
    from ultralytics.utils.torch_utils import unwrap_model

    s: dict[str, Any] = {}
    if getattr(trainer, "tloss", None) is not None:
        s.update(trainer.label_loss_items(trainer.tloss, prefix="train"))
    s.update(getattr(trainer, "metrics", None) or {})
    s.update(getattr(trainer, "lr", None) or {})
    stage = getattr(trainer, "stage", None)
    if stage in ("A", "B"):
        s["curriculum/stage"] = 1.0 if stage == "A" else 2.0
    s["curriculum/distill_weight"] = float(getattr(unwrap_model(trainer.model), "distill_weight", 0.0))
    s.update(seed_names(s))
    return s


def _gt_cell_mask(s: Sample, grid: tuple[int, int]) -> torch.Tensor:
    """The sample's ground-truth OBBs as the loss's object-cell mask on `grid` -> (h, w) bool."""
    from dinocache.train.losses import obb_cell_mask

    h, w = s.shape
    if len(s.gt):
        from ultralytics.utils.ops import xyxyxyxy2xywhr

        xywhr = torch.as_tensor(xyxyxyxy2xywhr(s.gt.poly), dtype=torch.float32).reshape(-1, 5)
        xywhr[:, [0, 2]] /= w
        xywhr[:, [1, 3]] /= h
    else:
        xywhr = torch.zeros(0, 5)
    return obb_cell_mask(xywhr, torch.zeros(len(xywhr)), 1, grid)[0]


class GeoEval:
    """Per-run state: val samples (read once), the tracker, the logger and the fixed DINO viz samples."""

    def __init__(self, trainer: Any):
        self.cfg = getattr(trainer, "dino", None)
        self.run_dir = Path(trainer.save_dir)
        self.data = str(trainer.args.data)
        self.imgsz = int(trainer.args.imgsz)
        self.device = str(trainer.device)
        self.tracker = EvalTracker(self.run_dir)
        self.logger = RunLogger(self.run_dir, self.cfg)
        self._val: list[Sample] | None = None
        self._viz_samples: list[Sample] | None = None
        self.failures: list[str] = []  # "epoch N: what failed: error", see raise_if_failed

    def opt(self, key: str, default: Any) -> Any:
        return getattr(self.cfg, key, default)

    # -- grade -----------------------------------------------------------------------------------------------
    def run_eval(self, trainer: Any, epoch: int) -> tuple[dict[str, Any], list[Path]]:
        if self._val is None:
            self._val = load_split(self.data, "val")
        last = Path(trainer.last)
        res = evaluate(
            last,
            self.data,
            self.imgsz,
            conf_thr=float(self.opt("eval_conf_threshold", 0.9)),
            iou_thr=float(self.opt("eval_iou_threshold", 0.75)),
            device=self.device,
            batch=max(
                1, int(getattr(trainer.args, "batch", 8) or 8)
            ),  # batch=-1 means AutoBatch in Ultralytics
            samples=self._val,
        )
        res.metrics["epoch"] = epoch

        def save_best(dst: Path) -> None:
            from ultralytics.utils.torch_utils import strip_optimizer

            # last.pt is already clean (plain OBBModel); strip it like Ultralytics strips best.pt at the end
            strip_optimizer(last, s=str(dst))

        best = self.tracker.update(epoch, res.metrics, save_best)
        res.metrics["best_grade"] = self.tracker.best_grade
        out = write_overlays(
            eval_dir(self.run_dir, epoch),
            [s.image for s in res.samples],
            [s.gt for s in res.samples],
            res.preds,
            res.per_image,
            res.metrics,
            int(self.opt("eval_viz_max_samples", DEFAULT_VIZ_MAX_SAMPLES)),
            epoch,
            names=class_names(self.data),
        )
        from ultralytics.utils import LOGGER

        LOGGER.info(
            f"dinocache eval: epoch {epoch} grade (F1) {res.metrics['grade']:.4f} P {res.metrics['precision']:.3f} "
            f"R {res.metrics['recall']:.3f}" + ("  -> best_geo.pt" if best else "")
        )
        return res.metrics, sorted(out.glob("*_panel.jpg"))[:LOGGED_IMAGES]

    # -- DINO viz --------------------------------------------------------------------------------------------
    def viz_samples(self) -> list[Sample]:
        """The first training images that hold objects (else the first ones): the same every epoch."""
        if self._viz_samples is None:
            n = int(self.opt("dino_viz_samples", DEFAULT_DINO_VIZ_SAMPLES))
            train = load_split(self.data, "train")
            with_obj = [s for s in train if len(s.gt)]
            self._viz_samples = (with_obj or train)[:n]
        return self._viz_samples

    def run_feature_viz(self, trainer: Any, ema_model: torch.nn.Module, epoch: int) -> list[Path]:
        """One set of panels per distillation term (a `teachers` list: files STEM_NAME_*), each against its
        teacher's map on its own grid (the cache's, or the online teacher's), with the term's first hooked
        layer and projection; then the epoch's first augmented training samples (warp mode)."""
        import cv2

        source = self.opt("teacher_source", "cache")
        slots = getattr(ema_model, "distill_slots", None)
        if source == "none" or not slots:
            return []
        out_dir = feature_viz_dir(self.run_dir, epoch)
        param = next(ema_model.parameters())
        ctx = getattr(trainer, "ctx", None)
        aug = getattr(trainer, "aug_viz", None)
        written: list[Path] = []
        for term, slot in zip(ema_model.distill_terms, slots):
            proj_i, hook_i = slot[0]
            proj, layer = ema_model.distill_proj[proj_i], int(ema_model.distill_layers[hook_i])
            d = term.channels
            lookup = stats = None
            if source == "cache":
                from dinocache.train.dataset import TeacherLookup

                lookup = TeacherLookup(term.cache_path or ctx.cache_path, ctx.dataset_root, d)
                # (D,) standardisation of this term's channels: the trainer's (single teacher) or its own
                stats = (ctx.channel_mean, ctx.channel_std) if not ctx.packed else _term_stats(term)
            for s in self.viz_samples():
                bgr = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
                bgr = cv2.resize(bgr, (self.imgsz, self.imgsz), interpolation=cv2.INTER_LINEAR)
                # (H, W, 3) BGR uint8 -> (1, 3, H, W) RGB in [0, 1], like Ultralytics' preprocess_batch
                img = (
                    torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))).float()[None]
                    / 255
                )
                img = img.to(param.device)
                if lookup is not None:
                    raw = torch.from_numpy(np.asarray(lookup(str(s.image)), dtype=np.float32))[None].to(
                        param.device
                    )
                    teacher = normalise_teacher(raw, *stats, d)  # (1, D, h, w) on this teacher's own grid
                else:
                    teacher = trainer.online_teacher_features(img)  # (1, D, h, w)
                grid = (int(teacher.shape[-2]), int(teacher.shape[-1]))
                student = _student_map(ema_model, layer, proj, img, grid)  # (1, D, h_t, w_t)
                mask = _gt_cell_mask(s, grid)  # (h_t, w_t)
                files = save_feature_viz(
                    out_dir,
                    f"{s.stem}{term.suffix}",
                    img[0].cpu(),
                    teacher[0].cpu(),
                    student[0].cpu(),
                    mask.cpu(),
                )
                written += [out_dir / files[k] for k in ("teacher", "student", "diff")]
            # Warp mode: the first training samples of this epoch as the student saw them (mosaic/affine
            # applied) with their warped cached teacher maps (this term's slice of a packed map, pooled back
            # to its grid); the mask picture shows the validity mask.
            o, f = term.offset, term.factor
            if (
                aug is None
                or aug["teacher"].shape[1] < o + d
                or (not ctx.packed and aug["teacher"].shape[1] != d)
            ):
                continue
            for i in range(aug["img"].shape[0]):
                teacher = aug["teacher"][i : i + 1, o : o + d]
                valid = aug["valid"][i : i + 1]
                if f > 1:
                    teacher = F.avg_pool2d(teacher, f)
                    valid = F.avg_pool2d(valid[:, None], f)[:, 0]
                grid = (int(teacher.shape[-2]), int(teacher.shape[-1]))
                student = _student_map(ema_model, layer, proj, aug["img"][i : i + 1], grid)
                files = save_feature_viz(
                    out_dir,
                    f"augmented_{i}{term.suffix}",
                    aug["img"][i],
                    teacher[0],
                    student[0].cpu(),
                    valid[0],
                )
                written += [out_dir / files[k] for k in ("teacher", "student", "diff")]
        return written


def _term_stats(term: DistillTerm) -> tuple[torch.Tensor, torch.Tensor]:
    """(D,) mean and std of a term's channels, float32 (a `teachers` list: each term standardised alone)."""
    return torch.tensor(term.mean, dtype=torch.float32), torch.tensor(term.std, dtype=torch.float32)


def _student_map(
    ema_model: torch.nn.Module, layer: int, proj: torch.nn.Module, img: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """(1, 3, H, W) -> the projected student map of `layer` on the teacher grid (1, D, h_t, w_t), eval mode."""
    param = next(ema_model.parameters())
    feats: dict[str, torch.Tensor] = {}
    handle = ema_model.model[layer].register_forward_hook(
        lambda m, a, o, feats=feats: feats.__setitem__("f", o)
    )
    was_training = ema_model.training
    try:
        ema_model.eval()
        with torch.no_grad():
            ema_model.predict(img.to(param.device, param.dtype))
            # (1, C_s, h, w) -> (1, D, h_t, w_t)
            return align_to_grid(proj(feats["f"]), grid).float()
    finally:
        handle.remove()
        ema_model.train(was_training)


def after_save_model(trainer: Any, ema_model: torch.nn.Module | None = None) -> dict[str, Any] | None:
    """Call from Ultralytics' `on_model_save` event (after last.pt is written), once per epoch, rank 0 only.

    Every `eval_interval_epochs` (and at the last epoch) grades weights/last.pt on the val split, appends
    eval/grades.csv, copies last.pt to weights/best_geo.pt (optimizer stripped) when the grade is the best
    so far, and draws eval/epoch_NNN/viz/val/; every `dino_viz_every_n_epochs` (and at the last epoch)
    draws dino_viz/epoch_NNN/; every epoch logs the scalars to TensorBoard/W&B. Returns the grade metrics
    when it evaluated.
    """
    if not _rank0():
        return None
    geo = getattr(trainer, ATTR, None)
    if geo is None:
        geo = GeoEval(trainer)
        setattr(trainer, ATTR, geo)
    epoch = int(trainer.epoch) + 1  # 1-based, like results.csv
    final = bool(getattr(trainer, "stop", False)) or epoch >= int(trainer.epochs)
    scalars = epoch_scalars(trainer)
    images: list[Path] = []
    metrics = None
    if geo.opt("eval_enabled", True) and (epoch % int(geo.opt("eval_interval_epochs", 1)) == 0 or final):
        try:
            metrics, panels = geo.run_eval(trainer, epoch)
            images += panels
            scalars.update({f"eval/{k}": v for k, v in metrics.items() if k in _LOGGED_GRADE_KEYS})
        except Exception as e:
            _record_failure(trainer, geo, epoch, "evaluation", e)
            scalars["eval/failed"] = 1.0
    if (
        ema_model is not None
        and geo.opt("dino_viz_enabled", True)
        and (epoch % int(geo.opt("dino_viz_every_n_epochs", 5)) == 0 or final)
    ):
        try:
            images += geo.run_feature_viz(trainer, ema_model, epoch)[: 3 * LOGGED_IMAGES]
        except Exception as e:
            _record_failure(trainer, geo, epoch, "DINO feature viz", e)
            scalars["eval/failed"] = 1.0
    geo.logger.log_epoch(epoch, scalars)
    if images:
        geo.logger.log_images(epoch, images)
    return metrics


_LOGGED_GRADE_KEYS = (
    "grade",
    "precision",
    "recall",
    "f1",
    "mean_iou",
    "centre_err",
    "angle_err",
    "best_grade",
)


def finish_run(trainer: Any) -> None:
    """Call once after training (end of `final_eval()` or an `on_train_end` callback): closes the loggers."""
    geo = getattr(trainer, ATTR, None)
    if geo is not None:
        geo.logger.close()
