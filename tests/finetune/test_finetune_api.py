"""The teacher-training guide's API as its users type it (thin wrappers over finetune-teachers), its CLI
flags, the per-teacher defaults files, the augmentation pipeline on images with masks and boxes, the
multi-model preprocessor, and a killed Grounding DINO / SAM run that resumes to the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dinocache.datatools.demo_data import make_demo_coco


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_coco(tmp_path_factory.mktemp("coco") / "data", n=4, imgsz=96, seed=0)


def rle_of(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (runs down the columns, starting with background)."""
    flat = mask.T.ravel().astype(np.uint8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return {"size": list(mask.shape), "counts": runs}


def test_inspect_and_required_models_as_the_guide_calls_them(coco: Path, tmp_path: Path) -> None:
    from dinocache import get_required_models, inspect_dataset, load_and_inspect_dataset

    info = load_and_inspect_dataset(coco)
    assert info["has_boxes"] and info["has_masks"] and info["num_classes"] == len(info["class_names"])
    assert get_required_models(info) == ["grounding_dino", "sam"]
    d = json.loads(coco.read_text())
    for a in d["annotations"]:
        a.pop("segmentation", None)
    boxes_only = inspect_dataset(d)
    assert boxes_only["has_boxes"] and not boxes_only["has_masks"] and not boxes_only["has_keypoints"]
    d["annotations"][0]["keypoints"] = [1, 2, 2]
    assert inspect_dataset(d)["has_keypoints"]
    assert get_required_models(boxes_only) == ["grounding_dino"]
    with pytest.raises(ValueError, match="sam needs instance masks"):
        get_required_models(boxes_only, ["sam"])


def test_rle_masks_count_as_masks_for_inspect_and_the_reader(tmp_path: Path) -> None:
    """One notion of 'has masks': `dataset inspect` and the fine-tuning reader agree on RLE."""
    import cv2
    from dinocache.datatools.inspection import inspect
    from dinocache.finetune.objectives import read_coco

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 30, 3), np.uint8))
    m = np.zeros((20, 30), bool)
    m[5:10, 8:20] = True
    d = {
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 5, 12, 5], "segmentation": rle_of(m)}
        ],
    }
    (tmp_path / "rle.json").write_text(json.dumps(d))
    assert inspect(tmp_path / "rle.json")["has_masks"] is True
    recs, summary = read_coco(tmp_path / "rle.json")
    assert summary.has_masks and np.array_equal(recs[0].instances[1].mask, m)


def test_defaults_files_and_generate_config(coco: Path) -> None:
    from dinocache.finetune.defaults import defaults_file
    from dinocache.finetune.task_teachers import for_teacher

    from dinocache import TaskFinetuneConfig, generate_config, load_and_inspect_dataset
    from dinocache.core.config import build

    cfg = build(TaskFinetuneConfig, {"coco_train": "t.json", "coco_val": "v.json"})
    gd, sam = for_teacher(cfg, "grounding_dino"), for_teacher(cfg, "sam")
    assert (gd.epochs, gd.batch, sam.epochs, sam.batch) == (50, 8, 100, 8)  # the seed's guide
    cfg = build(TaskFinetuneConfig, {"coco_train": "t.json", "coco_val": "v.json", "epochs": 3})
    assert for_teacher(cfg, "sam").epochs == 3 and for_teacher(cfg, "sam").lora_r == 16  # a key overrides
    info = load_and_inspect_dataset(coco)
    config = generate_config(
        default_config_path=defaults_file("teacher_grounding_dino_lora.yaml"),
        dataset_info=info,
        batch_size=16,
    )
    assert config["epochs"] == 50 and config["batch"] == 16 and config["num_classes"] == info["num_classes"]


def test_pipeline_moves_masks_and_boxes_with_the_image() -> None:
    from dinocache import get_augmentation_registry

    registry = get_augmentation_registry()
    pipeline = registry.get_pipeline(
        characteristics=["changes_shape", "reflective_surface"],
        environment={"lighting": "variable", "camera": "fixed"},
        intensity="medium",
    )
    img = np.full((60, 80, 3), 40, np.uint8)
    img[10:30, 20:50] = 220
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 20:50] = 1
    for seed in range(5):
        out = pipeline(image=img, masks=[mask], bboxes=np.array([[20, 10, 50, 30]]), rng=seed)
        assert out["image"].shape == img.shape
        ys, xs = np.nonzero(out["masks"][0])
        hull = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert out["keep"] == [0] and np.abs(out["bboxes"][0] - hull).max() <= 1.5  # the same motion
        bright = out["image"][out["masks"][0] > 0].mean()
        assert bright > out["image"][out["masks"][0] == 0].mean()  # the object's pixels went with it


def test_multi_model_preprocessor_sizes() -> None:
    from dinocache import create_preprocessor_from_models

    pre = create_preprocessor_from_models(["grounding_dino", "sam"])
    out = pre.preprocess_batch(np.zeros((480, 640, 3), np.uint8))
    x, meta = out["grounding_dino"]
    assert x.shape == (1, 3, 800, 1066) and meta["content_size"] == [(800, 1066)]
    x, meta = out["sam"]
    assert x.shape == (1, 3, 1024, 1024) and meta["content_size"] == [(768, 1024)]
    wide = pre.preprocess(np.zeros((100, 1000, 3), np.uint8))["grounding_dino"][0]
    assert wide.shape == (3, 133, 1333)  # the longest edge caps it


def test_guide_cli_flags_are_aliases(monkeypatch, tmp_path: Path) -> None:
    import dinocache.finetune.task_teachers as tt

    seen = {}
    monkeypatch.setattr(tt, "run", lambda cfg: seen.setdefault("cfg", cfg) and {"teachers": {}})
    argv = ["--data", "tr.json", "--val", "va.json", "--output", str(tmp_path / "exp1")]
    rc = tt.main([*argv, "--batch-size", "16", "--epochs", "50", "--lora-r", "8"])
    cfg = seen["cfg"]
    assert rc == 0 and (cfg.coco_train, cfg.coco_val, cfg.batch, cfg.epochs, cfg.lora_r) == (
        "tr.json",
        "va.json",
        16,
        50,
        8,
    )
    assert cfg.root == tmp_path / "exp1"
    assert tt.main([*argv, "--epochs", "5", "epochs=6"]) == 2  # the same key twice is refused


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("family", ["grounding_dino", "sam"])
def test_killed_teacher_run_resumes_to_the_same_result(
    family: str, coco: Path, tmp_path: Path, monkeypatch
) -> None:
    """TeacherTrainer runs 2 epochs; a second run dies in the middle of epoch 2 (after one of its optimizer
    steps) and is resumed from last/: same adapters (every tensor equal), same validation losses; the state
    file loads with weights_only=True."""
    import torch
    from dinocache.finetune import manager
    from dinocache.teacher.tiny import make_tiny_teacher

    from dinocache import TeacherTrainer

    root = make_tiny_teacher(tmp_path / family, family=family)
    config = {
        "teachers": [family],
        f"{family}_root": str(root),
        "gd_shortest_edge": 64,
        "epochs": 2,
        "batch": 2,
        "lr": 0.01,
        "device": "cpu",
        "tensorboard": False,
    }
    TeacherTrainer(coco, coco, None, tmp_path / "exp" / "full", config).train()
    full = json.loads((tmp_path / "exp" / "full" / "metadata.json").read_text())["teachers"][family]
    steps = -(-len(json.loads(coco.read_text())["images"]) // 2)  # optimizer steps per epoch (batch 2)

    real = manager.TrainingManager.backward
    calls = {"n": 0}

    def dies_mid_epoch_2(self, loss):
        calls["n"] += 1
        if calls["n"] == steps + 2:  # epoch 2, after its first step
            raise KeyboardInterrupt("killed in epoch 2")
        return real(self, loss)

    monkeypatch.setattr(manager.TrainingManager, "backward", dies_mid_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        TeacherTrainer(coco, coco, None, tmp_path / "exp" / "cut", config).train()
    monkeypatch.setattr(manager.TrainingManager, "backward", real)
    state = tmp_path / "exp" / "cut" / "teachers" / f"{family}_lora" / "last" / "trainer_state.pt"
    saved = torch.load(state, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0 and saved["manager"]["steps"] == steps
    meta = TeacherTrainer(coco, coco, None, tmp_path / "exp" / "cut", {**config, "resume": True}).train()
    a = _adapter(tmp_path / "exp" / "full" / "teachers" / f"{family}_lora" / "last")
    b = _adapter(tmp_path / "exp" / "cut" / "teachers" / f"{family}_lora" / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    got = meta["teachers"][family]
    assert [h["val_loss"] for h in got["history"]] == [h["val_loss"] for h in full["history"]]
    assert got["augmentation"]["ops"]  # augmentation on by default, recorded


def test_lora_loaders_of_the_guide(tmp_path: Path) -> None:
    from dinocache.teacher.tiny import make_tiny_teacher

    from dinocache import load_grounding_dino_with_lora, load_sam_with_lora

    gd = make_tiny_teacher(tmp_path / "gd", family="grounding_dino")
    sam = make_tiny_teacher(tmp_path / "sam", family="sam")
    for model in (
        load_grounding_dino_with_lora(gd, num_classes=3, lora_config={"r": 4, "lora_alpha": 8}),
        load_sam_with_lora(sam, lora_config={"r": 4}),
    ):
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert 0 < trainable < sum(p.numel() for p in model.parameters())  # base frozen, adapters train
        assert names and all("lora_" in n for n in names)
        assert model.peft_config["default"].r == 4
    with pytest.raises(ValueError, match="lora_config: unknown"):
        load_sam_with_lora(sam, lora_config={"rank": 4})


def test_training_and_checkpoint_managers_of_the_guide(tmp_path: Path) -> None:
    import torch

    from dinocache import CheckpointManager, TrainingManager

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dyn = tmp_path / "training_dynamics.yaml"
    dyn.write_text("grad_clip: 0.5\naccumulate: 2\namp: true\nwarmup_steps: 0\ntotal_steps: 0\n")
    manager = TrainingManager(model=model, optimizer=optimizer, config_path=dyn)
    batch = (torch.randn(8, 4), torch.randn(8, 1))

    def compute_loss_fn(m, b):
        loss = torch.nn.functional.mse_loss(m(b[0]), b[1])
        return {"loss": loss, "mse": loss.detach()}

    w0 = model.weight.detach().clone()
    first = manager.training_step(batch, compute_loss_fn)
    assert first["stepped"] == 0.0 and torch.equal(model.weight, w0)  # accumulate: 2
    second = manager.training_step(batch, compute_loss_fn)
    assert second["stepped"] == 1.0 and not torch.equal(model.weight, w0) and second["lr"] == 0.1
    assert manager.optimizer is optimizer and set(first) == {"loss", "mse", "stepped", "lr"}
    from dinocache.finetune.manager import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match="loss is nan"):  # no NaN reaches the weights
        manager.training_step(batch, lambda m, b: {"loss": torch.tensor(float("nan"), requires_grad=True)})

    ck_cfg = tmp_path / "checkpoint_config.yaml"
    ck_cfg.write_text("metric: val_loss\npatience: 1\nmin_delta: 0.0\n")
    ck = CheckpointManager(output_dir=tmp_path / "exp1" / "teachers" / "dino_lora", config_path=ck_cfg)
    assert ck.save_checkpoint(0, model, optimizer, {"val_loss": 1.0}) is True
    assert ck.save_checkpoint(1, model, optimizer, {"val_loss": 2.0}) is False
    assert ck.should_stop  # patience 1
    for d in (ck.best_dir, ck.last_dir):
        assert {"model.pt", "optimizer.pt", "state.pt"} <= {f.name for f in d.iterdir()}
    state = torch.load(ck.last_dir / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["checkpoint"]["best_epoch"] == 0
    default = CheckpointManager(output_dir=tmp_path / "d")  # the package's configs/defaults file
    assert (default.metric, default.patience) == ("val_loss", 5)
