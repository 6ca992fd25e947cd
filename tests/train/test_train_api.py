"""The Python API's construction paths: lazy root exports, validation of hand-built configs, dataset_root."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from dinocache.core.config import ConfigError


def test_root_exports_are_lazy() -> None:
    code = (
        "import sys, dinocache\n"
        "assert 'dinocache.train' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
        "from dinocache import TrainConfig, DinoOBBTrainer, PrecomputeConfig, Precompute, Compare, CompareConfig\n"
        "from dinocache.train.trainer import DinoOBBTrainer as T\n"
        "assert DinoOBBTrainer is T\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_hand_built_configs_validate() -> None:
    from dinocache import PrecomputeConfig, TrainConfig

    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="imgsz"):
        dataclasses.replace(TrainConfig(), imgsz=100)
    with pytest.raises(ConfigError, match="batch"):
        PrecomputeConfig(batch=0)
    from dinocache import CompareConfig

    with pytest.raises(ConfigError, match="seeds"):
        CompareConfig(seeds=0)


def test_precompute_and_compare_have_the_trainer_shape(monkeypatch) -> None:
    """Config + device + one call, like DinoOBBTrainer(cfg, device=...).train()."""
    import dinocache.compare
    from dinocache import Compare, CompareConfig, Precompute, PrecomputeConfig, TrainConfig

    assert Precompute(PrecomputeConfig(), device="cpu").cfg.device == "cpu"
    seen = {}
    monkeypatch.setattr(dinocache.compare, "compare", lambda values, cfg: seen.update(values=values, cfg=cfg))
    cc = CompareConfig(modes=["none"], seeds=1)
    Compare(cc, TrainConfig(epochs=2), device="cpu").run()
    assert seen["cfg"] is cc and seen["values"]["epochs"] == 2 and seen["values"]["device"] == "cpu"


def test_dataset_root_means_what_it_says(tmp_path: Path) -> None:
    from dinocache import TrainConfig

    cfg = TrainConfig(dataset_root=tmp_path / "ds")  # a Path, as in the seed
    assert cfg.data_yaml == (tmp_path / "ds" / "data.yaml").resolve() and isinstance(cfg.dataset_root, str)
    assert TrainConfig(dataset_root=str(tmp_path), data=str(tmp_path / "a" / "d.yaml")).data.endswith(
        "d.yaml"
    )
    with pytest.raises(ConfigError, match="dataset_root"):
        TrainConfig(dataset_root=str(tmp_path / "ds"), data=str(tmp_path / "other" / "data.yaml"))
