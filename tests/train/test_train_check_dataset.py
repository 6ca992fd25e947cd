"""`dinocache check-dataset` (the seed's `train: check-dataset`): validates the training data once and
remembers a clean result by the dataset's fingerprint; `just train` depends on it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from dinocache.train.check_dataset import main


def test_check_once_then_remembered_then_changed(
    tmp_path: Path, demo_data: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("DINOCACHE_HOME", str(tmp_path / "home"))
    ds = tmp_path / "ds"
    shutil.copytree(demo_data.parent, ds)
    (tmp_path / "c.json").write_text(json.dumps({"train": {"data": str(ds / demo_data.name)}}))
    argv = ["--config", str(tmp_path / "c.json")]
    assert main(argv) == 0
    assert "0 errors" in capsys.readouterr().err
    assert main([*argv, "epochs=3 name=x"]) == 0  # train's own overrides are ignored; remembered
    assert "unchanged since it validated" in capsys.readouterr().err
    label = next((ds / "labels").rglob("*.txt"))
    time.sleep(0.01)
    label.write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")  # 7 fields: an error
    assert main(argv) == 1
    out = capsys.readouterr()
    assert label.name in out.out and "unchanged" not in out.err
    assert main([*argv, f"data={demo_data}"]) == 0  # data= picks another dataset


def test_before_train_leaves_config_errors_to_train(tmp_path: Path, capsys) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"train": {"data": str(tmp_path / "none.yaml")}}))
    argv = ["--config", str(tmp_path / "c.json")]
    assert main(argv) == 2 and "none.yaml does not exist" in capsys.readouterr().err
    assert main(["--before-train", *argv]) == 0  # `dinocache train`, next, refuses it with its own message
    assert "skipped" in capsys.readouterr().err


def test_just_train_depends_on_check_dataset() -> None:
    root = Path(__file__).parents[2]
    just = shutil.which("just") or str(Path(__import__("sys").executable).with_name("just"))
    out = subprocess.run(
        [just, "--justfile", str(root / "justfile"), "--dry-run", "train", "epochs=1"],
        capture_output=True,
        text=True,
        cwd=root,
    ).stderr
    lines = [ln for ln in out.splitlines() if ln.startswith("dinocache")]
    assert lines[0].startswith("dinocache check-dataset") and lines[1].startswith("dinocache train"), out
