"""`dinocache cache repair PATH --data DATA`: recomputes only the shards of bad or stale rows; the repaired cache
equals a fresh one bit for bit (every chunk file byte-identical), and `cache verify` passes afterwards."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from dinocache.cache.cli import main as cache_main

from dinocache.cli import main as dinocache_main

_spec = importlib.util.spec_from_file_location(
    "fault_damage", Path(__file__).with_name("test_fault_cache_damage.py")
)
damage = importlib.util.module_from_spec(_spec)
sys.modules["fault_damage"] = damage
_spec.loader.exec_module(damage)

CHUNK_DIRS = ("features", "done", "sha256", "keys")


def chunk_bytes(store: Path) -> dict[str, bytes]:
    """Every chunk file of the arrays, by relative path (zarr.json files and sidecars excluded)."""
    return {
        str(p.relative_to(store)): p.read_bytes() for d in CHUNK_DIRS for p in sorted((store / d).glob("c.*"))
    }


def assert_bit_identical(a: Path, b: Path) -> None:
    ca, cb = chunk_bytes(a), chunk_bytes(b)
    assert sorted(ca) == sorted(cb)
    diff = [k for k in ca if ca[k] != cb[k]]
    assert not diff, f"chunk files differ: {diff}"


REPAIRABLE = [k for k in damage.DAMAGE] + ["deleted done chunk"]


@pytest.mark.parametrize("name", REPAIRABLE)
def test_repair_equals_fresh_cache(name: str, work, fault_cache: Path, capsys) -> None:
    data, store = work
    {**damage.DAMAGE, **damage.VERIFY_ONLY}[name](data, store)
    rc = dinocache_main(["cache", "repair", str(store), "--data", str(data), "workers=0"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "repair:" in err
    assert_bit_identical(store, fault_cache)
    assert cache_main(["verify", str(store), "--data", str(data)]) == 0


def test_repair_recomputes_only_bad_shards(work, fault_cache: Path, capsys) -> None:
    data, store = work
    damage.flip_shard(data, store)  # row 4, shard 1
    before = {p.name: p.stat().st_mtime_ns for p in (store / "features").glob("c.*")}
    assert dinocache_main(["cache", "repair", str(store), "--data", str(data), "workers=0"]) == 0
    err = capsys.readouterr().err
    assert "1 bad row(s) in 1 shard(s) and 4 row(s) recomputed" in err
    after = {p.name: p.stat().st_mtime_ns for p in (store / "features").glob("c.*")}
    assert [k for k in before if before[k] != after[k]] == ["c.1.0.0.0"]


def test_repair_stale_image_equals_fresh(work, tmp_path: Path, tiny_teacher_dir: Path, capsys) -> None:
    """An image edited after precompute: repair recomputes its shard; equal to a fresh cache of the edited data."""
    import torch
    from dinocache.precompute.run import main as precompute

    data, store = work
    damage.edit_image(data, store)
    assert dinocache_main(["cache", "repair", str(store), "--data", str(data), "workers=0"]) == 0
    assert "1 image(s) changed" in capsys.readouterr().err
    fresh = tmp_path / "fresh.zarr"
    argv = [f"data={data}", f"dino_root={tiny_teacher_dir}", f"cache={fresh}", "imgsz=128", "channels=8"]
    argv += ["shard_size=4", "batch=4", "workers=1", "device=cpu", "pca_fit_images=8"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (tmp_path / "empty.json").write_text("{}")
        assert precompute(["--config", str(tmp_path / "empty.json"), *argv]) == 0
    finally:
        torch.set_num_threads(n)
    assert_bit_identical(store, fresh)


def test_repair_refuses_what_it_cannot_mend(work, tmp_path: Path, faults) -> None:
    data, store = work
    faults.expect_clear(
        "cache repair",
        "no cache there",
        dinocache_main,
        ["cache", "repair", str(tmp_path / "nope.zarr"), "--data", str(data)],
        ["nope.zarr", "nothing to repair"],
    )
    damage.broken_features_meta(data, store)
    faults.expect_clear(
        "cache repair",
        "broken features/zarr.json",
        dinocache_main,
        ["cache", "repair", str(store), "--data", str(data)],
        ["features/zarr.json"],
    )
    shutil.rmtree(store)
