"""The README's two quick-start commands, the justfile and `.ci/run` install with the lock, and every recipe
passes its arguments through as they were typed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
LOCK_FLAG = "-c requirements/lock.txt"


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("python3 -m venv")]


def test_readme_quick_start_and_ci_install_with_the_lock() -> None:
    demo, test = quick_start_commands()
    assert LOCK_FLAG in demo and demo.endswith("just demo")
    assert LOCK_FLAG in test and "'.[dev,test]'" in test and test.endswith("just test")
    ci = (ROOT / ".ci" / "run").read_text()
    # CI runs the README's test command itself, in a new venv with an empty pip cache
    assert test in ci.splitlines()
    assert "export PIP_NO_CACHE_DIR=1" in ci and "rm -rf .venv" in ci
    assert ci.index("PIP_NO_CACHE_DIR") < ci.index(test)


def recipes() -> dict[str, tuple[str, str]]:
    """`name -> (header, body)` of every justfile recipe."""
    out: dict[str, tuple[str, str]] = {}
    name = None
    for line in (ROOT / "justfile").read_text().splitlines():
        m = re.match(r"^([a-z][\w-]*)(\s[^:=]*)?:(\s|$)", line)
        if m:
            name = m.group(1)
            out[name] = (line, "")
        elif name and line.startswith((" ", "\t")):
            out[name] = (out[name][0], out[name][1] + line + "\n")
        elif line.strip() and not line.startswith("#"):
            name = None
    return out


def test_every_recipe_passes_arguments_as_typed() -> None:
    found = recipes()
    assert {"train", "compare", "demo-teacher", "install", "lock"} <= found.keys()
    for name, (header, body) in found.items():
        assert "{{ARGS}}" not in body, f'recipe {name} splits quoted arguments: use "$@"'
        if "*ARGS" in header:
            assert '"$@"' in body, f"recipe {name} drops its arguments"
    assert LOCK_FLAG in found["install"][1]


def test_installs_are_strict_editable() -> None:
    """The quick start, `.ci/run` and `just install` make the editable install a tree of links (setuptools'
    strict mode) that editors and type checkers follow, not an import hook."""
    strict = "--config-settings editable_mode=strict -e "
    for command in quick_start_commands():
        assert strict in command, command
    assert strict in (ROOT / ".ci" / "run").read_text()
    assert strict in recipes()["install"][1]
