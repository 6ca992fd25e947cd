"""The trainer integration: `after_save_model` on a stand-in trainer, and (slow) inside a real training run."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import torch
from dinocache.train.config import TrainConfig
from dinocache.train.eval_hooks import after_save_model, finish_run

from dinocache.core.config import build

IMGSZ = 128


def _check_run_outputs(run: Path, eval_epochs: list[int], viz_epochs: list[int], wandb: bool = True) -> None:
    with open(run / "eval" / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == eval_epochs
    assert (run / "weights" / "best_geo.pt").is_file()
    for e in eval_epochs:
        d = run / "eval" / f"epoch_{e:03d}" / "viz" / "val"
        index = json.loads((d / "index.json").read_text())
        assert index["epoch"] == e and index["samples"]
        for s in index["samples"]:
            for f in s["files"].values():
                assert cv2.imread(str(d / f)) is not None
    for e in viz_epochs:
        pngs = sorted((run / "dino_viz" / f"epoch_{e:03d}").glob("*.png"))
        kinds = {p.stem.rsplit("_", 1)[1] for p in pngs}
        assert kinds == {"teacher", "student", "mask", "diff"}
        assert all(cv2.imread(str(p)) is not None for p in pngs)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert bool(list((run / "wandb").glob("offline-run-*"))) == wandb


def test_after_save_model_with_stand_in_trainer(tmp_path, demo_data, monkeypatch):
    """Everything the hook reads from the trainer, faked; the model is the real DistillOBBModel."""
    from dinocache.train.export import export_clean
    from dinocache.train.model import DistillOBBModel
    from ultralytics.utils.torch_utils import ModelEMA

    torch.manual_seed(0)
    model = DistillOBBModel("yolo26n-obb.yaml", nc=5, verbose=False, distill_channels=8)
    model.nc, model.names = 5, {i: str(i) for i in range(5)}  # set by the trainer's set_model_attributes
    ema = ModelEMA(model).ema
    run = tmp_path / "runs" / "r" / "train"
    (run / "weights").mkdir(parents=True)
    last = run / "weights" / "last.pt"
    torch.save(
        {"model": None, "ema": export_clean(ema).half(), "train_args": {"imgsz": IMGSZ, "task": "obb"}}, last
    )
    cfg = build(
        TrainConfig,
        {
            "data": str(demo_data),
            "teacher_source": "online",
            "eval_interval_epochs": 2,
            "dino_viz_every_n_epochs": 3,
            "epochs": 4,
            "dino_distill_channels": 8,
            "wandb_enabled": False,
        },
    )
    calls = []

    def online_teacher_features(img):
        calls.append(tuple(img.shape))
        return torch.randn(img.shape[0], 8, IMGSZ // 16, IMGSZ // 16)

    trainer = SimpleNamespace(
        dino=cfg,
        save_dir=run,
        args=SimpleNamespace(data=str(demo_data), imgsz=IMGSZ, batch=4),
        device=torch.device("cpu"),
        epochs=4,
        stop=False,
        last=last,
        tloss=torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5]),
        label_loss_items=lambda t, prefix: {
            f"{prefix}/{k}": float(v)
            for k, v in zip(["box_loss", "cls_loss", "l1_loss", "angle_loss", "distill"], t)
        },
        metrics={"metrics/mAP50(B)": 0.0},
        lr={"lr/pg0": 1e-3},
        stage="A",
        model=model,
        ctx=None,
        online_teacher_features=online_teacher_features,
    )
    results = []
    for epoch in range(4):
        trainer.epoch = epoch
        trainer.stop = epoch == 3
        results.append(after_save_model(trainer, ema))
    finish_run(trainer)
    # eval at epochs 2 and 4 (the last), DINO viz at 3 and 4 (the last)
    assert [r is not None for r in results] == [False, True, False, True]
    assert results[1]["grade"] == 0.0  # a random model has nothing above conf 0.9
    assert calls and calls[0] == (1, 3, IMGSZ, IMGSZ)
    _check_run_outputs(run, [2, 4], [3, 4], wandb=False)  # the offline W&B folder: test_grade_logging
    assert not (run / "dino_viz" / "epoch_002").exists()
    # best_geo.pt is a stripped checkpoint that loads as a plain model
    from ultralytics.utils.patches import torch_load

    ck = torch_load(run / "weights" / "best_geo.pt", map_location="cpu")
    assert ck["optimizer"] is None and type(ck["model"]).__name__ == "OBBModel"


def test_real_training_run_writes_everything(tmp_path, demo_data, tiny_teacher_dir, monkeypatch):
    """A 2-epoch online-teacher run: the trainer's own save_model/final_eval drive grade, viz and logging."""
    from dinocache.train.run import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    # The trainer calls after_save_model from its on_model_save callback and finish_run from final_eval itself.
    cfg = build(
        TrainConfig,
        {
            "data": str(demo_data),
            "dino_root": str(tiny_teacher_dir),
            "cache": "",
            "teacher_source": "online",
            "imgsz": IMGSZ,
            "epochs": 2,
            "batch": 4,
            "workers": 0,
            "device": "cpu",
            "nbs": 4,
            "warmup_epochs": 0,
            "dino_distill_channels": 8,
            "dino_distill_warmup_epochs": 0,
            "eval_interval_epochs": 1,
            "dino_viz_every_n_epochs": 1,
            "artifacts_root": str(tmp_path / "artifacts"),
            "name": "run",
            "extra": {"plots": False},
        },
    )
    trainer = train(cfg)
    run = Path(trainer.save_dir)
    _check_run_outputs(run, [1, 2], [1, 2])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/box_loss", "train/distill", "eval/grade", "curriculum/distill_weight", "lr/pg0"} <= tags
    assert [e.step for e in ea.Scalars("eval/grade")] == [1, 2]


def test_failed_evaluation_is_recorded_and_ends_the_run_non_zero(tmp_path, demo_data, monkeypatch):
    """A malformed val label: training goes on (the hook returns), but eval/failures.txt names it, the
    scalar eval/failed is logged, raise_if_failed raises EvalFailed and `dinocache train` exits 1."""
    import shutil

    import pytest
    from dinocache.train import cli
    from dinocache.train.eval_hooks import EvalFailed, raise_if_failed

    data = tmp_path / "data"
    shutil.copytree(demo_data.parent, data)
    bad = sorted((data / "labels" / "val").glob("*.txt"))[0]
    bad.write_text("0 0.1 0.1 0.2\n")  # 4 fields: the grader's label reader refuses it
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    cfg = build(
        TrainConfig,
        {"data": str(data / "data.yaml"), "teacher_source": "none", "epochs": 1, "wandb_enabled": False},
    )
    trainer = SimpleNamespace(
        dino=cfg,
        save_dir=run,
        args=SimpleNamespace(data=str(data / "data.yaml"), imgsz=IMGSZ, batch=4),
        device=torch.device("cpu"),
        epoch=0,
        epochs=1,
        stop=False,
        last=run / "weights" / "last.pt",
        tloss=None,
        metrics={},
        lr={},
        stage="B",
        model=torch.nn.Linear(1, 1),
    )
    logged = []
    from dinocache.grade.logging import RunLogger

    monkeypatch.setattr(RunLogger, "log_epoch", lambda self, epoch, scalars: logged.append(dict(scalars)))
    assert after_save_model(trainer) is None  # no metrics, no exception: the epoch is not lost
    finish_run(trainer)
    text = (run / "eval" / "failures.txt").read_text()
    assert "epoch 1: evaluation failed: DataError" in text and f"{bad.name}:1" in text
    assert logged and logged[-1]["eval/failed"] == 1.0
    with pytest.raises(EvalFailed, match=r"1 evaluation\(s\) failed.*failures.txt"):
        raise_if_failed(trainer)

    def failing_train(cfg):
        raise EvalFailed("1 evaluation(s) failed during training")

    monkeypatch.setattr("dinocache.train.run.train", failing_train)
    (tmp_path / "c.json").write_text("{}")
    assert (
        cli.main(["--config", str(tmp_path / "c.json"), f"data={data / 'data.yaml'}", "teacher_source=none"])
        == 1
    )
