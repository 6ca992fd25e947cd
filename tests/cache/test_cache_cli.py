"""`dinocache cache info` / `verify`: outputs, and each verify failure (changed image, missing row,
row not done, NaN in a done row, other teacher) with counts and the offending key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import zarr
from dinocache.cache.cli import main as cache_main
from dinocache.precompute.run import main as precompute_main

IMGSZ = 128


@pytest.fixture(scope="module")
def built(
    demo_data: Path, tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(dataset folder, cache) made once; tests copy both before changing anything."""
    base = tmp_path_factory.mktemp("cli")
    data = base / "ds"
    shutil.copytree(demo_data.parent, data)
    store = base / "c.zarr"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = precompute_main(
            [
                f"data={data / 'data.yaml'}",
                f"dino_root={tiny_teacher_dir}",
                f"cache={store}",
                f"imgsz={IMGSZ}",
            ]
            + ["channels=4", "shard_size=4", "batch=8", "workers=1", "device=cpu", "pca_fit_images=8"]
        )
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return data, store


@pytest.fixture
def copy(built: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    data, store = built
    shutil.copytree(data, tmp_path / "ds")
    shutil.copytree(store, tmp_path / "c.zarr")
    return tmp_path / "ds", tmp_path / "c.zarr"


def verify(data: Path, store: Path, *extra: str) -> int:
    return cache_main(["verify", str(store), "--data", str(data / "data.yaml"), *extra])


def test_info_text_and_json(built, capsys) -> None:
    _, store = built
    assert cache_main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    for want in ("dinocache.features version 2", "N=16, done 16/16", "K=4 PCA components of 64", "grid 8x8"):
        assert want in out
    assert "2,048 logical" not in out and "512 logical" in out  # 4 * 8 * 8 * 2 bytes
    assert "uncompressed" in out and "4 images per shard, 4 shard(s)" in out  # codec=none by default
    assert "flips        none (cache_flips=false)" in out
    assert cache_main(["info", str(store), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n"] == 16 and d["done"] == 16 and d["k"] == 4 and d["grid"] == [8, 8]
    assert d["bytes_per_image"] == 512 and d["disk_bytes_per_done_image"] > 0
    assert d["teacher"]["layer"] == -1 and d["teacher"]["hidden_size"] == 64 and d["version"] == 2


def test_verify_ok_with_teacher(built, tiny_teacher_dir: Path, capsys) -> None:
    data, store = built
    assert verify(data, store, "--dino-root", str(tiny_teacher_dir)) == 0
    out = capsys.readouterr().out
    assert out.startswith("verify: OK") and "16/16 images" in out and "teacher fingerprint matches" in out


def test_verify_other_teacher_layer(built, tiny_teacher_dir: Path, capsys) -> None:
    data, store = built
    assert verify(data, store, "--dino-root", str(tiny_teacher_dir), "--layer", "1") == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "teacher.layer: cache -1, wanted 1" in err


def test_verify_changed_image(copy, capsys) -> None:
    data, store = copy
    f = data / "images" / "train" / "000004.png"
    cv2.imwrite(str(f), 255 - cv2.imread(str(f)))
    assert verify(data, store) == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch (image changed since it was cached): 1\n    row 4 images/train/000004.png" in err
    assert f"({store}/features/c.1.0.0.0)" in err and "dinocache cache repair" in err


def test_verify_missing_and_not_done_rows(copy, capsys) -> None:
    data, store = copy
    shutil.copy(data / "images" / "train" / "000001.png", data / "images" / "train" / "zz_new.png")
    g = zarr.open_group(str(store), mode="r+")
    done = g["done"][:]
    done[[3, 5]] = 0
    g["done"][:] = done
    assert verify(data, store) == 1
    err = capsys.readouterr().err
    assert "3 problem(s) over 17 dataset images" in err
    assert "no row in the cache: 1: images/train/zz_new.png" in err
    assert (
        "row not done: 2\n    row 3 images/train/000003.png" in err and "row 5 images/train/000005.png" in err
    )


def test_verify_nan_in_done_row(copy, capsys) -> None:
    data, store = copy
    g = zarr.open_group(str(store), mode="r+")
    x = g["features"][4:8]
    x[2, 0, 0, 0] = np.inf
    g["features"][4:8] = x
    assert verify(data, store) == 1
    err = capsys.readouterr().err
    assert f"row 6 images/train/000006.png: holds 1 NaN/inf value(s) ({store}/features/c.1.0.0.0)" in err


def test_missing_cache_and_bad_args(built, tmp_path: Path, capsys) -> None:
    data, _ = built
    assert verify(data, tmp_path / "nope.zarr") == 2
    assert "no feature cache there" in capsys.readouterr().err
    assert cache_main(["info", str(tmp_path / "nope.zarr")]) == 2
    assert verify(data, built[1], "--dino-root", str(tmp_path / "no_teacher")) == 2
    assert "make-tiny-teacher" in capsys.readouterr().err


def test_verify_follows_config_json_and_overrides(
    built, copy, tiny_teacher_dir: Path, tmp_path: Path, capsys
) -> None:
    """`just verify` = `cache verify --config config.json [key=value]`: paths come from the config's precompute
    section (with the shared top-level keys), so a changed `cache` is the one checked."""
    import json

    data, store = built
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "cache": str(store),
                "dino_root": str(tiny_teacher_dir),
                "precompute": {"data": str(data / "data.yaml")},
            }
        )
    )
    assert cache_main(["verify", "--config", str(cfg)]) == 0
    assert str(store) in capsys.readouterr().out
    (
        copy[0] / "images" / "train" / next(iter(sorted((copy[0] / "images" / "train").iterdir()))).name
    ).write_bytes(b"x")
    assert (
        cache_main(["verify", "--config", str(cfg), f"data={copy[0] / 'data.yaml'}", f"cache={copy[1]}"]) == 1
    )
    assert cache_main(["verify", "--config", str(cfg), "dataa=x"]) == 2
    assert "did you mean 'data'" in capsys.readouterr().err
    assert cache_main(["verify"]) == 2
    assert "no cache path" in capsys.readouterr().err
