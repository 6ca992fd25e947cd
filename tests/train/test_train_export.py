"""clean_checkpoint: a run's in-training checkpoint (DistillOBBModel) becomes a plain OBBModel, and a received
file that would run code when unpickled is refused by name without running it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


class RunsCode:
    """Pickles as a call of os.makedirs(marker): what a hostile checkpoint would do with a worse function."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_clean_checkpoint_makes_a_plain_model(tmp_path: Path) -> None:
    from dinocache.train.export import clean_checkpoint
    from dinocache.train.model import DistillOBBModel
    from ultralytics.nn.tasks import OBBModel

    model = DistillOBBModel("yolo26n-obb.yaml", nc=2, verbose=False, distill_channels=8)
    model.nc, model.names = 2, {0: "a", 1: "b"}  # set by the trainer's set_model_attributes
    pt = tmp_path / "last.pt"
    torch.save({"model": None, "ema": model.half(), "train_args": {"imgsz": 128, "task": "obb"}}, pt)
    clean_checkpoint(pt)
    ck = torch.load(pt, map_location="cpu", weights_only=False)
    assert type(ck["ema"]) is OBBModel and next(ck["ema"].parameters()).dtype == torch.half
    assert not [k for k in ck["ema"].state_dict() if k.startswith("distill_proj")]


def test_clean_checkpoint_refuses_a_code_carrying_file(tmp_path: Path) -> None:
    from dinocache.train.export import clean_checkpoint

    from dinocache.core.safeload import UnsafeFile

    marker = tmp_path / "ran"
    pt = tmp_path / "evil.pt"
    torch.save({"model": RunsCode(marker), "train_args": {"imgsz": 128}}, pt)
    before = pt.read_bytes()
    with pytest.raises(UnsafeFile, match=r"evil\.pt: refused"):
        clean_checkpoint(pt)
    assert not marker.exists(), "the checkpoint's code ran"
    assert pt.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
