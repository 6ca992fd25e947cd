"""The README's Python API example, run as written, from a folder that also holds a `train.py` and a `cache/`
package of the user's own (which must not shadow ours: everything of ours is `dinocache.*`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def readme_example() -> str:
    m = re.search(r"<!-- readme-api-example:.*?-->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert m, "README.md lost its readme-api-example block"
    return m.group(1)


def test_readme_api_example_runs_and_weights_load(
    tmp_path: Path, demo_data: Path, tiny_teacher_dir: Path
) -> None:
    shutil.copytree(demo_data.parent, tmp_path / "dataset" / "augmented")
    shutil.copytree(tiny_teacher_dir, tmp_path / "dinov3")
    # a user's own modules with our old top-level names: importing them fails loudly
    (tmp_path / "train.py").write_text("raise ImportError('the user train.py was imported')\n")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "__init__.py").write_text("raise ImportError('the user cache/ was imported')\n")
    code = (
        readme_example()
        + "\nfrom ultralytics import YOLO\n"
        + "m = YOLO(str(trainer.save_dir / 'weights' / 'last.pt'))\n"
        + "print('LOADED', type(m.model).__name__, m.model.__class__.__module__)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "LOADED OBBModel ultralytics.nn.tasks" in p.stdout
    runs = list((tmp_path / "artifacts" / "yolo26n-obb" / "runs").glob("*/train/weights/last.pt"))
    assert len(runs) == 1 and (tmp_path / "artifacts" / "cache" / "features.zarr").is_dir()
