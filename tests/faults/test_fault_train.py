"""`dinocache train` faults: a NaN/inf loss ends the run (non-zero exit, last good checkpoint kept, no NaN
weights written), a run that dies before its first checkpoint leaves no run folder, bad inputs are clear
errors, and the results.csv time column continues across a resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from dinocache.train.cli import main as train_main
from dinocache.train.model import DistillOBBModel


def write_cfg(tiny_train, tmp_path: Path, data: Path, store: Path, teacher: Path, **kw) -> Path:
    sec = tiny_train(
        tmp_path,
        **{
            "data": str(data),
            "dino_root": str(teacher),
            "cache": str(store),
            "epochs": 3,
            "stage_a_ratio": 0.34,
            "name": "x",
            "distill_geometric_aug": "off",
            **kw,
        },
    )
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"train": sec}))
    return p


def nan_from_batch(monkeypatch: pytest.MonkeyPatch, first_bad: int, value: float = float("nan")) -> None:
    """Training batch number `first_bad` (0-based, counted over the run) and later return a NaN/inf loss."""
    calls = {"n": 0}
    loss = DistillOBBModel.loss

    def poisoned(self, batch, preds=None):
        out, items = loss(self, batch, preds)
        if self.training:
            calls["n"] += 1
            if calls["n"] > first_bad:
                out = out * value
        return out, items

    monkeypatch.setattr(DistillOBBModel, "loss", poisoned)


RUN = ("artifacts", "yolo26n-obb", "runs", "x", "train")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_loss_in_epoch_2_keeps_epoch_1(
    value, work, tmp_path, tiny_teacher_dir, tiny_train, monkeypatch, faults
) -> None:
    data, store = work
    nan_from_batch(monkeypatch, first_bad=5, value=value)  # 4 batches per epoch: the 2nd batch of epoch 2
    cfg = write_cfg(tiny_train, tmp_path, data, store, tiny_teacher_dir)
    r = faults.expect_clear(
        "train",
        f"{value} loss in epoch 2",
        train_main,
        ["--config", str(cfg)],
        ["epoch 2/3", "last.pt", "resume=true"],
        intact=lambda: (
            torch.load(tmp_path.joinpath(*RUN, "weights", "resume.pt"), weights_only=True)["epoch"] == 0
        ),
    )
    assert r.rc == 1
    run = tmp_path.joinpath(*RUN)
    state = torch.load(run / "weights" / "resume.pt", weights_only=True)
    assert state["epoch"] == 0  # epoch 1's state; the poisoned epoch was never saved
    assert all(torch.isfinite(v).all() for v in state["ema"].values() if v.is_floating_point())
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert len(rows) == 1 and "nan" not in json.dumps(rows).lower() and "inf" not in json.dumps(rows).lower()


def test_nan_loss_before_first_checkpoint_leaves_no_run(
    work, tmp_path, tiny_teacher_dir, tiny_train, monkeypatch, faults
) -> None:
    data, store = work
    nan_from_batch(monkeypatch, first_bad=1)
    cfg = write_cfg(tiny_train, tmp_path, data, store, tiny_teacher_dir)
    r = faults.expect_clear(
        "train",
        "NaN loss in epoch 1",
        train_main,
        ["--config", str(cfg)],
        ["epoch 1/3", "no checkpoint had been saved yet"],
        intact=lambda: not tmp_path.joinpath(*RUN[:-1]).exists(),
    )
    assert r.rc == 1
    assert not tmp_path.joinpath(*RUN).exists() and not tmp_path.joinpath(*RUN[:-1]).exists()
    # resume=true finds nothing to pick up, and a fresh run with the same name starts cleanly
    monkeypatch.undo()
    faults.expect_clear(
        "train",
        "resume=true after a run that left no checkpoint",
        train_main,
        ["--config", str(cfg), "resume=true"],
        ["resume", "runs"],
    )
    assert train_main(["--config", str(cfg), "epochs=1"]) == 0
