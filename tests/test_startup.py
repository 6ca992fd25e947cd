"""Light commands start fast: `--help`, `dataset inspect/validate` and `cache info` import neither torch nor
Ultralytics nor transformers (those cost 3-7 s on a shared 2-core machine). Measured with
`python -X importtime` (which modules were imported), not wall time, so the test is stable under load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "ultralytics", "transformers")


def imported(args: list[str], cwd: Path) -> tuple[int, set[str]]:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dinocache.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    mods = {ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    return r.returncode, mods


@pytest.fixture(scope="module")
def small_cache(demo_data: Path, tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dinocache.precompute.run import main as precompute

    out = tmp_path_factory.mktemp("startup") / "c.zarr"
    args = [f"data={demo_data}", f"cache={out}", f"dino_root={tiny_teacher_dir}", "imgsz=128", "channels=4"]
    assert precompute([*args, "device=cpu", "batch=8", "workers=0", "pca_fit_images=4"]) == 0
    return out


def test_light_commands_import_no_torch(demo_data: Path, small_cache: Path, tmp_path: Path) -> None:
    for args in (
        ["--help"],
        ["dataset", "inspect", str(demo_data.parent)],
        ["dataset", "validate", str(demo_data)],
        ["cache", "info", str(small_cache)],
    ):
        rc, mods = imported(args, tmp_path)
        assert rc == 0, args
        heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY)
        assert not heavy, f"dinocache {' '.join(args)} imported {heavy[:5]}"
        if args[0] == "cache":
            assert "dinocache.cache.store" in mods  # the parse sees what the command did import
