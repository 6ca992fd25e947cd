"""DinoV3Teacher and make-tiny-teacher: loading, shapes, freezing, layers, fingerprint, errors, parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dinocache.teacher import tiny
from dinocache.teacher.model import DinoV3Teacher, TeacherNotFound
from dinocache.teacher.registry import load_teacher
from dinocache.teacher.tiny import make_tiny_teacher

from dinocache.core.config import ConfigError

IMGSZ = 64  # 4x4 grid: enough for every check here


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir: Path) -> DinoV3Teacher:
    return DinoV3Teacher.from_pretrained(tiny_teacher_dir)


def _images(b: int = 2, h: int = IMGSZ, w: int = IMGSZ, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def test_loads_saved_folder_through_from_pretrained(tiny_teacher_dir: Path, teacher: DinoV3Teacher) -> None:
    from transformers import DINOv3ViTModel

    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in tiny_teacher_dir.iterdir()
    }
    assert isinstance(teacher.model, DINOv3ViTModel)
    assert teacher.patch_size == 16 and teacher.channels == 64 and teacher.layer == -1
    assert teacher.mean == pytest.approx((0.485, 0.456, 0.406)) and teacher.std == pytest.approx(
        (0.229, 0.224, 0.225)
    )
    assert load_teacher(tiny_teacher_dir).fingerprint(IMGSZ) == teacher.fingerprint(IMGSZ)


def test_output_shape_and_dtype(teacher: DinoV3Teacher) -> None:
    f = teacher.extract_feature_map(_images(3, 64, 96))
    assert f.shape == (3, teacher.channels, 64 // 16, 96 // 16)
    assert f.dtype == torch.float32 and torch.isfinite(f).all()
    assert teacher(_images(1)).shape == (1, teacher.channels, 4, 4)  # forward == extract_feature_map


def test_frozen_and_eval_even_after_train(teacher: DinoV3Teacher) -> None:
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()  # a parent module calling .train() must not switch RoPE jitter/dropout on
    assert not teacher.training and not teacher.model.training
    assert all(not m.training for m in teacher.modules())
    x = _images(1).requires_grad_(True)
    assert not teacher.extract_feature_map(x).requires_grad


def test_layer_selection(tiny_teacher_dir: Path, teacher: DinoV3Teacher) -> None:
    x = _images(2)
    outs = {
        layer: DinoV3Teacher.from_pretrained(tiny_teacher_dir, layer=layer).extract_feature_map(x)
        for layer in (0, 1, 2)
    }
    last = teacher.extract_feature_map(x)
    for a in (0, 1, 2):
        assert not torch.allclose(outs[a], last)
        for b in (0, 1, 2):
            if a < b:
                assert not torch.allclose(outs[a], outs[b])
    # layer -1 is the last block *after* the final LayerNorm (weight 1, bias 0 at init): per-token
    # channel mean 0 and std 1; hidden_states[2] is the same block before that norm.
    assert last.mean(1).abs().max() < 1e-4 and (last.std(1, unbiased=False) - 1).abs().max() < 1e-2
    assert outs[2].mean(1).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="layer"):
        DinoV3Teacher.from_pretrained(tiny_teacher_dir, layer=3)
    with pytest.raises(ConfigError, match="layer"):
        DinoV3Teacher.from_pretrained(tiny_teacher_dir, layer=-2)


def test_parity_with_plain_transformers_forward(tiny_teacher_dir: Path, teacher: DinoV3Teacher) -> None:
    """Normalisation by the checkpoint's own image processor + a plain forward == extract_feature_map."""
    import numpy as np
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(tiny_teacher_dir).eval()
    proc = AutoImageProcessor.from_pretrained(tiny_teacher_dir)
    u8 = np.random.default_rng(0).integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)
    pv = proc(list(u8), do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
    assert pv.shape == (2, 3, 48, 80)
    regs = model.config.num_register_tokens
    with torch.no_grad():
        out = model(pixel_values=pv, output_hidden_states=True)
    ref_last = out.last_hidden_state[:, 1 + regs :].transpose(1, 2).reshape(2, 64, 3, 5)
    ref_mid = out.hidden_states[1][:, 1 + regs :].transpose(1, 2).reshape(2, 64, 3, 5)
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255  # what Ultralytics' preprocess_batch gives
    torch.testing.assert_close(teacher.extract_feature_map(x), ref_last, rtol=1e-4, atol=1e-4)
    mid = DinoV3Teacher.from_pretrained(tiny_teacher_dir, layer=1).extract_feature_map(x)
    torch.testing.assert_close(mid, ref_mid, rtol=1e-4, atol=1e-4)


def test_fingerprint_stable_json_and_sensitive(
    tiny_teacher_dir: Path, teacher: DinoV3Teacher, tmp_path: Path
) -> None:
    fp = teacher.fingerprint(IMGSZ)
    assert set(fp) == {
        "family",
        "model_type",
        "config",
        "weights_sha256",
        "layer",
        "imgsz",
        "patch_size",
        "mean",
        "std",
    }
    assert json.loads(json.dumps(fp)) == fp
    assert fp["model_type"] == "dinov3_vit" and fp["imgsz"] == IMGSZ and fp["patch_size"] == 16
    assert not {"transformers_version", "_name_or_path", "architectures", "dtype"} & set(fp["config"])
    # Same weights in another folder -> same fingerprint (the path is not part of the identity).
    copy = shutil.copytree(tiny_teacher_dir, tmp_path / "copy")
    assert DinoV3Teacher.from_pretrained(copy).fingerprint(IMGSZ) == fp
    # Different weights, layer or imgsz -> different fingerprint.
    other = DinoV3Teacher.from_pretrained(make_tiny_teacher(tmp_path / "seed1", seed=1))
    assert other.fingerprint(IMGSZ)["weights_sha256"] != fp["weights_sha256"]
    assert other.fingerprint(IMGSZ)["config"] == fp["config"]
    assert DinoV3Teacher.from_pretrained(copy, layer=1).fingerprint(IMGSZ)["layer"] == 1
    assert teacher.fingerprint(128) != fp
    # One changed weight value changes the hash.
    t2 = DinoV3Teacher.from_pretrained(copy)
    with torch.no_grad():
        next(t2.model.parameters()).view(-1)[0] += 1e-3
    t2._sha = None
    assert t2.fingerprint(IMGSZ)["weights_sha256"] != fp["weights_sha256"]


def test_same_seed_same_weights_and_rng_untouched(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = make_tiny_teacher(tmp_path / "again", seed=0)
    assert torch.rand(1) == before  # building a teacher must not consume the caller's RNG
    assert (again / "model.safetensors").read_bytes() == (tiny_teacher_dir / "model.safetensors").read_bytes()


@pytest.mark.parametrize("root", ["definitely-missing-dinov3", "./missing/dinov3/", "/nonexistent/dinov3"])
def test_missing_dino_root_says_where_to_put_weights(root: str) -> None:
    with pytest.raises(TeacherNotFound, match="put a DINOv3 checkpoint folder") as e:
        DinoV3Teacher.from_pretrained(root)
    assert "config.json" in str(e.value) and "model.safetensors" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_folder_without_config_and_uncached_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherNotFound, match="no config.json"):
        DinoV3Teacher.from_pretrained(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network from a test
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(TeacherNotFound, match="HF_HUB_OFFLINE"):
        DinoV3Teacher.from_pretrained("nobody-here/no-such-dinov3")


def test_not_a_dinov3_checkpoint_refused(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path / "vit")
    with pytest.raises(ConfigError, match="not a DINOv3"):
        DinoV3Teacher.from_pretrained(tmp_path / "vit")


@pytest.mark.parametrize(
    "shape,dtype,msg",
    [
        ((1, 3, 60, 64), torch.float32, "multiple of the patch size 16"),
        ((1, 3, 64, 72), torch.float32, "multiple of the patch size 16"),
        ((1, 1, 64, 64), torch.float32, r"\(B, 3, H, W\)"),
        ((3, 64, 64), torch.float32, r"\(B, 3, H, W\)"),
        ((1, 3, 64, 64), torch.uint8, "float"),
    ],
)
def test_bad_input_refused(teacher: DinoV3Teacher, shape: tuple, dtype: torch.dtype, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        teacher.extract_feature_map(torch.zeros(shape, dtype=dtype))


def test_amp_is_cuda_only(tiny_teacher_dir: Path) -> None:
    t = DinoV3Teacher.from_pretrained(tiny_teacher_dir, amp=True)
    x = _images(1)
    assert t.device.type == "cpu"
    torch.testing.assert_close(
        t.extract_feature_map(x), DinoV3Teacher.from_pretrained(tiny_teacher_dir).extract_feature_map(x)
    )


def test_tiny_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t"
    assert tiny.main([str(out), "--seed", "3"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "dinov3_vit" and cfg["hidden_size"] == 64 and cfg["num_register_tokens"] == 4
    before = (out / "model.safetensors").read_bytes()
    # Non-empty OUT refused, left as it was; --overwrite replaces it.
    assert tiny.main([str(out), "--seed", "4"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert tiny.main([str(out), "--seed", "4", "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temp folders left behind
    assert tiny.main([str(tmp_path / "u"), "--size", "huge"]) == 2
    assert "size" in capsys.readouterr().err and not (tmp_path / "u").exists()
    assert tiny.main([str(tmp_path / "v"), "--seed", "x"]) == 2
    # An existing empty folder is fine (e.g. a mount point).
    (tmp_path / "empty").mkdir()
    assert tiny.main([str(tmp_path / "empty")]) == 0


def test_sizes_match_released_shapes() -> None:
    assert tiny.SIZES["vits"]["hidden_size"] == 384 and tiny.SIZES["vits"]["num_hidden_layers"] == 12
    assert tiny.SIZES["vitb"]["hidden_size"] == 768 and tiny.SIZES["vitl"]["num_hidden_layers"] == 24


def test_vits_sized_teacher_roundtrip(tmp_path: Path) -> None:
    t = DinoV3Teacher.from_pretrained(make_tiny_teacher(tmp_path / "vits", size="vits"))
    assert t.channels == 384 and t.model.config.num_hidden_layers == 12
    assert t.extract_feature_map(_images(1)).shape == (1, 384, 4, 4)


def test_meta_pth_folder_gets_conversion_hint(tmp_path: Path) -> None:
    (tmp_path / "dinov3").mkdir()
    (tmp_path / "dinov3" / "dinov3_vitl16_pretrain_lvd1689m.pth").write_bytes(b"")
    with pytest.raises(TeacherNotFound, match="convert_dinov3_vit_to_hf"):
        DinoV3Teacher.from_pretrained(tmp_path / "dinov3")
