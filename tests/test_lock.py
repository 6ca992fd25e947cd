"""requirements/lock.txt, the exact versions the tests are run with, against pyproject.toml and against the
running environment.

The README's commands, the justfile and `.ci/run` install with `-c requirements/lock.txt`; `just lock`
(.ci/lock) regenerates it from pyproject.toml (extras dev and test) and requirements/holds.txt. A lock that
no longer satisfies pyproject.toml, or a test run in an environment resolved without the lock (pinned
values such as tests/train/test_train_default_path.py's loss depend on opencv's interpolation), fails here
naming the packages.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
HOLDS = ROOT / "requirements" / "holds.txt"
# the extras the lock resolves; bench-peers (LightlyTrain, AGPL, benchmarks only) is left out of it
LOCKED_EXTRAS = ("dev", "test")
FIX = "pip install -q -c requirements/lock.txt --config-settings editable_mode=strict -e '.[dev,test]'"
# the installer's own tools, which `pip freeze` (and so the lock) leaves out
INSTALLER = {"pip", "setuptools", "wheel"}


def read_pins(path: Path) -> dict[str, str]:
    """`canonical name -> version` of a file of exact `name==version` lines; anything else is refused."""
    pins: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier or [None]
        assert spec is not None and spec.operator == "==", f"{path.name}:{n}: not an exact pin: {raw!r}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}:{n}: {req.name} pinned twice"
        pins[name] = spec.version
    return pins


def project_requirements() -> list[tuple[str, Requirement]]:
    """pyproject.toml's requirements with where they come from: `dependencies` and the locked extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra in LOCKED_EXTRAS:
        reqs += [(f"[{extra}]", Requirement(r)) for r in project["optional-dependencies"][extra]]
    return reqs


def applies(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""})


def environment_differences() -> list[str]:
    """Every package the installed dinocache needs (pyproject.toml's requirements with the locked extras,
    then each installed distribution's own requirements, markers evaluated here) whose installed version is
    not the lock's, or that is not installed, or that the lock lacks."""
    pins = read_pins(LOCK)
    out: list[str] = []
    seen: set[str] = set()
    todo = [(req, set(req.extras)) for _, req in project_requirements() if applies(req, set())]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or name in INSTALLER:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            out.append(f"{req.name}: not installed (lock {pins.get(name, 'none')})")
            continue
        version = dist.version
        if name not in pins:
            out.append(f"{req.name} {version}: not in the lock")
        elif not SpecifierSet(f"=={pins[name]}").contains(version, prereleases=True):
            # `==2.14.1` also admits a local build such as torch 2.14.1+cpu (the CPU-only route)
            out.append(f"{req.name} {version} (lock {pins[name]})")
        for r in dist.requires or []:
            sub = Requirement(r)
            if applies(sub, extras):
                todo.append((sub, set(sub.extras)))
    return sorted(out)


def test_lock_pins_are_exact_and_satisfy_pyproject() -> None:
    pins = read_pins(LOCK)
    assert "dinocache" not in pins
    bad = []
    for where, req in project_requirements():
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            bad.append(f"{where} {req}: not in the lock")
        elif not req.specifier.contains(pin, prereleases=True):
            bad.append(f"{where} {req}: the lock has {pin}")
    for name, version in read_pins(HOLDS).items():
        if pins.get(name) != version:
            bad.append(f"holds.txt {name}=={version}: the lock has {pins.get(name)}")
    assert not bad, "pyproject.toml and requirements/lock.txt disagree (rerun `just lock`):\n" + "\n".join(
        bad
    )


def test_lock_check_names_what_disagrees(tmp_path, monkeypatch) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("# comment\nnumpy==1.0.0\nnumpy==1.0.0\n")
    with pytest.raises(AssertionError, match="numpy pinned twice"):
        read_pins(lock)
    lock.write_text("numpy>=1\n")
    with pytest.raises(AssertionError, match=r"lock.txt:1: not an exact pin"):
        read_pins(lock)
    # an environment with another numpy than the lock's is named, with both versions
    lock.write_text(LOCK.read_text().replace(f"numpy=={metadata.version('numpy')}", "numpy==1.0.0"))
    monkeypatch.setattr(f"{__name__}.LOCK", lock)
    assert f"numpy {metadata.version('numpy')} (lock 1.0.0)" in environment_differences()


def test_running_environment_matches_lock() -> None:
    diff = environment_differences()
    assert not diff, (
        f"this environment was not installed from requirements/lock.txt ({len(diff)} packages differ), so pinned "
        f"results may not hold; install with `{FIX}`:\n  " + "\n  ".join(diff)
    )
