"""finetune-teacher end to end on the tiny teacher + tiny demo data (128 px, 16/4 images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from dinocache.finetune.train import main
from safetensors.torch import load_file


def _args(data: Path, teacher: Path, project: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data={data}",
        f"dino_root={teacher}",
        f"project={project}",
        f"name={name}",
        "imgsz=128",
        "batch=8",
        "lr=1e-3",
        "warmup_epochs=0",
        *extra,
    ]


@pytest.fixture(scope="module")
def run_dir(demo_data: Path, tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("ft")
    assert main(_args(demo_data, tiny_teacher_dir, project, "a", "epochs=2")) == 0
    return project / "a" / "teachers" / "dinov3_lora"


def test_outputs_and_metadata(run_dir: Path) -> None:
    for f in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "head.safetensors",
        "teacher_config.yaml",
        "metadata.json",
        "best/adapter_model.safetensors",
        "last/trainer_state.pt",
    ):
        assert (run_dir / f).is_file(), f
    assert any((run_dir / "logs").iterdir())
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["epochs_done"] == 2
    assert meta["objective"]["boxes"] and not meta["objective"]["masks"]
    assert len(meta["data_sha256"]) == 64 and meta["versions"]["peft"]
    cfg = yaml.safe_load((run_dir / "teacher_config.yaml").read_text())
    assert cfg["classes"] == meta["annotations"]["classes"] and len(cfg["classes"]) == 5  # auto-filled
    assert cfg["epochs"] == 2  # CLI override on top of defaults


def test_adapter_files_hold_no_base_weights(run_dir: Path) -> None:
    keys = list(load_file(str(run_dir / "adapter_model.safetensors")))
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    assert set(load_file(str(run_dir / "head.safetensors"))) == {"weight", "bias"}
    acfg = json.loads((run_dir / "adapter_config.json").read_text())
    assert Path(acfg["base_model_name_or_path"]).is_dir()


def test_only_lora_and_head_require_grad(tiny_teacher_dir: Path) -> None:
    from dinocache.finetune.model import DenseLoRA
    from dinocache.finetune.objectives import Objective
    from dinocache.teacher.model import DinoV3Teacher

    model = DenseLoRA(DinoV3Teacher.from_pretrained(tiny_teacher_dir), Objective(True, False, 3))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= set(trainable)
    counts = model.param_counts()
    assert counts["trainable"] < counts["total"] / 2


def test_existing_run_refused(run_dir: Path, demo_data: Path, tiny_teacher_dir: Path, capsys) -> None:
    project = run_dir.parents[2]
    assert main(_args(demo_data, tiny_teacher_dir, project, "a", "epochs=1")) == 2
    assert "resume=true" in capsys.readouterr().err


def test_resume_continues_epoch_count(
    demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, capsys
) -> None:
    assert main(_args(demo_data, tiny_teacher_dir, tmp_path, "r", "epochs=1")) == 0
    assert main(_args(demo_data, tiny_teacher_dir, tmp_path, "r", "epochs=2", "resume=true")) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "epoch 2/2" in out
    # the CLI's next step names the adapter folder it wrote (run() itself says nothing: an API caller such as
    # make-demo-teacher merges and deletes its working folder)
    adapter = tmp_path / "r" / "teachers" / "dinov3_lora"
    assert f"next: dinocache merge-teacher --adapter {adapter} " in out and adapter.is_dir()
    meta = json.loads((tmp_path / "r/teachers/dinov3_lora/metadata.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    state = torch.load(tmp_path / "r/teachers/dinov3_lora/last/trainer_state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["manager"]["steps"] == 2 * 2  # 16 images / batch 8, per epoch


def test_early_stopping_on_flat_val_loss(demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path) -> None:
    # lr=0 and no flips: weights never move, so the validation loss is exactly flat.
    assert (
        main(
            _args(
                demo_data,
                tiny_teacher_dir,
                tmp_path,
                "flat",
                "epochs=6",
                "patience=1",
                "lr=0",
                "fliplr=0",
                "tensorboard=false",
            )
        )
        == 0
    )
    meta = json.loads((tmp_path / "flat/teachers/dinov3_lora/metadata.json").read_text())
    assert meta["status"] == "early_stopped" and meta["epochs_done"] == 2 and meta["best"]["epoch"] == 1


def test_nan_loss_stops_and_keeps_last_good(
    demo_data: Path, tiny_teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import dinocache.finetune.train as ft
    from dinocache.finetune.objectives import dense_loss

    calls = {"n": 0}

    def poisoned(*a, **k):  # 2 train batches + 1 val batch per epoch: NaN from epoch 2 on
        calls["n"] += 1
        out = dense_loss(*a, **k)
        if calls["n"] > 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ft, "dense_loss", poisoned)
    rc = main(_args(demo_data, tiny_teacher_dir, tmp_path, "nan", "epochs=3", "tensorboard=false"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "loss became nan in epoch 2" in err and "last good checkpoint" in err
    run = tmp_path / "nan/teachers/dinov3_lora"
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "stopped_nonfinite" and meta["epochs_done"] == 1
    state = torch.load(run / "last/trainer_state.pt", weights_only=False)
    assert state["epoch"] == 0  # epoch 1's checkpoint survived
    assert all(torch.isfinite(t).all() for t in load_file(str(run / "adapter_model.safetensors")).values())


def test_bad_config_key_exit_2(capsys) -> None:
    assert main(["data=x.yaml", "epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
