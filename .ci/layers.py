"""Check the import floors (the `[tool.importlinter]` contract in pyproject.toml) with import-linter,
and that no package has an import circle among its own modules.

    python .ci/layers.py        # `just check` and .ci/run call this

import-linter finds a package's modules by walking its folder, but our subpackages live in top-level
folders mapped by `[tool.setuptools.package-dir]`; so we lay the sources out as installed
(`dinocache/cache/...`) in a temporary folder and run `lint-imports` there.

Circles: inside each package (`dinocache`, `dinocache.train`, ...) the modules must form a graph without
cycles, a subpackage counting as one node. Every import statement counts, the ones inside a function
included: a function-level import only postpones the circle to call time (the two modules still can't be
read, tested or moved apart), and it is how every circle the code had was hidden from Python's own
import-time check. Imports under `if TYPE_CHECKING:` count too: a circle through type hints is still a
circle in the design (a `typing.Protocol` in the lower module is the way out).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Circles allowed for now, each as the set of modules that import each other round (one strongly connected
# component) with a comment saying why. The check fails on any circle not listed here, and on an entry that
# no longer matches a circle exactly (shrink or drop it then), so this list can only get shorter. Empty: keep it so.
ALLOWED_CYCLES: list[set[str]] = []


def lay_out(tmp: str) -> None:
    """Copy each `package-dir` folder to where it lands when installed, parents first."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, src in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):
        dst = Path(tmp, *name.split("."))
        shutil.copytree(ROOT / src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


def module_file(tmp: str, module: str) -> Path:
    path = Path(tmp, *module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def lazy_lines(path: Path) -> set[int]:
    """Line numbers of the import statements inside a function body (for the report)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines.update(n.lineno for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
    return lines


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns the components of more than one node (the circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def check_cycles(tmp: str) -> int:
    """Print every circle inside a package and return 1 when one is not in ALLOWED_CYCLES."""
    import grimp  # installed with import-linter

    sys.path.insert(0, tmp)
    graph = grimp.build_graph("dinocache", exclude_type_checking_imports=False, cache_dir=None)
    packages = sorted(m for m in graph.modules if graph.find_children(m))
    failed = 0
    seen: list[set[str]] = []
    for package in packages:
        children = sorted(graph.find_children(package))
        owner = {d: c for c in children for d in (c, *graph.find_descendants(c))}
        edges: dict[str, set[str]] = {}
        where: dict[tuple[str, str], list[str]] = {}
        for importer, top in owner.items():
            for imported in graph.find_modules_directly_imported_by(importer):
                target = owner.get(imported)
                if target is None or target == top:
                    continue
                edges.setdefault(top, set()).add(target)
                lazy = lazy_lines(module_file(tmp, importer))
                for detail in graph.get_import_details(importer=importer, imported=imported):
                    line = detail["line_number"]
                    kind = " (in a function)" if line in lazy else ""
                    path = module_file(tmp, importer).relative_to(tmp)
                    where.setdefault((top, target), []).append(f"{path}:{line}{kind}")
        for component in strongly_connected(children, edges):
            members = set(component)
            seen.append(members)
            allowed = members in ALLOWED_CYCLES
            print(
                f"{'allowed' if allowed else 'FORBIDDEN'} import circle in {package}: {', '.join(component)}"
            )
            for (a, b), places in sorted(where.items()):
                if a in members and b in members:
                    print(f"    {a} -> {b}: {', '.join(sorted(set(places)))}")
            failed |= not allowed
    for entry in ALLOWED_CYCLES:
        if entry not in seen:
            print(f"stale ALLOWED_CYCLES entry in .ci/layers.py (no such circle now): {sorted(entry)}")
            failed = 1
    if failed:
        print("import circles: FAILED (break the circle: move the shared names into a lower module)")
    else:
        print(f"import circles: none outside the allow-list ({len(seen)} allowed, listed above)")
    return int(failed)


def main() -> int:
    pyproject = ROOT / "pyproject.toml"
    with tempfile.TemporaryDirectory() as tmp:
        lay_out(tmp)
        env = {**os.environ, "PYTHONPATH": tmp}
        exe = Path(sys.executable).with_name("lint-imports")
        cmd = [str(exe) if exe.exists() else "lint-imports", str(pyproject), "--no-cache"]
        floors = subprocess.run(cmd, cwd=tmp, env=env).returncode
        circles = check_cycles(tmp)
    return floors or circles


if __name__ == "__main__":
    sys.exit(main())
