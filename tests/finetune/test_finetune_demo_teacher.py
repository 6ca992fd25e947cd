"""make-demo-teacher: our own tools (demo-data -> finetune-teacher -> merge-teacher) build a teacher that is
a plain DINOv3 folder, cached by its settings; the probe reads the cached PCA features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SMALL = dict(n_train=16, n_val=4, epochs=1, batch=8)  # plumbing only: the real one is 2000 images, 10 epochs


@pytest.fixture(scope="module")
def demo_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dinocache.finetune.demo_teacher import make_demo_teacher

    return make_demo_teacher(out=str(tmp_path_factory.mktemp("dt") / "teacher"), **SMALL)


def test_demo_teacher_is_a_plain_dinov3_and_reused(demo_teacher: Path, monkeypatch) -> None:
    from dinocache.finetune import demo_teacher as dt
    from dinocache.teacher.registry import load_teacher

    t = load_teacher(demo_teacher, device="cpu")  # the real from_pretrained path
    info = json.loads((demo_teacher / dt.INFO_FILE).read_text())
    assert info["method"].startswith("LoRA r=64") and info["settings"]["n_train"] == 16
    assert t.fingerprint(128)["weights_sha256"] != ""
    # same settings: returned at once, nothing rebuilt
    monkeypatch.setattr(dt, "_build", lambda *a, **k: pytest.fail("rebuilt a cached teacher"))
    assert dt.make_demo_teacher(out=str(demo_teacher), **SMALL) == demo_teacher


def test_default_folder_is_keyed_by_settings(tmp_path: Path, monkeypatch) -> None:
    from dinocache.finetune.demo_teacher import DemoTeacherConfig, default_out

    monkeypatch.setenv("DINOCACHE_HOME", str(tmp_path))
    a, b = default_out(DemoTeacherConfig()), default_out(DemoTeacherConfig(epochs=3))
    assert a.parent == tmp_path / "teachers" and a != b
    assert default_out(DemoTeacherConfig(out="x", rebuild=True)) == a  # out/rebuild do not change the weights


def test_bad_settings_name_the_key(tmp_path: Path, capsys) -> None:
    from dinocache.finetune.demo_teacher import main

    assert main([str(tmp_path / "t"), "--imgsz", "100"]) == 2
    assert "imgsz" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    assert main([str(tmp_path / "busy"), "--n-train", "16", "--epochs", "1"]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "busy" / "x.txt").exists()


def test_probe_scores_cached_features(demo_teacher: Path, tmp_path: Path) -> None:
    from dinocache.finetune.probe import probe_teacher

    r = probe_teacher(demo_teacher, tmp_path, imgsz=128, channels=8, images=8)
    assert r["images_fit"] == 4 and r["images_test"] == 4 and r["patches_test"] > 0
    for k in ("accuracy", "balanced_accuracy", "objectness_balanced_accuracy", "majority_baseline"):
        assert 0.0 <= r[k] <= 1.0
