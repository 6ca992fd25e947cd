"""Offline augmentation: square views, deterministic by seed, manifest, registry and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from dinocache.datatools import registry
from dinocache.datatools.augment import AugmentConfig, main, read_manifest, run

from dinocache.core.config import ConfigError


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".jpg", ".txt")
    }


def _cfg(data: Path, out: Path, **kw) -> AugmentConfig:
    base = dict(data=str(data), out=str(out), imgsz=128, views=3, seed=0, image_format="png", workers=2)
    base.update(kw)
    return AugmentConfig(**base)


def test_augment_writes_square_views_manifest_and_data_yaml(yolo_data, tmp_path):
    cfg = _cfg(
        yolo_data, tmp_path / "aug", characteristics=["rotation_invariant"], environment={"camera": "moving"}
    )
    data_yaml = run(cfg, log=lambda *_: None)
    out = tmp_path / "aug"
    d = yaml.safe_load(data_yaml.read_text())
    assert d["train"] == "images/train" and d["val"] == "images/val" and "path" not in d
    train = sorted((out / "images" / "train").glob("*.png"))
    val = sorted((out / "images" / "val").glob("*.png"))
    assert len(train) == 6 * 3 and len(val) == 2
    for p in train + val:
        assert cv2.imread(str(p)).shape == (128, 128, 3)
    header, views = read_manifest(out / "manifest.jsonl")
    assert header["pipeline"]["ops"]["rotate"]["degrees"] == 180
    assert "rotation_invariant" in header["pipeline"]["sources"]["rotate"]
    assert len(views) == 6 * 3 + 2
    v = views[0]
    assert (
        v["source"] == "images/train/im0.png" and v["view"] == 0 and np.asarray(v["matrix"]).shape == (3, 3)
    )
    assert v["seed"] == [0, 0, 0]
    val0 = next(r for r in views if r["split"] == "val")
    assert val0["degrees"] == 0 and val0["photometric"] == {} and val0["seed"] is None
    # labels normalised and inside the image
    for lp in (out / "labels" / "train").glob("*.txt"):
        for line in lp.read_text().splitlines():
            xy = np.array(line.split()[1:], dtype=float)
            assert xy.size == 8 and xy.min() >= 0 and xy.max() <= 1
    assert (out / "augment.yaml").is_file() and (out / "pipeline.yaml").is_file()


def test_augment_is_deterministic_by_seed(yolo_data, tmp_path):
    run(_cfg(yolo_data, tmp_path / "a", characteristics=["changes_shape"]), log=lambda *_: None)
    run(_cfg(yolo_data, tmp_path / "b", characteristics=["changes_shape"], workers=1), log=lambda *_: None)
    run(_cfg(yolo_data, tmp_path / "c", characteristics=["changes_shape"], seed=1), log=lambda *_: None)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a != c and a.keys() == c.keys()


def test_include_original_makes_view0_a_plain_letterbox(yolo_data, tmp_path):
    run(_cfg(yolo_data, tmp_path / "aug", views=2, include_original=True), log=lambda *_: None)
    _, views = read_manifest(tmp_path / "aug" / "manifest.jsonl")
    v0 = [r for r in views if r["split"] == "train" and r["view"] == 0]
    assert all(r["degrees"] == 0 and r["photometric"] == {} and r["scale"] == 1 for r in v0)


def test_demo_data_fixture_augments(demo_data, tmp_path):
    assert (
        main([f"data={demo_data}", f"out={tmp_path / 'aug'}", "imgsz=128", "views=1", "image_format=png"])
        == 0
    )
    assert len(list((tmp_path / "aug" / "images" / "train").glob("*.png"))) == 16


def test_bad_input_errors(yolo_data, tmp_path, capsys):
    assert main([f"data={yolo_data}", f"out={tmp_path / 'o'}", "characteristics=[rotation_invariantt]"]) == 2
    err = capsys.readouterr().err
    assert "rotation_invariantt" in err and "did you mean 'rotation_invariant'" in err
    assert main([f"data={yolo_data}", f"out={tmp_path / 'o'}", "environment={lighting: dim}"]) == 2
    assert "lighting" in capsys.readouterr().err
    assert main([f"data={yolo_data}", f"out={tmp_path / 'o'}", "imgsz=100"]) == 2
    assert "imgsz" in capsys.readouterr().err
    assert main([f"data={tmp_path / 'missing.yaml'}", f"out={tmp_path / 'o'}"]) == 2
    assert not (tmp_path / "o").exists()
    # a bad label line stops augmentation and names file:line; nothing is written
    lp = yolo_data.parent / "labels" / "train" / "im1.txt"
    lp.write_text(lp.read_text() + "0 0.1 0.2 0.3\n")
    assert main([f"data={yolo_data}", f"out={tmp_path / 'o'}", "views=1"]) == 2
    assert "labels/train/im1.txt:3" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.partial*"))


def test_existing_output_needs_overwrite(yolo_data, tmp_path, capsys):
    out = tmp_path / "aug"
    args = [f"data={yolo_data}", f"out={out}", "views=1", "imgsz=64", "image_format=png"]
    assert main(args) == 0
    assert main(args) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main([*args, "overwrite=true"]) == 0
    # the input dataset itself is never an allowed output
    assert main([f"data={yolo_data}", f"out={yolo_data.parent}", "overwrite=true"]) == 2
    assert (yolo_data.parent / "images" / "train" / "im0.png").is_file()


def test_registry_pipeline_merging_caps_and_register():
    p = registry.get_pipeline(["rotation_invariant", "chiral"], {"lighting": "variable"}, "high")
    assert p.ops["rotate"]["degrees"] == 180
    assert p.ops["flip"] == {"lr": 0.0, "ud": 0.0}  # chiral caps the flips others asked for
    assert p.ops["hsv"]["v"] >= 0.6 and "lighting=variable" in p.sources["brightness"]
    lo, hi = registry.get_pipeline([], {}, "low"), registry.get_pipeline([], {}, "high")
    assert lo.ops["scale"]["hi"] < hi.ops["scale"]["hi"]
    with pytest.raises(ConfigError, match="did you mean 'small_objects'"):
        registry.get_pipeline(["small_object"])
    with pytest.raises(ConfigError, match="intensity"):
        registry.get_pipeline([], {}, "extreme")
    with pytest.raises(ConfigError, match="no parameter 'angle'"):
        registry.register("x_test", "rotate", {"angle": 3})
    registry.register("underwater_test", "hsv", {"h": 0.05}, reason="test")
    try:
        assert registry.get_pipeline(["underwater_test"]).ops["hsv"]["h"] == 0.05
    finally:
        registry._REGISTRY.pop("underwater_test")


def test_plugin_module_registers_entries(yolo_data, tmp_path, monkeypatch, capsys):
    (tmp_path / "myaug_plugin_test.py").write_text(
        "import numpy as np\n"
        "from dinocache.datatools.registry import register, register_op\n"
        "register_op('invert_test', lambda img, params, rng: 255 - img)\n"
        "register('night_test', 'invert_test', {'p': 1.0}, reason='negative film')\n"
        "register('night_test', 'rotate', {'degrees': 7})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        args = ["characteristics=[night_test]", "plugins=[myaug_plugin_test]", f"data={yolo_data}"]
        assert main(["--show", *args]) == 0
        out = capsys.readouterr().out
        assert "invert_test" in out and "night_test" in out
        assert main([*args, f"out={tmp_path / 'aug'}", "views=1", "imgsz=64", "image_format=png"]) == 0
        _, views = read_manifest(tmp_path / "aug" / "manifest.jsonl")
        assert "invert_test" in views[0]["photometric"]
    finally:
        registry._REGISTRY.pop("night_test", None)
        registry.CUSTOM_OPS.pop("invert_test", None)
    assert main(["plugins=[no_such_module_xyz]", "--show"]) == 2


def test_manifest_matrix_maps_source_labels_to_view_labels(yolo_data, tmp_path):
    run(
        _cfg(yolo_data, tmp_path / "aug", views=1, min_visible=1.0, characteristics=["rotation_invariant"]),
        log=lambda *_: None,
    )
    header, views = read_manifest(tmp_path / "aug" / "manifest.jsonl")
    r = views[0]
    src = yolo_data.parent / r["source"]
    h, w = cv2.imread(str(src)).shape[:2]
    lab = np.array(
        [ln.split()[1:] for ln in (yolo_data.parent / "labels/train/im0.txt").read_text().splitlines()], float
    )
    pts = lab.reshape(-1, 4, 2) * [w, h]
    m = np.asarray(r["matrix"])
    mapped = pts @ m[:2, :2].T + m[:2, 2]
    out_lab = (tmp_path / "aug" / "labels" / "train" / "im0_v0.txt").read_text().splitlines()
    got = np.array([ln.split()[1:] for ln in out_lab], float).reshape(-1, 4, 2) * header["imgsz"]
    inside = [(p.min() >= 0) and (p.max() <= header["imgsz"]) for p in mapped]
    assert np.allclose(got, mapped[inside], atol=1e-3)
    assert json.dumps(header["config"])  # the resolved config is in the header


def test_augment_unlabeled_folder_and_list(tmp_path):
    """A folder (or .txt list) of unlabeled images of any size -> K square views each, no labels, ready for
    precompute and pretrain."""
    from dinocache.core.data import list_images

    src = tmp_path / "u"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(90, 140), (120, 80), (64, 64)]):
        cv2.imwrite(str(src / ("sub" if i else "") / f"im{i}.png"), rng.integers(0, 255, (h, w, 3), np.uint8))
    for data, out in ((src, tmp_path / "aug"), (None, tmp_path / "aug2")):
        if data is None:  # the same images through a .txt list
            data = src / "list.txt"
            data.write_text("./im0.png\n./sub/im1.png\n./sub/im2.png\n")
        y = run(
            AugmentConfig(data=str(data), out=str(out), imgsz=64, views=2, workers=1), log=lambda *_: None
        )
        d = yaml.safe_load(y.read_text())
        assert set(d) == {"train", "names"} and d["names"] == {0: "object"}
        root, files = list_images(y)
        assert len(files) == 6 and all(cv2.imread(str(f)).shape[:2] == (64, 64) for f in files)
        labels = [out / "labels" / f.relative_to(out / "images").with_suffix(".txt") for f in files]
        assert all(lp.read_text() == "" for lp in labels)
