"""A feature cache of the tiny demo data made by the real `precompute.run.main`, shared by the trainer tests."""

from __future__ import annotations

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
