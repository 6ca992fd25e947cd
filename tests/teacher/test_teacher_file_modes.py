"""Files dinocache writes are readable like any saved checkpoint: 0644 (folders 0755) under umask 022, also
where a writer goes through a temporary file (safetensors' model.safetensors, the digest sidecar)."""

from __future__ import annotations

import os
import stat


def test_tiny_teacher_files_are_0644(tmp_path) -> None:
    from dinocache.teacher.digest import digest
    from dinocache.teacher.tiny import make_tiny_teacher

    old = os.umask(0o022)
    try:
        out = make_tiny_teacher(tmp_path / "dinov3", seed=0)
        digest(out)  # writes the sidecar beside the weights
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "model.safetensors" in modes and len(modes) >= 4
    assert all(m == 0o644 for m in modes.values()), {k: oct(v) for k, v in modes.items()}
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
