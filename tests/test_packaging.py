"""The wheel installs one top-level package, `dinocache`, and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy of the tracked files: setuptools writes build/ and *.egg-info next to the sources,
    # which must not land in the checkout
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    src = out / "src"
    for f in listed.decode().split("\0"):
        if f and (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    # no build isolation: the installed setuptools builds it offline in a few seconds
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run([*pip, str(src)], check=True, timeout=300, cwd=out)
    (whl,) = out.glob("dinocache-*.whl")
    return whl


def test_wheel_holds_only_dinocache(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"dinocache"}, sorted(top)
    (di,) = dist_info
    assert zipfile.ZipFile(wheel).read(f"{di}/top_level.txt").decode().split() == ["dinocache"]
    # every stage folder is inside the namespace
    for pkg in ("core", "teacher", "cache", "datatools", "precompute", "grade", "train", "finetune"):
        assert f"dinocache/{pkg}/__init__.py" in names, pkg
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    # the per-teacher defaults the fine-tuning code reads are package data
    for f in (
        "teacher_grounding_dino_lora.yaml",
        "teacher_sam_lora.yaml",
        "preprocessing.yaml",
        "training_dynamics.yaml",
        "checkpoint_config.yaml",
    ):
        assert f"dinocache/finetune/configs/defaults/{f}" in names, f


def test_checkout_resolves_every_package_by_path_alone() -> None:
    """Editors (pyright, jedi) and `python` run in the checkout find `dinocache.X` by path, without the editable
    install's import hook: the repository's dinocache/ folder holds a link to each stage folder mapped by
    `[tool.setuptools.package-dir]`."""
    import tomllib
    from importlib.machinery import PathFinder

    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = PathFinder.find_spec("dinocache", [str(ROOT)])
    assert top is not None and Path(top.origin) == ROOT / "dinocache" / "__init__.py"
    for name, folder in dirs.items():
        if name == "dinocache":
            continue
        link = ROOT / Path(*name.split("."))
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), f"{link} -> ../{folder}"
        spec = PathFinder.find_spec(name, top.submodule_search_locations)
        assert spec is not None and Path(spec.origin).resolve() == (ROOT / folder / "__init__.py").resolve()
