"""Shared by the trainer tests: a feature cache of the tiny demo data made by the real `precompute.run.main`,
and the lines Ultralytics' LOGGER writes during a test."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory, demo_data: Path, tiny_teacher_dir: Path) -> Path:
    from dinocache.precompute.run import main as precompute

    d = tmp_path_factory.mktemp("cache")
    (d / "empty.json").write_text("{}")
    out = d / "features.zarr"
    args = [f"data={demo_data}", f"cache={out}", f"dino_root={tiny_teacher_dir}", "imgsz=128", "channels=16"]
    rc = precompute(["--config", str(d / "empty.json"), *args, "device=cpu", "batch=8", "workers=0"])
    assert rc == 0
    return out


@pytest.fixture
def cfg_for():
    """`cfg_for(tmp_path, demo_data, **kw)`: a tiny CPU run without a teacher, eval, viz or W&B (the trainer
    API and student-start tests)."""
    from dinocache.train.config import TrainConfig

    from dinocache.core.config import build

    def make(tmp_path: Path, demo_data: Path, **kw) -> TrainConfig:
        values = {
            "data": str(demo_data),
            "teacher_source": "none",
            "imgsz": 64,
            "epochs": 2,
            "stage_a_ratio": 0.5,
            "batch": 8,
            "nbs": 8,
            "warmup_epochs": 0,
            "workers": 0,
            "device": "cpu",
            "artifacts_root": str(tmp_path / "artifacts"),
            "name": "run",
            "eval_enabled": False,
            "dino_viz_enabled": False,
            "wandb_enabled": False,
            "extra": {"val": False, "plots": False},
            **kw,
        }
        return build(TrainConfig, values)

    return make


@pytest.fixture(scope="session")
def trainer_for():
    """`trainer_for(cfg, resume_state=None)`: a DinoOBBTrainer of `cfg` on the CPU, built as `train()` builds it
    (preflight's teacher context, Ultralytics' arguments) with the geometric augmentation off; nothing trained
    (the DDP handoff tests)."""
    from dinocache.train.overrides import geometric_off, ultralytics_overrides
    from dinocache.train.preflight import preflight, run_dir
    from dinocache.train.trainer import DinoOBBTrainer

    def make(cfg, resume_state: dict | None = None):
        ov = ultralytics_overrides(cfg, run_dir(cfg, cfg.name), "cpu")
        geometric_off(ov)
        return DinoOBBTrainer(overrides=ov, dino=cfg, ctx=preflight(cfg), resume_state=resume_state)

    return make


class Lines(logging.Handler):
    """Ultralytics' LOGGER does not propagate (caplog can't see it): collect its records directly."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines():
    import ultralytics.utils  # noqa: F401  (its import sets the level: set ours after it)

    h = Lines()
    lg = logging.getLogger("ultralytics")
    level = lg.level
    lg.setLevel(logging.INFO)  # tests run with YOLO_VERBOSE=False (level ERROR)
    lg.addHandler(h)
    yield h.lines
    lg.removeHandler(h)
    lg.setLevel(level)
