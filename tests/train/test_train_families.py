"""Each teacher family through the demo path: make-tiny-teacher -> precompute -> train (warp mode, the
default) -> cache verify against the teacher. The teacher's own grid is what the cache stores (SAM 64x64
at any imgsz, ConvNeXt / Grounding DINO stride 32) and the loss aligns the student's map to it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

# two families by default (~6 s each); the others (~7-30 s each) are slow, run in CI
FAST = ("dinov2", "grounding_dino")
SLOW = ("sam", "dinov3_convnext", "dinov3_timm")  # sam ~30 s: 16 images at 1024 px, a 64x64 warp


def _run_family(family: str, tmp_path: Path, demo_data: Path, tiny_train) -> None:
    from dinocache.cache.cli import main as cache_main
    from dinocache.precompute.run import main as precompute
    from dinocache.teacher.registry import load_teacher
    from dinocache.teacher.tiny import make_tiny_teacher
    from dinocache.train.config import TrainConfig
    from dinocache.train.run import train

    from dinocache import cache
    from dinocache.core.config import build

    teacher = make_tiny_teacher(tmp_path / family, family=family)
    (tmp_path / "empty.json").write_text("{}")
    out = tmp_path / "features.zarr"
    rc = precompute(
        [
            "--config",
            str(tmp_path / "empty.json"),
            f"data={demo_data}",
            f"cache={out}",
            f"dino_root={teacher}",
            "imgsz=128",
            "channels=8",
            "device=cpu",
            "batch=8",
            "workers=0",
        ]
    )
    assert rc == 0
    fc = cache.open(out)
    t = load_teacher(teacher)
    assert list(fc.grid) == list(t.grid(128)) and fc.fingerprint["family"] == family
    import numpy as np

    assert float(np.asarray(fc.read([0]), np.float32).std()) > 1e-3  # real maps, not a constant
    assert cache_main(["verify", str(out), "--data", str(demo_data), "--dino-root", str(teacher)]) == 0
    cfg = build(
        TrainConfig,
        tiny_train(
            tmp_path,
            data=str(demo_data),
            dino_root=str(teacher),
            cache=str(out),
            epochs=1,
            batch=8,
            nbs=8,
            dino_distill_warmup_epochs=0,
            stage_a_ratio=0.0,
            name="run",
            eval_enabled=False,
            dino_viz_enabled=False,
            wandb_enabled=False,
        ),
    )
    tr = train(cfg)
    with open(Path(tr.save_dir) / "results.csv") as f:
        rows = list(csv.DictReader(f))
    d = float(next(v for k, v in rows[-1].items() if k.strip() == "train/distill"))
    assert d > 0  # the distillation term ran against this family's map


@pytest.mark.parametrize("family", FAST)
def test_family_precomputes_and_trains(family: str, tmp_path: Path, demo_data: Path, tiny_train) -> None:
    _run_family(family, tmp_path, demo_data, tiny_train)


@pytest.mark.slow
@pytest.mark.parametrize("family", SLOW)
def test_family_precomputes_and_trains_slow(family: str, tmp_path: Path, demo_data: Path, tiny_train) -> None:
    _run_family(family, tmp_path, demo_data, tiny_train)
