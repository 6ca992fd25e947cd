"""Student start and quiet output: model= a pretrained .pt freezes the backbone in Stage A by default, a .yaml
(random weights) does not unless stage_a_freeze is given (one line says why); one freeze summary line instead
of Ultralytics' line per parameter; stage_a_freeze beyond the model refused; images/s per epoch; results.png
gets a distill panel; augment's offline views turn Ultralytics' online scale/rotation off by default."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dinocache.train.config import TrainConfig


def pretrained_pt(path: Path) -> Path:
    """A checkpoint laid out like Ultralytics' own (random weights stand in for pretrained ones)."""
    from ultralytics.nn.tasks import OBBModel

    m = OBBModel("yolo26n-obb.yaml", nc=5, verbose=False)
    torch.save({"model": m.half(), "train_args": {}}, path)
    return path


def test_yaml_start_does_not_freeze_and_says_why(tmp_path: Path, demo_data: Path, log_lines, cfg_for) -> None:
    from dinocache.train.run import train

    t = train(cfg_for(tmp_path, demo_data, batch=-1))  # AutoBatch (on CPU: Ultralytics' default 16)
    assert t.batch_size == 16
    assert not t.args.freeze
    assert any(
        "trains every layer: model=yolo26n-obb.yaml starts from random weights" in m for m in log_lines
    )
    assert not any(m.startswith("Freezing layer") for m in log_lines)
    assert any("img/s)" in m and "epoch 1/2: trained on" in m for m in log_lines)


def test_pt_start_freezes_backbone_with_one_summary_line(
    tmp_path: Path, demo_data: Path, log_lines, cfg_for
) -> None:
    from dinocache.train.run import train

    pt = pretrained_pt(tmp_path / "yolo26n-obb-pre.pt")
    t = train(cfg_for(tmp_path, demo_data, model=str(pt)))
    assert t.args.freeze == 10 and t.save_dir.parent.parent.parent.name == "yolo26n-obb-pre"
    frozen = [m for m in log_lines if "Stage A (epochs 1-1): layers 0-9 frozen" in m]
    assert len(frozen) == 1 and "tensors" in frozen[0]
    assert not any(m.startswith("Freezing layer") for m in log_lines)


def test_stage_a_freeze_beyond_the_model_refused(tmp_path: Path, demo_data: Path, cfg_for) -> None:
    from dinocache.train.context import TrainError
    from dinocache.train.run import train

    cfg = cfg_for(tmp_path, demo_data, stage_a_freeze=30)
    with pytest.raises(TrainError, match=r"stage_a_freeze=30 but yolo26n-obb.yaml has only 24 layers"):
        train(cfg)
    assert not (tmp_path / "artifacts").exists()  # nothing written


def test_results_png_gets_a_distill_panel(tmp_path: Path, monkeypatch) -> None:
    """plot_metrics hands Ultralytics' plot_results a results.csv whose distill columns count as losses: the
    training one unweighted (train/results_plot.py) with the weight w beside it."""
    import ultralytics.utils.plotting as plotting
    from dinocache.train.trainer import DinoOBBTrainer

    seen = {}

    def fake(file):  # noqa: ANN001, ANN202
        seen["cols"] = Path(file).read_text().splitlines()[0].split(",")
        (Path(file).parent / "results.png").write_bytes(b"png")

    monkeypatch.setattr(plotting, "plot_results", fake)
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,train/box_loss,train/distill,val/distill,metrics/mAP50(B)\n1,1,0.5,0.4,0.1\n")
    plotted = []
    dino = TrainConfig(dino_distill_warmup_epochs=0)
    DinoOBBTrainer.plot_metrics(
        SimpleNamespace(csv=csv, save_dir=tmp_path, on_plot=plotted.append, dino=dino)
    )
    assert "train/distill_loss (unweighted)" in seen["cols"] and "metrics/distill weight w" in seen["cols"]
    assert "val/distill_loss" in seen["cols"]
    assert (tmp_path / "results.png").read_bytes() == b"png" and plotted == [tmp_path / "results.png"]
    assert csv.read_text().startswith("epoch,train/box_loss,train/distill,")  # the run's csv is unchanged


def test_offline_views_turn_online_scale_and_rotation_off(tmp_path: Path) -> None:
    from dinocache.train.overrides import apply_augmentation_policy, ultralytics_overrides

    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a]\n")
    plain = ultralytics_overrides(TrainConfig(data=str(tmp_path / "data.yaml")), tmp_path / "r", "cpu")
    assert "scale" not in plain  # Ultralytics' defaults (scale 0.5) for data that are not augment's views
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    cfg = TrainConfig(data=str(tmp_path / "data.yaml"), epochs=30)
    ov = ultralytics_overrides(cfg, tmp_path / "r", "cpu")
    assert (ov["scale"], ov["degrees"], ov["close_mosaic"]) == (0.0, 0.0, 3)
    msg = apply_augmentation_policy(cfg, ov)
    assert "scale, degrees off by default" in msg and "mosaic=1 (off for the last 3 of 30 epochs)" in msg
    ov2 = ultralytics_overrides(
        TrainConfig(data=str(tmp_path / "data.yaml"), extra={"scale": 0.3}), tmp_path, "cpu"
    )
    assert ov2["scale"] == 0.3  # the user's value wins


def test_quiet_log_counts_freeze_lines_and_drops_fast_access() -> None:
    from dinocache.core.logs import QuietLog

    q = QuietLog()

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("ultralytics", logging.INFO, __file__, 1, msg, None, None)

    assert not q.filter(rec("Freezing layer 'model.0.conv.weight'")) and q.frozen == 1
    assert not q.filter(rec("train: Fast image access ✅ (ping: 0.1 ms)"))
    assert not q.filter(rec("val: Fast image access ✅ (ping: 0.1 ms)"))
    assert q.filter(rec("anything else"))
