"""Benchmark suite options: `pytest benchmarks/ --benchmark` runs it; without the flag it is skipped,
so the plain test run stays fast."""

from __future__ import annotations

import os

for _k, _v in {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "WANDB_MODE": "offline",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_k, _v)

import pytest  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark", action="store_true", default=False, help="run the dinocache benchmark suite"
    )
    parser.addoption(
        "--bench-quick",
        action="store_true",
        default=False,
        help="smaller sizes (smoke-test the suite itself)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmarks run only with `pytest benchmarks/ --benchmark`")
    for item in items:
        if "benchmarks" in item.nodeid.split("/")[0]:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--bench-quick"))


@pytest.fixture(scope="session")
def results(request: pytest.FixtureRequest):
    """Session-wide collector; written to benchmarks/results/latest.json and BENCHMARKS.md at the end."""
    from benchmarks.report import Results

    res = Results()
    yield res
    if res.entries:
        res.write()
