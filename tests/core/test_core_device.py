"""The one device resolver: the same names mean the same device for our modules and for Ultralytics."""

from __future__ import annotations

import pytest
import torch

from dinocache.core.config import ConfigError
from dinocache.core.device import select_device, ultralytics_device


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device"):
        select_device("not-a-device")
    if not torch.cuda.is_available():
        for d in ("0", "cuda:0", "cuda"):
            with pytest.raises(ConfigError, match="CUDA"):
                select_device(d)


def test_ultralytics_device() -> None:
    assert ultralytics_device("cpu") == "cpu"
    assert ultralytics_device("auto") == ("0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device"):
        ultralytics_device("gpu")
    if torch.cuda.is_available():
        assert ultralytics_device("cuda:0") == ultralytics_device("0") == ultralytics_device("cuda") == "0"
    else:
        with pytest.raises(ConfigError, match="CUDA"):
            ultralytics_device("cuda:0")


def test_multi_gpu_list_is_counted(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"needs 2 CUDA GPUs but this machine has 0 CUDA GPUs; GPU 0, 1"):
        ultralytics_device("0,1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ultralytics_device("0,1") == "0,1"
