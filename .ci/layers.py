"""Check the import floors (the `[tool.importlinter]` contract in pyproject.toml) with import-linter.

    python .ci/layers.py        # `just check` and .ci/run call this

import-linter finds a package's modules by walking its folder, but our subpackages live in top-level
folders mapped by `[tool.setuptools.package-dir]`; so we lay the sources out as installed
(`dinocache/cache/...`) in a temporary folder and run `lint-imports` there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    pyproject = ROOT / "pyproject.toml"
    dirs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory() as tmp:
        # parents first, so "dinocache" is laid down before "dinocache.cache" goes inside it
        for name, src in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):
            dst = Path(tmp, *name.split("."))
            shutil.copytree(ROOT / src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "PYTHONPATH": tmp}
        exe = Path(sys.executable).with_name("lint-imports")
        cmd = [str(exe) if exe.exists() else "lint-imports", str(pyproject), "--no-cache"]
        return subprocess.run(cmd, cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
