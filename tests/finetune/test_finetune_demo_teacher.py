"""make-demo-teacher: demo-data -> a random DINOv3 ConvNeXt (3 stages, stride 16) -> training of every weight on the
class map -> a plain DINOv3 folder, shipped for the default settings, cached by its settings otherwise; the
probe reads the cached PCA features; precompute takes the shipped teacher at 128 px (8x8 maps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# plumbing only: the real one is shipped in finetune/demo_teacher_weights/ (its settings in demo_teacher.json)
SMALL = dict(
    n_train=16,
    n_val=4,
    epochs=1,
    batch=8,
    hidden_sizes=[8, 16, 32],
    depths=[1, 1, 1],
    probe_images=8,
)


@pytest.fixture(scope="module")
def demo_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dinocache.finetune.demo_teacher import make_demo_teacher

    return make_demo_teacher(out=str(tmp_path_factory.mktemp("dt") / "teacher"), **SMALL)


def test_demo_teacher_is_a_plain_dinov3_and_reused(demo_teacher: Path, monkeypatch) -> None:
    from dinocache.finetune import demo_teacher as dt
    from dinocache.teacher.registry import load_teacher

    t = load_teacher(demo_teacher, device="cpu")  # the real from_pretrained path
    info = json.loads((demo_teacher / dt.INFO_FILE).read_text())
    assert info["method"].startswith("training of every weight") and info["settings"]["n_train"] == 16
    assert t.family == "dinov3_convnext" and t.channels == 32 and t.stride(128) == 16
    assert t.fingerprint(128)["weights_sha256"] != ""
    assert len(info["history"]) == 1 and 0.0 <= info["val_balanced_accuracy"] <= 1.0
    assert info["probe"]["images_test"] == 4 and 0.0 <= info["probe"]["balanced_accuracy"] <= 1.0
    # same settings: returned at once, nothing rebuilt
    monkeypatch.setattr(dt, "_build", lambda *a, **k: pytest.fail("rebuilt a cached teacher"))
    assert dt.make_demo_teacher(out=str(demo_teacher), **SMALL) == demo_teacher


def test_default_settings_return_the_shipped_teacher(tmp_path: Path, monkeypatch) -> None:
    from dinocache.finetune import demo_teacher as dt
    from dinocache.teacher.registry import load_teacher

    monkeypatch.setenv("DINOCACHE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(dt, "_build", lambda *a, **k: pytest.fail("built instead of the shipped teacher"))
    assert dt.make_demo_teacher() == dt.SHIPPED
    info = json.loads((dt.SHIPPED / dt.INFO_FILE).read_text())
    assert info["key"] == dt.DemoTeacherConfig().key()
    t = load_teacher(dt.SHIPPED, device="cpu")
    assert t.family == "dinov3_convnext" and t.channels == dt.DemoTeacherConfig().hidden_sizes[-1]
    assert t.grid(128) == (8, 8) and t.stride(128) == 16  # the 16-px cells of a patch-16 ViT
    out = dt.make_demo_teacher(out=str(tmp_path / "copy"))  # OUT given: a copy of the shipped folder
    assert (out / "model.safetensors").read_bytes() == (dt.SHIPPED / "model.safetensors").read_bytes()


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
    assert main([str(tmp_path / "t"), "--depths", "1,1"]) == 2  # 3 stages in hidden_sizes
    assert "depths" in capsys.readouterr().err
    four = ["--hidden-sizes", "16,32,64,128", "--depths", "1,1,1,1"]  # 4 stages end at stride 32
    assert main([str(tmp_path / "t"), "--imgsz", "144", *four]) == 2
    assert "stride 32" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    assert main([str(tmp_path / "busy"), "--n-train", "16", "--epochs", "1"]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "busy" / "x.txt").exists()


def test_random_control_has_the_shipped_shape(tmp_path: Path) -> None:
    from dinocache.finetune import demo_teacher as dt
    from dinocache.teacher.registry import load_teacher

    cfg = dt.DemoTeacherConfig()
    ctrl = load_teacher(dt.random_base(tmp_path / "random", cfg), device="cpu")
    shipped = load_teacher(dt.SHIPPED, device="cpu")
    assert ctrl.fingerprint(128)["config"] == shipped.fingerprint(128)["config"]  # same shape, untrained
    assert ctrl.weights_sha256() != shipped.weights_sha256()


def test_precompute_takes_the_shipped_teacher(tmp_path: Path) -> None:
    """`dinocache precompute` with dino_root = the shipped folder at imgsz 128: the default layer is the last
    stage (stride 16), so the cache holds 8x8 maps, as a patch-16 ViT's would be."""
    from dinocache.datatools.demo_data import make_demo_dataset
    from dinocache.finetune import demo_teacher as dt
    from dinocache.precompute.run import main as precompute

    from dinocache import cache

    data = make_demo_dataset(tmp_path / "data", n_train=4, n_val=1, imgsz=128, seed=3)
    (tmp_path / "empty.json").write_text("{}")
    store = tmp_path / "features.zarr"
    rc = precompute(
        ["--config", str(tmp_path / "empty.json"), f"data={data / 'data.yaml'}", f"cache={store}",
         f"dino_root={dt.SHIPPED}", "imgsz=128", "channels=16", "device=cpu", "batch=4", "workers=0"]
    )  # fmt: skip
    assert rc == 0
    fc = cache.open(store)
    keys = list(fc.keys)
    assert len(keys) == 4
    f = fc.get(keys[0], channels=16)
    assert tuple(f.shape) == (16, 8, 8) and bool((abs(f) > 0).any())


def test_probe_scores_cached_features(demo_teacher: Path, tmp_path: Path) -> None:
    from dinocache.finetune.probe import probe_teacher

    r = probe_teacher(demo_teacher, tmp_path, imgsz=128, channels=8, images=8)
    assert r["images_fit"] == 4 and r["images_test"] == 4 and r["patches_test"] > 0
    for k in (
        "accuracy",
        "balanced_accuracy",
        "objectness_balanced_accuracy",
        "majority_baseline",
        "pure_patch_share",
    ):
        assert 0.0 <= r[k] <= 1.0
    for k in ("objectness_pure_patches", "objectness_mixed_patches"):  # NaN where a split lacks a side
        assert r[k] != r[k] or 0.0 <= r[k] <= 1.0


@pytest.mark.slow
def test_rebuild_reaches_the_shipped_probe(tmp_path: Path) -> None:
    """`dinocache make-demo-teacher OUT --rebuild` (the default settings, ~20 CPU-minutes on one thread)
    rebuilds the shipped teacher: the same probe figures within 0.02 (bit-identical on one CPU thread)."""
    from dinocache.finetune import demo_teacher as dt

    assert dt.main([str(tmp_path / "rebuilt"), "--rebuild"]) == 0
    shipped = json.loads((dt.SHIPPED / dt.INFO_FILE).read_text())["probe"]
    r = json.loads((tmp_path / "rebuilt" / dt.INFO_FILE).read_text())["probe"]  # the rebuild's own probe
    assert abs(r["balanced_accuracy"] - shipped["balanced_accuracy"]) <= 0.02
    assert abs(r["objectness_balanced_accuracy"] - shipped["objectness_balanced_accuracy"]) <= 0.02
