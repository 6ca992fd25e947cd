"""RunLogger: TensorBoard scalars/images, offline W&B run folder, one warning when W&B is broken."""

from __future__ import annotations

import sys
import warnings

import cv2
import numpy as np
import pytest
from dinocache.grade.logging import RunLogger, resolve_wandb_mode, wandb_api_key_configured


def tb_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tensorboard"))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}, ea.Tags()["images"]


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_mode_resolution(monkeypatch, tmp_path, no_key):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert not wandb_api_key_configured()
    assert resolve_wandb_mode() == "offline"
    assert resolve_wandb_mode("online") == "offline"  # never a login prompt
    assert resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "invalid")
    assert resolve_wandb_mode() == "invalid"  # passed through: wandb rejects it, we warn
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_api_key_configured() and resolve_wandb_mode() == "online"
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"


def test_tensorboard_scalars_and_images(tmp_path):
    run = tmp_path / "runs" / "r1" / "train"
    img = tmp_path / "a_panel.jpg"
    cv2.imwrite(str(img), np.full((32, 48, 3), 128, np.uint8))
    with RunLogger(run, {"wandb_enabled": False}) as log:
        assert log.name == "r1" and log.wandb_run is None
        log.log_epoch(
            1, {"train/box_loss": 1.5, "train/distill": np.float32(0.25), "eval/mean_iou": None, "note": "x"}
        )
        log.log_epoch(2, {"train/box_loss": 1.2, "lr/pg0": 0.001})
        log.log_images(2, [img, tmp_path / "missing.jpg"])
    scalars, images = tb_scalars(run)
    assert scalars["train/box_loss"] == [(1, 1.5), (2, pytest.approx(1.2))]
    assert scalars["train/distill"] == [(1, 0.25)]
    assert "eval/mean_iou" not in scalars and "note" not in scalars
    assert images == ["viz/a_panel"]


def test_wandb_offline_run_folder(tmp_path, monkeypatch, no_key):
    import logging

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: lines.append(r.getMessage())
    logger = logging.getLogger("ultralytics")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no "logging disabled" warning
            log = RunLogger(run, {"wandb_project": "dinocache-test", "epochs": 3})
            assert log.wandb_mode == "offline" and log.wandb_run is not None
            log.log_epoch(1, {"eval/grade": 0.5})
            log.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    # one log line says where the offline files go, how to upload them and how to switch W&B off
    said = [m for m in lines if m.startswith("W&B: offline")]
    assert len(said) == 1 and f"wandb sync {runs[0]}" in said[0] and "wandb_enabled=false" in said[0]


def test_wandb_invalid_mode_warns_once_and_keeps_going(tmp_path, monkeypatch, no_key):
    monkeypatch.setenv("WANDB_MODE", "invalid")
    with pytest.warns(RuntimeWarning, match="W&B logging disabled") as rec:
        log = RunLogger(tmp_path / "run", {})
        log.log_epoch(1, {"a": 1.0})
        log.log_epoch(2, {"a": 2.0})
        log.close()
    assert len([w for w in rec if "W&B" in str(w.message)]) == 1
    assert tb_scalars(tmp_path / "run")[0]["a"] == [(1, 1.0), (2, 2.0)]


def test_wandb_import_failure_warns_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.warns(RuntimeWarning, match="cannot import wandb") as rec:
        log = RunLogger(tmp_path / "run", {"wandb_enabled": True})
        log.log_epoch(1, {"a": 1.0})
        log.close()
    assert len(rec) == 1


def test_wandb_failing_mid_run_warns_once(tmp_path):
    class Broken:
        def log(self, *a, **k):
            raise OSError("disk full")

        def finish(self):
            pass

    log = RunLogger(tmp_path / "run", {"wandb_enabled": False})
    log.wandb_run = Broken()
    with pytest.warns(RuntimeWarning, match="disk full") as rec:
        log.log_epoch(1, {"a": 1.0})
        log.log_epoch(2, {"a": 2.0})
    assert len(rec) == 1 and log.wandb_run is None
    log.close()
