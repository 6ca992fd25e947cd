"""dinocache: distill a DINOv3 teacher into a YOLO OBB student from a Zarr feature cache.

Python API (each name is imported on first use, so `import dinocache` stays light and the floors hold):

    from dinocache import TrainConfig, DinoOBBTrainer
    trainer = DinoOBBTrainer(TrainConfig(dataset_root="dataset/augmented", epochs=10), device="cuda:0")
    trainer.train()

    from dinocache import PrecomputeConfig, Precompute
    Precompute(PrecomputeConfig(data="dataset/augmented/data.yaml"), device="cuda:0").run()

    from dinocache import Pretrain, PretrainConfig
    Pretrain(PretrainConfig(data="unlabeled/", cache="unlabeled.zarr", epochs=100)).run()

    from dinocache import Compare, CompareConfig
    Compare(CompareConfig(modes=["none", "cache"], seeds=3), TrainConfig(epochs=10), device="cuda:0").run()

    from dinocache import TeacherTrainer, generate_config, load_and_inspect_dataset
    config = generate_config(dataset_info=load_and_inspect_dataset("train.json"))
    TeacherTrainer("train.json", "val.json", "images/", "experiments/exp1", config).train()
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "TrainConfig": "dinocache.train.config",
    "DinoOBBTrainer": "dinocache.train.trainer",
    "train": "dinocache.train.run",
    "PrecomputeConfig": "dinocache.precompute.config",
    "Precompute": "dinocache.precompute.run",
    "PrecomputeResult": "dinocache.precompute.run",
    "CompareConfig": "dinocache.compare",
    "Compare": "dinocache.compare",
    # the teacher-training guide's API (finetune/api.py)
    "TeacherTrainer": "dinocache.finetune.api",
    "generate_config": "dinocache.finetune.api",
    "inspect_dataset": "dinocache.finetune.api",
    "load_and_inspect_dataset": "dinocache.finetune.api",
    "get_required_models": "dinocache.finetune.api",
    "get_augmentation_registry": "dinocache.finetune.api",
    "create_preprocessor_from_models": "dinocache.finetune.api",
    "MultiModelPreprocessor": "dinocache.finetune.api",
    "load_grounding_dino_with_lora": "dinocache.finetune.api",
    "load_sam_with_lora": "dinocache.finetune.api",
    "TrainingManager": "dinocache.finetune.api",
    "CheckpointManager": "dinocache.finetune.api",
    "TaskFinetuneConfig": "dinocache.finetune.task_teachers",
    "PretrainConfig": "dinocache.train.pretrain",
    "Pretrain": "dinocache.train.pretrain",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dinocache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
