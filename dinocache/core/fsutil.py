"""Small filesystem helpers shared by the commands that write whole output folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask (read by setting it and back: os has no getter)."""
    m = os.umask(0o022)
    os.umask(m)
    return m


def normal_modes(folder: Path) -> None:
    """Give every file and folder under `folder` (itself included) the mode a plain `open()`/`mkdir` would:
    0644 / 0755 under the usual umask 022. Writers that go through a temporary file (mkstemp, mkdtemp,
    safetensors) leave 0600/0700, which other users of a shared machine or container cannot read."""
    mask = umask()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


def publish_dir(tmp: Path, out: Path) -> None:
    """Swap a finished temp folder into place at `out`, so `out` is never half-written: an existing
    `out` is moved aside first and deleted only after the rename succeeded. Its files get normal modes
    (normal_modes) first."""
    normal_modes(tmp)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
