"""The Ultralytics pin: import-time check of the transform-API range, and pyproject says the same range."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from dinocache.train import ULTRALYTICS_REQUIREMENT, check_ultralytics
from ultralytics.data.augment import RandomFlip, RandomPerspective


def test_installed_version_is_in_range_and_has_the_api() -> None:
    check_ultralytics()
    for cls in (RandomFlip, RandomPerspective):
        assert hasattr(cls, "get_params") and hasattr(cls, "apply_semantic")


@pytest.mark.parametrize("v", ["8.4.0", "8.4.51", "8.5.0", "9.0.1"])
def test_out_of_range_names_the_requirement(v: str) -> None:
    with pytest.raises(ImportError, match=r"ultralytics>=8\.4\.52,<8\.5.*found ultralytics " + v):
        check_ultralytics(v)


def test_pyproject_pins_the_same_range() -> None:
    deps = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    assert ULTRALYTICS_REQUIREMENT in deps
