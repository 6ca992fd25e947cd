"""The teacher registry: every family built by make-tiny-teacher, saved by its library's own writer and read
back through the same loader real weights take (round trip, fingerprint, frozen, feature shape), and the
refusals (unsupported family, a SAM checkpoint given as a DINO teacher)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dinocache.teacher.registry import FAMILIES, UnsupportedTeacher, detect_family, load_teacher
from dinocache.teacher.tiny import main as tiny_main
from dinocache.teacher.tiny import make_tiny_teacher

from dinocache.core.config import ConfigError

IMGSZ = 128
# family -> (class name of the model its library loads, channels, grid at IMGSZ, pixels per cell)
EXPECTED = {
    "dinov3_vit": ("DINOv3ViTModel", 64, (8, 8), 16),
    "dinov3_timm": ("Eva", 64, (8, 8), 16),
    "dinov3_convnext": ("DINOv3ConvNextModel", 64, (4, 4), 32),
    "dinov2": ("Dinov2Model", 64, (8, 8), 16),
    "sam": ("SamVisionEncoder", 32, (64, 64), 2),
    "grounding_dino": ("GroundingDinoConvEncoder", 128, (4, 4), 32),
}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: make_tiny_teacher(root / f, family=f, seed=0) for f in EXPECTED}


def _images(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


def test_every_family_is_registered() -> None:
    assert set(EXPECTED) == set(FAMILIES)


@pytest.mark.parametrize("family", list(EXPECTED))
def test_family_round_trip(family: str, family_dirs: dict[str, Path], tmp_path: Path) -> None:
    d = family_dirs[family]
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    assert detect_family(d) == family
    t = load_teacher(d)
    cls, ch, grid, stride = EXPECTED[family]
    assert type(t.model).__name__ == cls
    assert t.family == family and t.channels == ch
    assert t.grid(IMGSZ) == grid and t.stride(IMGSZ) == stride
    # frozen, and stays in eval when a parent module calls .train()
    assert all(not p.requires_grad for p in t.parameters())
    t.train()
    assert not any(m.training for m in t.modules())
    x = _images()
    f = t.extract_feature_map(x)
    assert f.shape == (2, ch, *grid) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert not f.requires_grad
    assert float(f.std(dim=(2, 3)).mean()) > 0.1  # the random maps vary over the image (not a dead init)
    # same bits again; per-image (batch of 1 == row of a batch of 2)
    assert torch.allclose(t.extract_feature_map(x[:1]), f[:1], atol=1e-5)
    fp = t.fingerprint(IMGSZ)
    json.dumps(fp)  # JSON-able
    assert fp["family"] == family and fp["imgsz"] == IMGSZ and fp["patch_size"] == stride
    # a copy of the folder is the same teacher; other seeds are not
    shutil.copytree(d, tmp_path / "copy")
    assert load_teacher(tmp_path / "copy", family=family).fingerprint(IMGSZ) == fp
    other = make_tiny_teacher(tmp_path / "seed1", family=family, seed=1)
    assert load_teacher(other).fingerprint(IMGSZ)["weights_sha256"] != fp["weights_sha256"]


def test_unsupported_family_lists_the_supported_ones(tmp_path: Path, family_dirs: dict[str, Path]) -> None:
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(UnsupportedTeacher, match="'bert' model.*supported: dinov3_vit, dinov3_timm") as e:
        load_teacher(d)
    assert all(f in str(e.value) for f in FAMILIES)
    d2 = tmp_path / "timm_resnet"
    d2.mkdir()
    (d2 / "config.json").write_text(json.dumps({"architecture": "resnet50", "pretrained_cfg": {}}))
    with pytest.raises(UnsupportedTeacher, match="timm model 'resnet50'"):
        load_teacher(d2)
    with pytest.raises(UnsupportedTeacher, match="teacher_family: 'clip'"):
        load_teacher(family_dirs["dinov2"], family="clip")


def test_sam_checkpoint_given_as_a_dino_teacher(family_dirs: dict[str, Path]) -> None:
    with pytest.raises(
        UnsupportedTeacher, match="holds a sam checkpoint.*not a DINO teacher.*teacher_family=sam"
    ):
        load_teacher(family_dirs["sam"], family="dinov3_vit")
    with pytest.raises(UnsupportedTeacher, match="grounding_dino checkpoint.*not a DINO teacher"):
        load_teacher(family_dirs["grounding_dino"], family="dinov2")
    # the DINOv3 class itself refuses it too (finetune/merge load it directly)
    from dinocache.teacher.model import DinoV3Teacher

    with pytest.raises(ConfigError, match="'sam' model, not a DINOv3 ViT"):
        DinoV3Teacher.from_pretrained(family_dirs["sam"])


def test_bad_imgsz_and_layer_are_refused(family_dirs: dict[str, Path]) -> None:
    sam = load_teacher(family_dirs["sam"])
    with pytest.raises(ConfigError, match="multiple of SAM's 64x64 grid"):
        sam.check_imgsz(100)
    with pytest.raises(ConfigError, match="layer: 5"):
        load_teacher(family_dirs["dinov3_convnext"], layer=5)
    conv = load_teacher(family_dirs["dinov3_convnext"], layer=3)  # stage 3: stride 16
    assert conv.grid(IMGSZ) == (8, 8) and conv.channels == 48
    assert conv.extract_feature_map(_images(1)).shape == (1, 48, 8, 8)
    gd = load_teacher(family_dirs["grounding_dino"], layer=1)  # Swin stage 3: stride 16
    assert gd.extract_feature_map(_images(1)).shape == (1, 64, 8, 8)
    timm_t = load_teacher(family_dirs["dinov3_timm"], layer=1)
    assert timm_t.extract_feature_map(_images(1)).shape == (1, 64, 8, 8)


def test_cli_family_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert tiny_main([str(tmp_path / "d2"), "--family", "dinov2"]) == 0
    assert "dinov2" in capsys.readouterr().out
    assert tiny_main([str(tmp_path / "x"), "--family", "clip"]) == 2
    assert "family" in capsys.readouterr().err
    assert tiny_main([str(tmp_path / "y"), "--family", "sam", "--size", "vitl"]) == 2


def test_every_loaded_teacher_is_a_teacher(tiny_teacher_dir) -> None:
    """The one interface: what load_teacher returns satisfies the Teacher protocol."""
    from dinocache.teacher.base import Teacher

    t = load_teacher(tiny_teacher_dir)
    assert isinstance(t, Teacher)
    assert t.grid(64) == (4, 4) and t.stride(64) == 16
