"""Data-driven objective choice, annotation parsing and rasterisation to the patch grid."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from dinocache.finetune.dataset import letterbox, rasterise
from dinocache.finetune.objectives import (
    Instance,
    NoUsableAnnotations,
    Objective,
    _decode_rle,
    choose_objective,
    read_coco,
    read_yolo_split,
)


def _yolo_dataset(root: Path, lines: list[str], n: int = 2) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), np.full((64, 64, 3), 90, np.uint8))
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: a\n  1: b\n")
    return root / "data.yaml"


def _coco(root: Path, with_bbox: bool, with_seg: bool) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "x.png"), np.zeros((40, 80, 3), np.uint8))
    ann: dict = {"id": 1, "image_id": 7, "category_id": 3}
    if with_bbox:
        ann["bbox"] = [10, 5, 20, 10]
    if with_seg:
        ann["segmentation"] = [[10, 5, 30, 5, 30, 15, 10, 15]]
    coco = {
        "images": [{"id": 7, "file_name": "x.png", "width": 80, "height": 40}],
        "categories": [{"id": 3, "name": "car"}],
        "annotations": [ann],
    }
    p = root / "ann.json"
    p.write_text(json.dumps(coco))
    return p


def test_obb_labels_pick_box_objective(demo_data: Path) -> None:
    _, s = read_yolo_split(demo_data, "train")
    obj = choose_objective(s)
    assert s.counts["oriented box"] > 0 and (obj.boxes, obj.masks) == (True, False)
    assert obj.out_channels == len(s.classes) + 1


def test_polygon_labels_pick_mask_objective(tmp_path: Path) -> None:
    data = _yolo_dataset(tmp_path / "seg", ["1 0.1 0.1 0.5 0.1 0.6 0.4 0.3 0.6 0.1 0.4"])
    _, s = read_yolo_split(data, "train")
    obj = choose_objective(s)
    assert (obj.boxes, obj.masks) == (False, True) and s.counts["polygon mask"] == 2


def test_mixed_yolo_lines_pick_both(tmp_path: Path) -> None:
    data = _yolo_dataset(tmp_path / "mix", ["0 0.5 0.5 0.2 0.2", "1 0.1 0.1 0.5 0.1 0.6 0.4"])
    _, s = read_yolo_split(data, "train")
    obj = choose_objective(s)
    assert (obj.boxes, obj.masks) == (True, True) and s.counts["axis box"] == 2


@pytest.mark.parametrize(
    ("bbox", "seg", "want"),
    [(True, True, (True, True)), (True, False, (True, False)), (False, True, (False, True))],
)
def test_coco_objective_follows_fields(
    tmp_path: Path, bbox: bool, seg: bool, want: tuple[bool, bool]
) -> None:
    recs, s = read_coco(_coco(tmp_path, bbox, seg))
    obj = choose_objective(s)
    assert (obj.boxes, obj.masks) == want and s.classes == ["car"]
    assert recs[0].path == (tmp_path / "x.png").resolve()


def test_no_usable_annotations_lists_what_was_found(tmp_path: Path) -> None:
    data = _yolo_dataset(tmp_path / "bad", ["0 0.5 0.5", "7 0.5 0.5 0.1 0.1", "x y z"])
    _, s = read_yolo_split(data, "train")
    with pytest.raises(NoUsableAnnotations) as e:
        choose_objective(s)
    msg = str(e.value)
    assert "2 images" in msg and "3 fields; expected 9" in msg and "class id 7 out of range" in msg
    assert "0.txt:1" in msg  # names file and line


def test_no_usable_annotations_cli_exit_2(tmp_path: Path, tiny_teacher_dir: Path, capsys) -> None:
    from dinocache.finetune.train import main

    data = _yolo_dataset(tmp_path / "empty", [""])
    rc = main([f"data={data}", f"dino_root={tiny_teacher_dir}", f"project={tmp_path / 'exp'}", "imgsz=64"])
    assert rc == 2
    assert "no annotations usable" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()  # nothing written


def test_box_rasterises_to_its_patch() -> None:
    obj = Objective(boxes=True, masks=True, num_classes=2)
    # A box exactly covering patch (row 0, col 1) of a 32 px image with 16 px patches.
    box = Instance(1, "axis box", np.array([[0.5, 0.0], [1.0, 0.0], [1.0, 0.5], [0.5, 0.5]], np.float32))
    tri = Instance(0, "polygon mask", np.array([[0.0, 0.5], [0.5, 0.5], [0.0, 1.0]], np.float32))
    box_t, mask_t = rasterise([box, tri], obj, (32, 32), 32, 16, 1.0, (0, 0))
    assert box_t.shape == (3, 2, 2) and mask_t.shape == (2, 2, 2)
    np.testing.assert_allclose(box_t.sum(0), 1.0)
    assert box_t[2, 0, 1] == pytest.approx(1.0, abs=0.07) and box_t[0, 0, 0] == 1.0
    assert mask_t[0, 1, 0] == pytest.approx(0.5, abs=0.1) and mask_t[1].max() == 0


def test_letterbox_pads_and_centres() -> None:
    img, r, (left, top) = letterbox(np.zeros((20, 40, 3), np.uint8), 64)
    assert img.shape == (64, 64, 3) and r == 1.6 and left == 0 and top == 16


def test_uncompressed_rle_is_column_major() -> None:
    m = _decode_rle({"counts": [1, 2, 3], "size": [3, 2]}, 3, 2)
    assert m.tolist() == [[False, False], [True, False], [True, False]]
