"""PretrainTrainer: the detector run's trainer, turned into distillation-only pretraining on unlabeled images.

A thin subclass of DinoOBBTrainer, so Ultralytics' own loop, optimizer, EMA, AMP, DDP launch, progress bar,
results.csv/results.png, last/best checkpoints and our exact resume are the ones the detector run has. What
changes, and where:
- `distill_only` / `dataset_class`: the model's loss is the distillation alone (forward stops at the last
  distilled layer, train/model.py) and the images' labels are never read (`NoLabels`);
- `validate`: the feature fit on the held-out images (train/fit.py) in place of mAP; best.pt = best fit/gap;
- `save_model`/`final_eval`: the clean Ultralytics model (export_clean) and resume.pt, without the detector
  run's grading and viz; the detection head stays as built (frozen: `freeze` names it, prepared in
  train/pretrain.py), so fine-tuning starts it fresh.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from dinocache.train.dataset import DistillDataset, TeacherLookup
from dinocache.train.export import export_clean
from dinocache.train.fit import feature_fit
from dinocache.train.losses import normalise_teacher
from dinocache.train.trainer import DinoOBBTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.utils import LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import unwrap_model

# key of the run's data.yaml that says its held-out images have labels worth scoring objects with
FIT_LABELS_KEY = "pretrain_fit_labels"


class NoLabels:
    """A YOLODataset mixin that reads no label file: every image is a background image. Unlabeled folders may
    sit next to label folders Ultralytics would otherwise read (`images/` -> `labels/`); pretraining ignores
    them, so none can drop an image as corrupt or steer augmentation."""

    def get_labels(self) -> list[dict[str, Any]]:
        from PIL import Image
        from ultralytics.data.utils import exif_size

        out = []
        for f in self.im_files:
            with Image.open(f) as im:
                w, h = exif_size(im)  # the displayed frame, as Ultralytics' loader decodes the pixels
            out.append(
                {
                    "im_file": f,
                    "shape": (h, w),
                    "cls": np.zeros((0, 1), np.float32),
                    "bboxes": np.zeros((0, 4), np.float32),
                    "segments": [],
                    "keypoints": None,
                    "normalized": True,
                    "bbox_format": "xywh",
                }
            )
        return out


class UnlabeledDistillDataset(NoLabels, DistillDataset):
    """DistillDataset (cached maps, flips and warp) over images whose labels are not read."""


class PretrainTrainer(DinoOBBTrainer):
    """Distillation-only training of a student's backbone and neck on unlabeled images (train/pretrain.py)."""

    distill_only = True
    dataset_class = UnlabeledDistillDataset

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the frozen layers (the head, above the distilled ones) stay frozen: no Stage B unfreezing
        self.stage_frozen = False
        self._fit_lookup: TeacherLookup | None = None

    def train(self) -> None:
        """DinoOBBTrainer.train(); with several devices the run folder survives Ultralytics' DDP launcher, which
        deletes save_dir unless resuming: it already holds the run's data.yaml and held-out split."""
        if not self.ddp:
            return super().train()
        was, self.resume = self.resume, True
        try:
            return super().train()
        finally:
            self.resume = was

    def plot_training_labels(self) -> None:
        """No labels to plot."""

    # -- data --------------------------------------------------------------------------------------------------
    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        if mode == "train" and self.dino.teacher_source == "cache":
            return super().build_dataset(img_path, mode, batch)
        # online training set, and the held-out set: square imgsz canvases cell for cell under the cached
        # maps (no rect batches, no padding); labels only where the data are a dataset with labels
        gs = max(int(unwrap_model(self.model).stride.max()), 32) if self.model is not None else 32
        labelled = mode != "train" and bool(self.data.get(FIT_LABELS_KEY))
        cls = DistillDataset if labelled else UnlabeledDistillDataset
        return cls(
            img_path=img_path,
            imgsz=self.args.imgsz,
            batch_size=batch,
            augment=mode == "train",
            hyp=self.args,
            rect=False,
            cache=None,
            single_cls=self.args.single_cls or False,
            stride=gs,
            pad=0.0,
            prefix=colorstr(f"{mode}: "),
            task=self.args.task,
            classes=self.args.classes,
            data=self.data,
            fraction=1.0,
            teacher=None,
            geometric_aug=self.dino.distill_geometric_aug,
        )

    # -- feature fit in place of mAP ---------------------------------------------------------------------------
    def validate(self) -> tuple[dict[str, float] | None, float | None]:
        """The feature fit of the EMA student on the held-out images (train/fit.py); fitness = fit/gap, what the
        student learnt of each image beyond the maps' shared average (fit/cos alone peaks early under the mse
        loss, on the shared background, and then falls as the student trades it for each image's content)."""
        if RANK not in {-1, 0}:
            return self.metrics, self.fitness
        model = self.ema.ema
        metrics = feature_fit(model, self.test_loader, self._fit_teacher, self.device)
        fitness = metrics.get("fit/gap", 0.0)
        if self.best_fitness is None or self.best_fitness < fitness:
            self.best_fitness = fitness
        return metrics, fitness

    def _fit_teacher(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, D, h, w) standardised teacher maps of held-out images: each image's own cached map (also in a
        shuffled-maps run: the fit scores against the truth), or the online teacher on the image."""
        ctx = self.ctx
        d = self.dino.dino_distill_channels
        if self.dino.teacher_source == "online":
            return self.online_teacher_features(batch["img"])
        if self._fit_lookup is None:
            self._fit_lookup = TeacherLookup(ctx.cache_path, ctx.dataset_root, d)
        maps = np.stack([np.asarray(self._fit_lookup(f), np.float32) for f in batch["im_file"]])
        return normalise_teacher(torch.from_numpy(maps).to(self.device), ctx.channel_mean, ctx.channel_std, d)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_model(self) -> bool:
        """Ultralytics' save with the clean model (no projectors, no dinocache class) in place of the EMA, then
        weights/resume.pt; none of the detector run's grading or viz."""
        ema_model = self.ema.ema
        self.ema.ema = export_clean(ema_model)
        try:
            saved = OBBTrainer.save_model(self)
        finally:
            self.ema.ema = ema_model
        self._save_resume_state(ema_model)
        return saved

    def final_eval(self) -> None:
        """Ultralytics' checkpoint stripping (optimizer out, model = EMA) without its mAP validation."""
        from ultralytics.utils.torch_utils import strip_optimizer

        if RANK in {-1, 0}:
            ckpt = strip_optimizer(self.last) if self.last.exists() else {}
            if self.best.exists():
                strip_optimizer(self.best, updates={"train_results": ckpt.get("train_results")})
            LOGGER.info(
                f"{colorstr('dinocache:')} pretrained weights: {self.best} (best feature fit), {self.last}; "
                f"fine-tune with `dinocache train model={self.best}` or `YOLO('{self.best}').train(data=...)`"
            )
        self.release_teacher()
