"""Docs are true: every config key that README.md or docs/*.md documents exists in a config dataclass.

A documented key is (a) a backticked name in the first column of a table whose header says `key`, and
(b) a `key=value` argument in a code line that runs `dinocache ...` or `just ...`. Each must be a field of one
of the entry points' config dataclasses (discovered: every dataclass with a `validate()` in the package), or,
for `dinocache train`, an Ultralytics training argument (every one is a key, gathered into `extra`).
A `name_*` wildcard must match at least one field.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def config_keys() -> set[str]:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    names = set(packages)
    for pkg in packages:  # each stage folder is its own path (package-dir), so walk each package
        names |= {m.name for m in pkgutil.iter_modules(importlib.import_module(pkg).__path__, f"{pkg}.")}
    keys: set[str] = set()
    for name in sorted(names):
        if name.endswith("__main__"):
            continue
        mod = importlib.import_module(name)
        for obj in vars(mod).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and hasattr(obj, "validate"):
                keys |= {f.name for f in dataclasses.fields(obj)}
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return keys | set(DEFAULT_CFG_DICT)


def documented_keys(text: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    lines = text.splitlines()
    in_key_table = False
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            is_header = n < len(lines) and re.match(r"^\|\s*:?-{3,}", lines[n].strip())
            if is_header:
                in_key_table = bool(re.fullmatch(r"keys?|options?", cells[0].strip("`* ").lower()))
                continue
            if in_key_table and not re.fullmatch(r":?-+:?", cells[0]):
                found += [(n, k) for k in re.findall(r"`([a-z][a-z0-9_]*\*?)`", cells[0])]
        else:
            in_key_table = False
        if re.match(r"^(\$ )?(dinocache|just) ", s):
            cmd = s.split("#", 1)[0]
            found += [(n, k) for k in re.findall(r"(?:^|\s)([a-z][a-z0-9_]*)=", cmd)]
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_key_exists(doc: Path) -> None:
    known = config_keys()
    bad = []
    for n, k in documented_keys(doc.read_text()):
        ok = any(x.startswith(k[:-1]) for x in known) if k.endswith("*") else k in known
        if not ok:
            bad.append(f"{doc.name}:{n}: {k}")
    assert not bad, "documented keys that no config has:\n" + "\n".join(bad)


def test_the_parser_sees_keys() -> None:
    text = "| key | default |\n|---|---|\n| `epochs`, `imgsz` | 1 |\n\njust train epochs=3 nope_key=1\n"
    assert [k for _, k in documented_keys(text)] == ["epochs", "imgsz", "epochs", "nope_key"]
