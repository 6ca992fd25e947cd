"""The per-teacher defaults files, `configs/defaults/*.yaml` (package data: they install with dinocache).

    teacher_grounding_dino_lora.yaml   epochs 50, batch 8, lr, LoRA rank, ... (the seed's guide)
    teacher_sam_lora.yaml              epochs 100, batch 8, ...
    preprocessing.yaml                 each model's input size and normalisation

`finetune-teachers` reads the teacher files for every key the user leaves unset (`for_teacher`), so one run
trains Grounding DINO 50 epochs and SAM 100 unless `epochs=` says otherwise.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dinocache.core.config import ConfigError

FOLDER = "configs/defaults"


def defaults_file(name: str) -> Path:
    """The installed path of `configs/defaults/NAME` (e.g. teacher_sam_lora.yaml)."""
    return Path(str(resources.files("dinocache.finetune").joinpath(FOLDER, name)))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such defaults file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: must hold a mapping of keys, got {type(data).__name__}")
    return data


def teacher_defaults(family: str) -> dict[str, Any]:
    """The defaults of one task teacher (grounding_dino, sam); {} for a family without a file."""
    f = defaults_file(f"teacher_{family}_lora.yaml")
    return read_yaml(f) if f.is_file() else {}


def preprocessing_defaults() -> dict[str, dict[str, Any]]:
    return read_yaml(defaults_file("preprocessing.yaml"))
