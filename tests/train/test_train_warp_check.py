"""`dinocache warp-check`: the equivariance-gap table, its files, and its refusals."""

from __future__ import annotations

import csv
import json

import pytest
from dinocache.train.warp_check import main

SMALL = ["translate_px=[16]", "scales=[0.75]", "degrees=[15]", "mosaic_draws=1"]


def _rows(out) -> dict[tuple[str, str], dict]:
    data = json.loads((out / "warp_check.json").read_text())
    return {(r["family"], r["magnitude"]): r for r in data["rows"]}


def test_tiny_teacher_table_and_files(tiny_teacher_dir, demo_data, tmp_path, capsys):
    out = tmp_path / "wc"
    argv = ["--teacher", str(tiny_teacher_dir), "--data", str(demo_data), "--imgsz", "128", "--n-images", "2"]
    assert main([*argv, "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "cos_obj" in printed and "mosaic" in printed
    for name in ("warp_check.json", "warp_check.csv", "warp_check.png", "warp_check_viz.png", "args.yaml"):
        assert (out / name).stat().st_size > 0
    rows = _rows(out)
    assert set(f for f, _ in rows) == {"identity", "flip", "translate", "scale", "rotate", "mosaic"} | {
        "flip_view", "mosaic_flip", "mosaic_flip_view"
    }  # fmt: skip
    assert rows[("identity", "0")]["cos_background"] == pytest.approx(1.0, abs=1e-5)
    # cache_flips: a flip that reads the teacher's map of the flipped image is exact, for any teacher
    assert rows[("flip_view", "horizontal")]["cos_object"] == pytest.approx(1.0, abs=1e-5)
    assert rows[("flip_view", "horizontal")]["cos_background"] == pytest.approx(1.0, abs=1e-5)
    assert rows[("flip", "horizontal")]["cos_object"] < 0.99  # the random ViT is not flip-equivariant
    assert all(-1.0 <= r["cos_background"] <= 1.0 + 1e-6 for r in rows.values())
    with open(out / "warp_check.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_avgpool_reference_is_exact_where_it_should_be(demo_data, tmp_path):
    out = tmp_path / "pool"
    argv = [
        "--teacher",
        "avgpool",
        "--data",
        str(demo_data),
        "--imgsz",
        "128",
        "--n-images",
        "2",
        "--out",
        str(out),
    ]
    assert main([*argv, *SMALL]) == 0
    rows = _rows(out)
    for key in [("flip", "horizontal"), ("flip", "vertical"), ("translate", "16px")]:
        assert rows[key]["cos_object"] == pytest.approx(1.0, abs=1e-6)
        assert rows[key]["cos_background"] == pytest.approx(1.0, abs=1e-6)
    assert rows[("rotate", "15deg")]["cos_background"] < 1.0  # rotation is only approximately followed
    # an equivariant teacher: the cached flipped view changes nothing, in a mosaic either (same layouts)
    for k in ("cos_object", "cos_background"):
        assert rows[("mosaic_flip_view", "random")][k] == pytest.approx(
            rows[("mosaic_flip", "random")][k], abs=1e-6
        )


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--teacher", "/nonexistent/dinov3"], "dinov3"),
        (["--teacher", "avgpool", "--imgsz", "100"], "imgsz"),
        (["--teacher", "avgpool", "bogus_key=1"], "bogus_key"),
        (["--teacher", "avgpool", "split=test"], "test"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(demo_data, tmp_path, capsys, args, msg):
    out = tmp_path / "bad"
    assert main(["--data", str(demo_data), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and msg in err
    assert not out.exists() or not any(out.iterdir())


def test_missing_data_yaml(tmp_path, capsys):
    assert (
        main(["--teacher", "avgpool", "--data", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.slow  # ~40 s on the shared 2-core machine
def test_any_registry_family(demo_data, tmp_path):
    """A teacher of another family (the shipped DINOv3 ConvNeXt demo teacher, stride 16) is checked like the
    ViT: loaded as precompute loads it, its cells sized by its stride."""
    from dinocache.finetune.demo_teacher import SHIPPED

    out = tmp_path / "convnext"
    argv = ["--teacher", str(SHIPPED), "--data", str(demo_data), "--imgsz", "128", "--n-images", "2"]
    assert main([*argv, "--out", str(out), *SMALL, "viz=0"]) == 0
    rows = _rows(out)
    assert rows[("identity", "0")]["cos_object"] == pytest.approx(1.0, abs=1e-5)
    assert rows[("flip_view", "horizontal")]["cos_background"] == pytest.approx(1.0, abs=1e-5)
