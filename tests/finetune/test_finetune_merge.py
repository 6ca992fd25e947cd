"""merge-teacher: merged == base + adapter, fingerprints differ, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dinocache.finetune.merge import main
from dinocache.teacher.model import DinoV3Teacher

IMGSZ = 64


@pytest.fixture(scope="module")
def adapter(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """An adapter with non-zero LoRA B (as after training) and the base+adapter features of a fixed input."""
    from dinocache.finetune.model import DenseLoRA, base_identity, resolve_base
    from dinocache.finetune.objectives import Objective

    teacher = DinoV3Teacher.from_pretrained(tiny_teacher_dir)
    ident = base_identity(teacher.model, resolve_base(str(tiny_teacher_dir)))
    torch.manual_seed(0)
    model = DenseLoRA(teacher, Objective(True, False, 2), r=4, alpha=8)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    model.eval()
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model.features(x)
    folder = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_adapter(folder, {"base": ident})
    return folder, feats


def _x() -> torch.Tensor:
    return torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))


def test_merged_equals_unmerged_and_fingerprint_differs(
    adapter, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    folder, feats = adapter
    out = tmp_path / "merged"
    assert main(["--adapter", str(folder), "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    merged = DinoV3Teacher.from_pretrained(out)
    torch.testing.assert_close(merged.extract_feature_map(_x()), feats, atol=1e-4, rtol=1e-4)
    base = DinoV3Teacher.from_pretrained(tiny_teacher_dir)
    assert not torch.allclose(base.extract_feature_map(_x()), feats, atol=1e-3)  # the adapter does something
    fb, fm = base.fingerprint(IMGSZ), merged.fingerprint(IMGSZ)
    assert fb["weights_sha256"] != fm["weights_sha256"] and fb["config"] == fm["config"]
    info = json.loads((out / "merge_info.json").read_text())
    assert info["merged_weights_sha256"] != info["base"]["weights_sha256"]


def test_cache_of_base_refused_for_merged(adapter, tiny_teacher_dir: Path, tmp_path: Path) -> None:
    from dinocache.cache.format import Spec

    from dinocache import cache

    folder, _ = adapter
    out = tmp_path / "merged"
    assert main(["--adapter", str(folder), "--out", str(out)]) == 0
    base = DinoV3Teacher.from_pretrained(tiny_teacher_dir)
    spec = Spec(
        n=1,
        k=base.channels,
        grid=[IMGSZ // 16] * 2,
        imgsz=IMGSZ,
        patch_size=16,
        teacher_channels=base.channels,
        shard_size=1,
        codec="none",
        key_len=32,
        pca=False,
        pca_fit_images=0,
        teacher=base.fingerprint(IMGSZ),
    )
    ones = np.ones(base.channels, np.float32)
    cache.CacheWriter.create(tmp_path / "c.zarr", spec, ["images/train/a.png"], ones * 0, ones)
    fc = cache.open(tmp_path / "c.zarr")
    cache.check_fingerprint(fc, base.fingerprint(IMGSZ))  # the base's own cache is accepted
    with pytest.raises(cache.CacheMismatch, match="weights_sha256"):
        cache.check_fingerprint(fc, DinoV3Teacher.from_pretrained(out).fingerprint(IMGSZ))


def test_adapter_from_other_base_refused(adapter, tmp_path: Path, capsys) -> None:
    from dinocache.teacher.tiny import make_tiny_teacher

    other = make_tiny_teacher(tmp_path / "other", seed=1)
    folder, _ = adapter
    assert main(["--adapter", str(folder), "--out", str(tmp_path / "m"), "--base", str(other)]) == 2
    err = capsys.readouterr().err
    assert "different models" in err and str(other) in err and "trained on base" in err
    assert not (tmp_path / "m").exists()


def test_non_empty_out_refused_without_overwrite(adapter, tmp_path: Path, capsys) -> None:
    folder, _ = adapter
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["--adapter", str(folder), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["--adapter", str(folder), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".busy")]  # no temp leftovers


def test_not_an_adapter_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "x").mkdir()
    assert main(["--adapter", str(tmp_path / "x"), "--out", str(tmp_path / "m")]) == 2
    assert "missing ['adapter_config.json'" in capsys.readouterr().err
