"""Small filesystem helpers shared by the commands that write whole output folders."""

from __future__ import annotations

import shutil
from pathlib import Path


def publish_dir(tmp: Path, out: Path) -> None:
    """Swap a finished temp folder into place at `out`, so `out` is never half-written: an existing
    `out` is moved aside first and deleted only after the rename succeeded."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
