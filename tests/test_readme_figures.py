"""The README's benchmark figures are the ones `benchmarks/results/latest.json` holds (BENCHMARKS.md is made from
it), so a rerun that changes a figure fails here until the README says the new one."""

import json
from pathlib import Path

from benchmarks.report import readme_mismatches

ROOT = Path(__file__).resolve().parent.parent


def test_readme_figures_are_in_latest_json() -> None:
    doc = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    assert readme_mismatches((ROOT / "README.md").read_text(), doc) == []


def test_a_changed_figure_is_named() -> None:
    doc = {"sections": {"signal.x": [{"map50": 0.0734}]}, "notes": {"signal.x": "mean of 5 seeds, 0.5 IoU"}}
    readme = "Intro 1.23 is not checked.\n\nIn BENCHMARKS.md `signal.*`: mAP50 0.073 over 5 seeds.\n\n" + (
        "In BENCHMARKS.md `signal.x`: mAP50 0.081 (was 0.073)."
    )
    assert readme_mismatches(readme, doc) == ["line 5: 0.081 (In BENCHMARKS.md `signal.x`: mAP50 0.081)"]
