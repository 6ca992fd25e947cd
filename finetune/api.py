"""The teacher-training guide's programmatic API, as thin wrappers over finetune-teachers:

    from dinocache import (TeacherTrainer, generate_config, load_and_inspect_dataset, get_required_models,
                           get_augmentation_registry, create_preprocessor_from_models)
    info = load_and_inspect_dataset("train.json")        # {has_boxes, has_masks, num_classes, class_names, ...}
    models = get_required_models(info)                   # boxes -> grounding_dino, masks -> sam
    config = generate_config(default_config_path=defaults_file("teacher_grounding_dino_lora.yaml"),
                             dataset_info=info)
    TeacherTrainer("train.json", "val.json", "images/", "experiments/exp1", config).train()

Each name calls what `dinocache finetune-teachers` runs: `finetune.objectives.read_coco` (inspection),
`task_teachers.choose_teachers` (the models), `task_teachers.run` (training), the augmentation registry and
`finetune.preprocess` (inputs). Nothing here trains or reads data a second way.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dinocache.datatools.pipeline import get_augmentation_registry
from dinocache.finetune import checkpoints as _checkpoints
from dinocache.finetune import manager as _manager
from dinocache.finetune.preprocess import MultiModelPreprocessor, create_preprocessor_from_models

from dinocache.core.config import ConfigError

__all__ = [
    "TeacherTrainer",
    "generate_config",
    "inspect_dataset",
    "load_and_inspect_dataset",
    "get_required_models",
    "get_augmentation_registry",
    "create_preprocessor_from_models",
    "MultiModelPreprocessor",
    "load_grounding_dino_with_lora",
    "load_sam_with_lora",
    "TrainingManager",
    "CheckpointManager",
]

# the guide's config names -> finetune-teachers keys
ALIASES = {"batch_size": "batch", "learning_rate": "lr", "num_epochs": "epochs", "lora_rank": "lora_r"}
# what generate_config adds from the dataset: shown in teacher_config.yaml, not settings of the run
INFO_KEYS = ("num_classes", "class_names")


def inspect_dataset(coco: dict[str, Any], image_dir: str | Path | None = None) -> dict[str, Any]:
    """A COCO dict -> {has_boxes, has_masks (polygons or RLE), has_keypoints, num_classes, class_names, class_mapping
    (category id -> name), num_images, num_annotated, counts (usable instances per kind), unusable}."""
    from dinocache.finetune.objectives import read_coco

    _, s = read_coco(coco, image_dir)
    return {
        "has_boxes": s.has_boxes,
        "has_masks": s.has_masks,
        # the guide's extension point: keypoints are reported (no keypoint teacher trains on them yet)
        "has_keypoints": any(a.get("keypoints") for a in coco["annotations"]),
        "num_classes": len(s.classes),
        "class_names": list(s.classes),
        "class_mapping": {c["id"]: str(c["name"]) for c in coco["categories"]},
        "num_images": s.n_images,
        "num_annotated": s.n_annotated,
        "counts": dict(s.counts),
        "unusable": dict(s.unusable),
        "summary": s.describe(),
        "source": "<coco dict>",
    }


def load_and_inspect_dataset(path: str | Path) -> dict[str, Any]:
    """inspect_dataset of a COCO JSON file (errors name the file)."""
    from dinocache.datatools.formats import read_coco_json

    info = inspect_dataset(read_coco_json(path), Path(path).parent)
    info["source"] = str(path)
    return info


def get_required_models(dataset_info: dict[str, Any], teachers: list[str] | None = None) -> list[str]:
    """The teachers the data can supervise: boxes -> grounding_dino, masks -> sam (both when both);
    `teachers` names them explicitly (refused when the data cannot supervise them), as finetune-teachers does."""
    from dinocache.finetune.task_teachers import choose_teachers

    cfg = SimpleNamespace(
        teachers=list(teachers or ["auto"]), coco_train=dataset_info.get("source", "the data")
    )
    summary = SimpleNamespace(
        has_boxes=bool(dataset_info.get("has_boxes")),
        has_masks=bool(dataset_info.get("has_masks")),
        describe=lambda: str(dataset_info.get("summary", "")),
    )
    return choose_teachers(cfg, summary)


def generate_config(
    default_config_path: str | Path | None = None,
    dataset_info: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Defaults file (e.g. configs/defaults/teacher_grounding_dino_lora.yaml) + the dataset's num_classes and
    class_names + `overrides` (finetune-teachers keys or the guide's names: batch_size, learning_rate, ...)."""
    from dinocache.finetune.defaults import read_yaml

    config: dict[str, Any] = read_yaml(default_config_path) if default_config_path else {}
    if dataset_info:
        config["num_classes"] = int(dataset_info["num_classes"])
        config["class_names"] = list(dataset_info["class_names"])
    for k, v in overrides.items():
        config[ALIASES.get(k, k)] = v
    return config


class TeacherTrainer:
    """`TeacherTrainer(train_data_path, val_data_path, image_dir, output_dir, config).train()`: the run of
    `dinocache finetune-teachers coco_train=... coco_val=... coco_images=... project=... name=...`;
    `output_dir` is {project}/{name}. `config`: a dict (generate_config's, or keys of finetune-teachers) or a
    TaskFinetuneConfig."""

    def __init__(
        self,
        train_data_path: str | Path,
        val_data_path: str | Path,
        image_dir: str | Path | None,
        output_dir: str | Path,
        config: Any = None,
    ) -> None:
        import dataclasses

        from dinocache.finetune.task_teachers import TaskFinetuneConfig

        from dinocache.core.config import build, to_dict

        if isinstance(config, TaskFinetuneConfig):
            values = to_dict(config)
        else:
            values = {ALIASES.get(k, k): v for k, v in dict(config or {}).items() if k not in INFO_KEYS}
        out = Path(output_dir)
        values.update(
            coco_train=str(train_data_path),
            coco_val=str(val_data_path),
            coco_images=str(image_dir) if image_dir else "",
            project=str(out.parent),
            name=out.name,
        )
        known = {f.name for f in dataclasses.fields(TaskFinetuneConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"TeacherTrainer config: unknown key(s) {unknown}")
        self.config = build(TaskFinetuneConfig, values, "TeacherTrainer")
        self.output_dir = out

    def train(self) -> dict[str, Any]:
        """Fine-tune the teachers the data needs; returns metadata.json's content."""
        from dinocache.finetune.task_teachers import run

        return run(self.config)


def _load_with_lora(
    family: str,
    base_checkpoint: str | Path,
    num_classes: int | None,
    lora_config: dict[str, Any] | None,
    class_names: list[str] | None,
    device: str,
) -> Any:
    from dinocache.finetune.task_teachers import TASKS, TaskFinetuneConfig, for_teacher

    from dinocache.core.config import build

    lora = {ALIASES.get(k, k): v for k, v in dict(lora_config or {}).items()}
    unknown = sorted(set(lora) - {"lora_r", "lora_alpha", "lora_dropout", "lora_targets", "r"})
    if unknown:
        raise ConfigError(
            f"lora_config: unknown key(s) {unknown}; known: r, lora_alpha, lora_dropout, lora_targets"
        )
    if "r" in lora:
        lora["lora_r"] = lora.pop("r")
    cfg = for_teacher(
        build(TaskFinetuneConfig, {"coco_train": "-", "coco_val": "-", **lora}, "lora_config"), family
    )
    names = list(class_names or [f"class{i}" for i in range(int(num_classes or 1))])
    task = TASKS[family](cfg, str(base_checkpoint), names, device)
    return task.wrap(task.load()).to(device)


def load_grounding_dino_with_lora(
    base_checkpoint: str | Path,
    num_classes: int | None = None,
    lora_config: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    device: str = "cpu",
) -> Any:
    """The guide's loader: Grounding DINO (a save_pretrained folder or hub id) with finetune-teachers' LoRA
    (`lora_config`: r, lora_alpha, lora_dropout, lora_targets; unset from the defaults file), base frozen. The
    class names (or class0..N-1) make its text prompt."""
    return _load_with_lora("grounding_dino", base_checkpoint, num_classes, lora_config, class_names, device)


def load_sam_with_lora(
    base_checkpoint: str | Path,
    lora_config: dict[str, Any] | None = None,
    device: str = "cpu",
) -> Any:
    """The guide's loader: SAM (a save_pretrained folder or hub id) with finetune-teachers' LoRA, base frozen."""
    return _load_with_lora("sam", base_checkpoint, None, lora_config, None, device)


def _defaults(config_path: str | Path | None, name: str, known: tuple[str, ...]) -> dict[str, Any]:
    from dinocache.finetune.defaults import defaults_file, read_yaml

    path = config_path or defaults_file(name)
    values = read_yaml(path)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {list(known)}")
    return values


class TrainingManager(_manager.TrainingManager):
    """The guide's form of finetune-teachers' TrainingManager (clipping, accumulation, AMP, non-finite guard):

        manager = TrainingManager(model=model, optimizer=optimizer,
                                  config_path="configs/defaults/training_dynamics.yaml")
        loss_dict = manager.training_step(batch, compute_loss_fn)   # compute_loss_fn(model, batch) -> loss(es)

    `optimizer` is the caller's (default: AdamW lr 1e-4); the schedule is linear warmup then cosine over
    `total_steps`, or constant when it is 0; the settings come from `config_path` (default: the package's
    configs/defaults/training_dynamics.yaml)."""

    KEYS = ("grad_clip", "accumulate", "amp", "warmup_steps", "total_steps")

    def __init__(
        self,
        model: Any,
        optimizer: Any = None,
        config_path: str | Path | None = None,
        device: Any = None,
    ) -> None:
        import torch
        from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

        c = _defaults(config_path, "training_dynamics.yaml", self.KEYS)
        params = [p for p in model.parameters() if p.requires_grad]
        dev = (
            torch.device(device)
            if device is not None
            else (params[0].device if params else torch.device("cpu"))
        )
        total, warmup = int(c.get("total_steps", 0)), int(c.get("warmup_steps", 0))
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else 1e-4
        super().__init__(
            params,
            lr,
            0.01,
            max(1, total),
            warmup,
            float(c.get("grad_clip", 1.0)),
            int(c.get("accumulate", 1)),
            dev,
            bool(c.get("amp", True)),
        )
        if optimizer is not None:
            self.optimizer = optimizer
            self.params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        self.scheduler = (
            get_cosine_schedule_with_warmup(self.optimizer, warmup, total)
            if total > 0
            else get_constant_schedule_with_warmup(self.optimizer, warmup)
        )
        self.model = model

    def training_step(self, batch: Any, compute_loss_fn: Any) -> dict[str, float]:
        """One micro-batch: `compute_loss_fn(model, batch)` (a loss tensor, or a dict with "loss" and other
        terms) under autocast, backward, and an optimizer step every `accumulate` calls; returns the terms as
        floats plus "stepped" (1.0 when the optimizer stepped) and "lr"."""
        self.model.train()
        with self.autocast():
            out = compute_loss_fn(self.model, batch)
        terms = dict(out) if isinstance(out, dict) else {"loss": out}
        if "loss" not in terms:
            raise ValueError(f"compute_loss_fn returned {sorted(terms)}: a dict needs a 'loss' entry")
        stepped = self.backward(terms["loss"])
        return {
            **{k: float(v.detach() if hasattr(v, "detach") else v) for k, v in terms.items()},
            "stepped": float(stepped),
            "lr": self.lr,
        }


class CheckpointManager(_checkpoints.CheckpointManager):
    """The guide's form of finetune-teachers' CheckpointManager (best/ by a metric, last/ every time, early
    stopping; each folder written to a temp sibling and swapped in):

        manager = CheckpointManager(output_dir="experiments/exp1/teachers/dino_lora",
                                    config_path="configs/defaults/checkpoint_config.yaml")
        manager.save_checkpoint(epoch, model, optimizer, metrics)
        if manager.should_stop: ...
    """

    KEYS = ("metric", "patience", "min_delta")

    def __init__(self, output_dir: str | Path, config_path: str | Path | None = None) -> None:
        c = _defaults(config_path, "checkpoint_config.yaml", self.KEYS)
        super().__init__(
            Path(output_dir),
            str(c.get("metric", "val_loss")),
            int(c.get("patience", 5)),
            float(c.get("min_delta", 0.0)),
        )

    def save_checkpoint(
        self, epoch: int, model: Any, optimizer: Any = None, metrics: dict | None = None
    ) -> bool:
        """last/ (and best/ when `metrics[metric]` improved): the model (peft adapters via save_pretrained, any
        other module's state_dict as model.pt) and the optimizer state (optimizer.pt); True when improved."""
        import torch

        if not metrics or self.metric not in metrics:
            raise ValueError(f"save_checkpoint: metrics must hold '{self.metric}' (the config's metric)")

        def save(folder: Path) -> None:
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(str(folder))
            else:
                torch.save(model.state_dict(), folder / "model.pt")
            if optimizer is not None:
                torch.save(optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(
                {"epoch": epoch, "metrics": dict(metrics), "checkpoint": self.state_dict()},
                folder / "state.pt",
            )

        return self.update(epoch, {k: float(v) for k, v in metrics.items()}, save)
