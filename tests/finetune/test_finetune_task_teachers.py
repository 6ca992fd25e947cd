"""The seed's data-driven fine-tuning end to end on a generated COCO set with boxes and masks: COCO split by
`dataset validate --split`, both teachers chosen from the data, LoRA runs in the seed's layout, merged
teachers that the registry loads and precompute takes; the boxes-only SAM refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dinocache.datatools.cli import main as dataset_main
from dinocache.datatools.demo_data import make_demo_coco
from dinocache.finetune import FinetuneError
from dinocache.finetune.task_teachers import TaskFinetuneConfig, choose_teachers
from dinocache.finetune.task_teachers import main as ft_main

from dinocache.core.config import build


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("coco")
    src = make_demo_coco(d / "data", n=10, imgsz=128, seed=0)
    rc = dataset_main(
        ["validate", "--data", str(src), "--split", "train:0.7,val:0.3", "--stratify", "--seed", "42"]
    )
    assert rc == 0
    return {"train": src.with_name("annotations_train.json"), "val": src.with_name("annotations_val.json")}


def test_coco_split_keeps_masks_and_is_seeded(coco: dict[str, Path], tmp_path: Path) -> None:
    tr, va = (json.loads(coco[s].read_text()) for s in ("train", "val"))
    assert len(tr["images"]) == 7 and len(va["images"]) == 3
    assert {i["id"] for i in tr["images"]}.isdisjoint({i["id"] for i in va["images"]})
    assert tr["annotations"] and all(a.get("segmentation") for a in tr["annotations"] + va["annotations"])
    # same seed, same split; --out keeps file_name pointing at the same images
    src = coco["train"].with_name("annotations.json")
    assert (
        dataset_main(
            [
                "validate",
                str(src),
                "--split",
                "train:0.7,val:0.3",
                "--stratify",
                "--seed",
                "42",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "annotations_train.json").read_text())
    assert [i["id"] for i in again["images"]] == [i["id"] for i in tr["images"]]
    assert (tmp_path / again["images"][0]["file_name"]).resolve().is_file()
    assert dataset_main(["validate", str(src), "--split", "train:0.7,val:0.2"]) == 2  # shares must sum to 1


def test_boxes_only_data_refuses_sam(tmp_path: Path) -> None:
    from dinocache.finetune.objectives import read_coco

    p = make_demo_coco(tmp_path / "boxes", n=3, imgsz=64, masks=False)
    _, summary = read_coco(p)
    cfg = build(TaskFinetuneConfig, {"coco_train": str(p), "coco_val": str(p)})
    assert choose_teachers(cfg, summary) == ["grounding_dino"]  # auto: boxes -> Grounding DINO only
    cfg = build(TaskFinetuneConfig, {"coco_train": str(p), "coco_val": str(p), "teachers": ["sam"]})
    with pytest.raises(FinetuneError, match="sam needs instance masks.*would teach it to draw rectangles"):
        choose_teachers(cfg, summary)


def test_finetune_both_teachers_merge_and_precompute(
    coco: dict[str, Path], tmp_path: Path, demo_data: Path
) -> None:
    import torch
    from dinocache.finetune.merge import main as merge_main
    from dinocache.precompute.run import main as precompute
    from dinocache.teacher.registry import load_teacher
    from dinocache.teacher.tiny import make_tiny_teacher

    gd = make_tiny_teacher(tmp_path / "gd", family="grounding_dino")
    sam = make_tiny_teacher(tmp_path / "sam", family="sam")
    rc = ft_main(
        [
            f"coco_train={coco['train']}",
            f"coco_val={coco['val']}",
            f"grounding_dino_root={gd}",
            f"sam_root={sam}",
            f"project={tmp_path / 'experiments'}",
            "name=exp1",
            "imgsz=128",
            "gd_shortest_edge=128",
            "epochs=1",
            "batch=4",
            "lr=0.01",
            "device=cpu",
        ]
    )
    assert rc == 0
    exp = tmp_path / "experiments" / "exp1"
    assert (exp / "teacher_config.yaml").is_file() and (exp / "logs" / "grounding_dino").is_dir()
    meta = json.loads((exp / "metadata.json").read_text())
    assert sorted(meta["teachers"]) == ["grounding_dino", "sam"]  # both chosen from the data
    for fam in ("grounding_dino", "sam"):
        d = exp / "teachers" / f"{fam}_lora"
        for f in ("adapter_config.json", "adapter_model.safetensors", "dinocache_adapter.json"):
            assert (d / f).is_file() and (d / "best" / f).is_file() and (d / "last" / f).is_file()
        r = meta["teachers"][fam]
        assert 0 < r["trainable_params"] < r["total_params"]
        assert merge_main(["--adapter", str(d), "--out", str(tmp_path / f"merged_{fam}")]) == 0
    x = torch.rand(1, 3, 128, 128)
    for fam, base in (("grounding_dino", gd), ("sam", sam)):
        merged = load_teacher(tmp_path / f"merged_{fam}")  # family read from the merged config.json
        assert merged.family == fam
        a, b = load_teacher(base).extract_feature_map(x), merged.extract_feature_map(x)
        assert a.shape == b.shape and not torch.allclose(a, b)  # the encoder adapters changed the features
    (tmp_path / "e.json").write_text("{}")
    rc = precompute(
        [
            "--config",
            str(tmp_path / "e.json"),
            f"data={demo_data}",
            f"cache={tmp_path / 'gd.zarr'}",
            f"dino_root={tmp_path / 'merged_grounding_dino'}",
            "imgsz=128",
            "channels=8",
            "device=cpu",
            "workers=0",
        ]
    )
    assert rc == 0
