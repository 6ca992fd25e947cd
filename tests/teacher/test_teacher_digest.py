"""File-level digest of a teacher folder: what precompute stores and the trainer checks without a model."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from dinocache.teacher import digest as D


def test_digest_names_files_and_is_location_free(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    a = D.digest(tiny_teacher_dir, use_sidecar=False)
    assert set(a["files"]) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    size = (tiny_teacher_dir / "model.safetensors").stat().st_size
    assert a["files"]["model.safetensors"]["size"] == size
    assert a["files"]["model.safetensors"]["sha256"] == D.file_sha256(
        tiny_teacher_dir / "model.safetensors", 7
    )
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_teacher_dir, copy)
    (copy / "README.md").write_text("not a weight file")
    assert D.digest(copy)["id"] == a["id"] and D.compare(a, D.digest(copy)) == []


def test_sidecar_skips_rehash_until_size_or_mtime_changes(
    tiny_teacher_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    t = tmp_path / "t"
    shutil.copytree(tiny_teacher_dir, t)
    first = D.digest(t)
    side = json.loads((t / D.SIDECAR).read_text())
    assert side["files"]["model.safetensors"]["sha256"] == first["files"]["model.safetensors"]["sha256"]
    calls: list[str] = []
    real = D.file_sha256
    monkeypatch.setattr(D, "file_sha256", lambda p, *a: calls.append(p.name) or real(p, *a))
    assert D.digest(t)["id"] == first["id"] and calls == []  # all from the sidecar
    w = t / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[100] ^= 1
    w.write_bytes(bytes(raw))
    now = D.digest(t)
    assert calls == ["model.safetensors"] and now["id"] != first["id"]
    assert D.compare(first, now)[0].startswith("model.safetensors: changed since the cache was made")


def test_not_a_teacher_folder(tmp_path: Path) -> None:
    with pytest.raises(D.DigestError, match="not a folder"):
        D.digest(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(D.DigestError, match="holds no weight files"):
        D.digest(tmp_path)
    assert D.locate(str(tmp_path / "nope")) is None and D.locate(str(tmp_path)) == tmp_path


def test_digest_module_imports_no_torch_or_transformers() -> None:
    import subprocess

    code = "import sys, dinocache.teacher.digest; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
