"""One error base: every error class dinocache defines derives from DinocacheError, and a command line
tool turns it into `error: <message>` and exit 2."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from pathlib import Path

from dinocache.core.errors import DinocacheError

# modules that import optional or heavy extras at import time are still walked: all are installed here
PACKAGES = ["core", "teacher", "cache", "datatools", "precompute", "grade", "train", "finetune"]


def _error_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for pkg in PACKAGES:
        mod = importlib.import_module(f"dinocache.{pkg}")
        names = [f"dinocache.{pkg}"] + [
            m.name for m in pkgutil.iter_modules(mod.__path__, f"dinocache.{pkg}.")
        ]
        for name in names:
            module = importlib.import_module(name)
            for cls_name, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == name:
                    found[f"{name}.{cls_name}"] = cls
    for name in ("dinocache.compare", "dinocache.demo"):
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found[f"{name}.{cls_name}"] = cls
    return found


def test_every_error_class_derives_from_the_base():
    classes = _error_classes()
    assert "dinocache.cache.errors.CacheCorrupt" in classes and "dinocache.core.config.ConfigError" in classes
    strays = sorted(name for name, cls in classes.items() if not issubclass(cls, DinocacheError))
    assert not strays, f"error classes outside DinocacheError: {strays}"


def test_cli_turns_the_base_into_exit_2(tmp_path, capsys):
    from dinocache.cache.cli import main

    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no feature cache there" in err


def test_every_cli_refusal_catches_the_base() -> None:
    """An `except` that ends a command with exit 2 names DinocacheError (alone or beside a parser's own error),
    so a new error class reaches every command line tool without editing a tuple."""
    import ast

    root = Path(dinocache_root())
    stray = []
    # followlinks: in a checkout the stage packages are links inside dinocache/
    files = [Path(d, f) for d, _, fs in os.walk(root, followlinks=True) for f in fs if f.endswith(".py")]
    assert len(files) > 50, len(files)  # every package, not only dinocache/*.py
    for path in sorted(files):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ExceptHandler) or node.type is None:
                continue
            exits_2 = any(
                isinstance(n, ast.Return) and isinstance(n.value, ast.Constant) and n.value.value == 2
                for n in ast.walk(node)
            )
            if exits_2 and "DinocacheError" not in ast.unparse(node.type):
                stray.append(f"{path.relative_to(root)}:{node.lineno} except {ast.unparse(node.type)}")
    assert not stray, stray


def dinocache_root() -> str:
    """The folder of the installed `dinocache` package (its subpackages included, by links or the editable map)."""
    import dinocache

    return str(Path(dinocache.__file__).parent)
