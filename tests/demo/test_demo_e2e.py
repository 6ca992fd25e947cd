"""`dinocache demo` end to end at a tiny size (random teacher, 2 epochs): every step runs, both runs train,
the table and the three files come out. Slow (a few minutes on 2 shared cores): CI should run it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_none_and_cache_and_prints_the_table(tmp_path: Path, capsys, monkeypatch) -> None:
    from dinocache.demo import main

    cfg = json.loads((REPO / "config.json").read_text())
    cfg["imgsz"] = 64
    cfg["augment"]["views"] = 1
    cfg["train"].update(epochs=2, batch=16, nbs=16, workers=0, device="cpu", eval_interval_epochs=1)
    cfg["train"].update(dino_viz_every_n_epochs=1, wandb_enabled=False)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(os.environ, "DINOCACHE_HOME", str(tmp_path / "home"))
    assert main(["--config", "config.json", "--teacher", "random", "precompute.device=cpu"]) == 0
    out = capsys.readouterr().out
    head = next(i for i, ln in enumerate(out.splitlines()) if ln.startswith("teacher_source"))
    rows = out.splitlines()[head + 1 : head + 3]
    assert [r.split()[0] for r in rows] == ["none", "cache"]
    assert "open these first:" in out and "results.png" in out
    assert "(not written)" not in out.split("open these first:")[1]
