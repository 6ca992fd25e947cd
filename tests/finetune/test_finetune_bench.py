"""The LoRA-vs-full benchmark helper returns comparable numbers (no timing assertions)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow  # two fresh interpreters importing torch + transformers
def test_lora_vs_full_shape(tiny_teacher_dir: Path) -> None:
    from dinocache.finetune.bench import lora_vs_full

    r = lora_vs_full(tiny_teacher_dir, batch=1, imgsz=32, steps=1, device="cpu")
    lo, fu = r["lora"], r["full"]
    assert lo["trainable_params"] < fu["trainable_params"] == fu["total_params"]
    assert lo["memory_kind"] == fu["memory_kind"] == "peak_rss_delta"
    assert lo["step_time_s"] > 0 and fu["step_time_s"] > 0 and r["param_ratio"] > 1
