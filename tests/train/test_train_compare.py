"""`dinocache compare`: modes differ only in what they name; bad options name the key; tables and plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


def test_modes_differ_only_in_their_keys(tmp_path: Path) -> None:
    from dinocache.compare import MODES, CompareConfig, run_config

    base = {"data": "d/data.yaml", "epochs": 7, "imgsz": 128, "lr0": 0.002}
    cfgs = {m: run_config(base, m, 3, CompareConfig(), tmp_path) for m in MODES}
    for m, c in cfgs.items():
        assert (c.seed, c.name, c.epochs, c.lr0) == (3, f"{m}-s3", 7, 0.002)
        assert c.artifacts_root == str(tmp_path / "runs")
    assert cfgs["online"].teacher_source == "online" and cfgs["online"].distill_geometric_aug == "warp"
    assert cfgs["cache-shuffled"].distill_shuffle_maps and not cfgs["cache"].distill_shuffle_maps
    assert cfgs["cache-off"].distill_geometric_aug == "off"
    assert run_config(base, "none", 0, CompareConfig(epochs=2), tmp_path).epochs == 2
    assert cfgs["cache-flips"].distill_cache_flips == "on" and cfgs["cache"].distill_cache_flips == "auto"
    assert cfgs["cache-flips"].cache == cfgs["cache"].cache  # no flips_cache: the train section's cache
    flips = run_config(base, "cache-flips", 0, CompareConfig(flips_cache="f.zarr"), tmp_path)
    assert (
        flips.cache == "f.zarr"
        and run_config(base, "cache", 0, CompareConfig(flips_cache="f.zarr"), tmp_path).cache != "f.zarr"
    )


@pytest.mark.parametrize(
    "opts, key",
    [
        (["modes=none,cahce"], "modes"),
        (["seeds=0"], "seeds"),
        (["val_every=0"], "val_every"),
        (["epoch=3"], "epoch"),
    ],
)
def test_bad_options_name_the_key(opts: list[str], key: str, tmp_path: Path, capsys) -> None:
    from dinocache.compare import main

    (tmp_path / "c.json").write_text('{"train": {"data": "x/data.yaml"}}')
    assert main(["--config", str(tmp_path / "c.json"), *opts]) == 2
    assert key in capsys.readouterr().err


def test_summary_tables_and_plot(tmp_path: Path) -> None:
    from dinocache.compare import summarise, write_outputs

    def run(seed: int, m: float) -> dict:
        curves = {"epoch": [1, 2], "map50": [0.0, m], "map50_95": [0.0, m / 2], "distill_loss": [1.0, 0.5],
                  "val_box_loss": [2.0, 1.0], "val_cls_loss": [3.0, 2.0]}  # fmt: skip
        return {"run": f"x-s{seed}", "seed": seed, "map50": m, "map50_95": m / 2, "grade": 0.0,
                "val_box_loss": 1.0, "val_cls_loss": 2.0, "distill_loss_last": 0.5, "s_per_img": 0.1,
                "cpu_s_per_img": 0.2, "curves": curves}  # fmt: skip

    runs = {"none": [run(0, 0.1), run(1, 0.3)], "cache": [run(0, 0.4), run(1, 0.6)]}
    s = {r["mode"]: r for r in summarise(runs)}
    assert math.isclose(s["none"]["map50_mean"], 0.2) and math.isclose(s["cache"]["map50_delta_vs_none"], 0.3)
    assert math.isclose(s["cache"]["map50_std"], math.sqrt(0.02))
    write_outputs(
        tmp_path, runs, {"epochs": 2, "seeds": [0, 1], "imgsz": 128, "data": "d", "train_images": 4}
    )
    md = (tmp_path / "compare.md").read_text()
    assert "| cache | 2 | 0.5000 ± 0.1414 |" in md
    assert (tmp_path / "val_map.png").stat().st_size > 0
    assert len((tmp_path / "compare.csv").read_text().splitlines()) == 5
    assert json.loads((tmp_path / "compare.json").read_text())["summary"][1]["mode"] == "cache"


def test_shuffled_lookup_is_a_derangement(tmp_path: Path) -> None:
    from dinocache.train.dataset import TeacherLookup

    class FC:
        keys = [f"images/train/{i:03d}.png" for i in range(7)]

    lk = TeacherLookup("unused", tmp_path, 4, shuffle_seed=0)
    lk._fc, lk._pid = FC(), __import__("os").getpid()
    other = {k: lk.other_key(k) for k in FC.keys}
    assert all(v != k for k, v in other.items()) and sorted(other.values()) == FC.keys
    lk2 = TeacherLookup("unused", tmp_path, 4, shuffle_seed=0)
    lk2._fc, lk2._pid = FC(), lk._pid
    assert {k: lk2.other_key(k) for k in FC.keys} == other  # seeded: the same control every time


@pytest.mark.slow  # two 1-epoch trainings + grading (~15 s CPU)
def test_compare_end_to_end(
    tmp_path: Path, demo_data: Path, tiny_teacher_dir: Path, feature_cache: Path, capsys
) -> None:
    from dinocache.compare import main

    train = {
        "data": str(demo_data), "dino_root": str(tiny_teacher_dir), "cache": str(feature_cache), "imgsz": 128,
        "batch": 4, "nbs": 4, "workers": 0, "device": "cpu", "warmup_epochs": 0, "dino_distill_channels": 8,
        "eval_enabled": False, "dino_viz_enabled": False, "wandb_enabled": False, "extra": {"plots": False},
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps({"train": train}))
    out = tmp_path / "cmp"
    rc = main(["--config", str(tmp_path / "c.json"), "modes=none,cache-shuffled", "seeds=1", "epochs=2",
               "val_every=2", f"out={out}"])  # fmt: skip
    assert rc == 0 and str(out) in capsys.readouterr().out
    doc = json.loads((out / "compare.json").read_text())
    assert [r["mode"] for r in doc["summary"]] == ["none", "cache-shuffled"]
    run = doc["runs"]["cache-shuffled"][0]
    assert run["curves"]["epoch"] == [2], run["curves"]
    assert run["distill_loss_last"] > 0 and doc["runs"]["none"][0]["distill_loss_last"] == 0
    assert run["train_images"] == 16 and "grade" in run
    assert (out / "compare.md").exists() and (out / "compare.csv").exists() and (out / "val_map.png").exists()


def test_cache_flips_mode_needs_a_cache_with_flipped_views(
    tmp_path: Path, demo_data: Path, tiny_teacher_dir: Path, feature_cache: Path, capsys
) -> None:
    """Refused before any training, naming the key and the cache, when the cache holds no flipped views."""
    from dinocache.compare import main

    train = {"data": str(demo_data), "dino_root": str(tiny_teacher_dir), "cache": str(feature_cache), "imgsz": 128,
             "dino_distill_channels": 8, "device": "cpu", "workers": 0}  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps({"train": train}))
    out = tmp_path / "cmp"
    assert main(["--config", str(tmp_path / "c.json"), "modes=none,cache-flips", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert "distill_cache_flips=on" in err and str(feature_cache) in err
    assert not (out / "compare.json").exists()
