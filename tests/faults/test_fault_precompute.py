"""Bad inputs to `dinocache precompute`: each a clear error naming the file/key, nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from dinocache.precompute.run import main as precompute_main

IMGSZ = 128


def argv(data: Path, teacher: Path, store: Path, *extra: str) -> list[str]:
    return [
        f"data={data}",
        f"dino_root={teacher}",
        f"cache={store}",
        f"imgsz={IMGSZ}",
        "channels=8",
        "shard_size=4",
        "batch=4",
        "workers=0",
        "device=cpu",
        "pca_fit_images=8",
        *extra,
    ]


@pytest.fixture
def cfg(tmp_path: Path) -> list[str]:
    (tmp_path / "empty.json").write_text("{}")
    return ["--config", str(tmp_path / "empty.json")]


def test_rerun_of_complete_cache_in_read_only_folder(
    work, tiny_teacher_dir, cfg, faults, monkeypatch
) -> None:
    """Was a traceback (PermissionError writing precompute.yaml). Root ignores chmod here, so the sidecar write is
    made to fail the way a read-only folder makes it fail."""
    import dinocache.cache.locations as locations

    data, store = work

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied", str(store / "precompute.yaml"))

    monkeypatch.setattr(locations, "write_sidecar", read_only)
    r = faults.run(
        "precompute",
        "complete cache, read-only folder",
        precompute_main,
        [*cfg, *argv(data, tiny_teacher_dir, store)],
        ok=True,
    )
    assert r.rc == 0 and "nothing to write, the cache is complete" in r.err, r.err
    # with rows still to write the same folder is a clear error naming the file
    import zarr

    g = zarr.open_group(str(store), mode="r+")
    g["done"][0:4] = np.zeros(4, np.uint8)
    faults.expect_clear(
        "precompute",
        "incomplete cache, read-only folder",
        precompute_main,
        [*cfg, *argv(data, tiny_teacher_dir, store)],
        ["precompute.yaml", "writable"],
    )


def test_losing_creator_is_told_to_wait_not_to_delete(
    work, tiny_teacher_dir, cfg, faults, monkeypatch, fault_cache, tmp_path
) -> None:
    """Two writers start on an empty path at once: the one that loses the race to create it must not be told
    to delete a store the other one is writing."""
    from dinocache.precompute import run as run_mod

    data, _ = work
    store = tmp_path / "race.zarr"
    fit = run_mod.Precompute.fit

    def fit_then_other_creates(self, spec, teacher):
        out = fit(self, spec, teacher)
        shutil.copytree(fault_cache, store)  # the other writer finished creating it meanwhile
        return out

    monkeypatch.setattr(run_mod.Precompute, "fit", fit_then_other_creates)
    r = faults.expect_clear(
        "precompute",
        "lost the race to create the cache",
        precompute_main,
        [*cfg, *argv(data, tiny_teacher_dir, store)],
        ["race.zarr", "Do not delete it", "rerun"],
    )
    assert "delete it first" not in r.err


def test_damaged_cache_rerun_names_chunk(work, tiny_teacher_dir, cfg, faults) -> None:
    data, store = work
    b = bytearray((store / "done" / "c.2").read_bytes())
    b[0] ^= 1
    (store / "done" / "c.2").write_bytes(bytes(b))
    faults.expect_clear(
        "precompute",
        "done chunk fails its checksum",
        precompute_main,
        [*cfg, *argv(data, tiny_teacher_dir, store)],
        ["done/c.2", "cache repair"],
    )


def _truncated_jpeg(data: Path) -> Path:
    src = data.parent / "images" / "train" / "000003.png"
    jpg = src.with_suffix(".jpg")
    cv2.imwrite(str(jpg), cv2.imread(str(src)))
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    src.unlink()
    return jpg


BAD = {
    "missing data.yaml": (lambda d, t, s, tmp: [f"data={tmp / 'nope.yaml'}"], ["nope.yaml"]),
    "missing dino_root": (lambda d, t, s, tmp: [f"dino_root={tmp / 'noteacher'}"], ["noteacher"]),
    "channels above the teacher's": (lambda d, t, s, tmp: ["channels=999"], ["channels"]),
    "imgsz not a multiple of the patch": (lambda d, t, s, tmp: ["imgsz=120"], ["imgsz"]),
    "negative batch": (lambda d, t, s, tmp: ["batch=-1"], ["batch"]),
    "unknown key": (lambda d, t, s, tmp: ["bacth=4"], ["bacth"]),
    "bad shard spec": (lambda d, t, s, tmp: ["shard=3/2"], ["shard"]),
    "cache path is a foreign folder": (
        lambda d, t, s, tmp: [f"cache={tmp / 'ds'}"],
        ["not a dinocache feature cache"],
    ),
    "truncated JPEG in the split": (
        lambda d, t, s, tmp: [f"cache={tmp / 'new.zarr'}", "_jpeg"],
        ["000003.jpg"],
    ),
    "image not imgsz x imgsz": (
        lambda d, t, s, tmp: [f"cache={tmp / 'new.zarr'}", "_small"],
        ["000005.png", "128x128"],
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs(name: str, work, tiny_teacher_dir, cfg, faults, tmp_path) -> None:
    data, store = work
    make, must = BAD[name]
    extra = make(data, tiny_teacher_dir, store, tmp_path)
    if "_jpeg" in extra:
        extra.remove("_jpeg")
        _truncated_jpeg(data)
    if "_small" in extra:
        extra.remove("_small")
        f = data.parent / "images" / "train" / "000005.png"
        cv2.imwrite(str(f), cv2.resize(cv2.imread(str(f)), (96, 96)))
    args = argv(data, tiny_teacher_dir, store)
    keys = {e.split("=", 1)[0] for e in extra}
    args = [a for a in args if a.split("=", 1)[0] not in keys] + extra
    faults.expect_clear("precompute", name, precompute_main, [*cfg, *args], must)


def test_json_config_errors(work, tiny_teacher_dir, tmp_path, faults) -> None:
    data, store = work
    bad = tmp_path / "bad.json"
    bad.write_text('{"precompute": {"batch": 4,}}')
    faults.expect_clear(
        "precompute", "config.json not JSON", precompute_main, ["--config", str(bad)], ["bad.json"]
    )
    bad.write_text(json.dumps({"precompute": {"imgsz": "big"}}))
    faults.expect_clear(
        "precompute", "config.json wrong type", precompute_main, ["--config", str(bad)], ["imgsz"]
    )
