"""Eval overlays and DINO feature pictures: the files exist, are valid JPEG/PNG, and index.json is right."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from dinocache.grade.featviz import cosine_distance, feature_viz_dir, fit_rgb_pca, pca_rgb, save_feature_viz
from dinocache.grade.metrics import Boxes, grade
from dinocache.grade.overlays import eval_dir, write_overlays


def test_overlays(tmp_path):
    imgs = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), np.full((128, 96, 3), 60 * i, np.uint8))
        imgs.append(p)
    gts = [Boxes.from_xywhr([[40, 50, 30, 12, 0.4]]), Boxes.from_xywhr([[20, 20, 10, 10, 0]]), Boxes.empty()]
    preds = [
        Boxes.from_xywhr([[41, 50, 30, 12, 0.4], [70, 100, 10, 10, 0]], conf=[0.95, 0.93]),
        Boxes.empty(),
        Boxes.from_xywhr([[20, 20, 10, 10, 0]], conf=[0.91]),
    ]
    m = grade(preds, gts, per_image=True)
    per = m.pop("per_image")
    out = write_overlays(eval_dir(tmp_path / "run", 7), imgs, gts, preds, per, m, max_samples=2, epoch=7)
    assert out == tmp_path / "run" / "eval" / "epoch_007" / "viz" / "val"
    for stem in ("img0", "img1"):
        for kind in ("gt", "pred", "panel"):
            a = cv2.imread(str(out / f"{stem}_{kind}.jpg"))
            assert a is not None and max(a.shape[:2]) >= 512  # scaled up for readability
    assert not (out / "img2_gt.jpg").exists()  # capped at max_samples
    # the panel carries a legend strip below the image
    assert cv2.imread(str(out / "img0_panel.jpg")).shape[0] > cv2.imread(str(out / "img0_gt.jpg")).shape[0]
    index = json.loads((out / "index.json").read_text())
    assert index["epoch"] == 7 and index["n_images"] == 3 and len(index["samples"]) == 2
    s0 = index["samples"][0]
    assert (s0["stem"], s0["tp"], s0["fp"], s0["fn"]) == ("img0", 1, 1, 0)
    assert s0["ious"][0] == pytest.approx(m["mean_iou"])
    assert index["metrics"]["grade"] == pytest.approx(m["grade"])
    # a drawn red box is in the pred picture, a green one in the gt picture
    pred_img = cv2.imread(str(out / "img0_pred.jpg")).astype(int)
    gt_img = cv2.imread(str(out / "img0_gt.jpg")).astype(int)
    assert ((pred_img[..., 2] > 180) & (pred_img[..., 1] < 80)).any()
    assert ((gt_img[..., 1] > 150) & (gt_img[..., 2] < 80)).any()


def _maps(seed=0, d=8, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, h, w, generator=g)


def test_feature_viz_files(tmp_path):
    img = torch.rand(3, 128, 128)
    teacher = _maps(0)
    student = _maps(1)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 3:6] = True
    out = feature_viz_dir(tmp_path / "run", 3)
    files = save_feature_viz(out, "000001", img, teacher, student, mask)
    assert out == tmp_path / "run" / "dino_viz" / "epoch_003"
    assert set(files) == {"teacher", "student", "mask", "diff"}
    for kind, name in files.items():
        assert name.endswith(".png")
        a = cv2.imread(str(out / name))
        # the diff picture carries its colour bar below the image
        assert a is not None and a.shape[:2] == ((256 + 28, 256) if kind == "diff" else (256, 256))


def test_student_picture_normalised_per_image(tmp_path):
    """A student whose maps point the teacher's way at 1 % of its scale still shows the teacher's pattern
    (its own colour range), where the teacher's range made it one flat colour."""
    from dinocache.grade.featviz import own_range

    teacher = _maps(0)
    basis = fit_rgb_pca(teacher)
    small = teacher * 0.01 + basis[0].reshape(-1, 1, 1).astype(np.float32) * 0.99  # near the mean
    flat = pca_rgb(small, basis).reshape(-1, 3).astype(float)
    own = pca_rgb(small, own_range(small, basis)).reshape(-1, 3).astype(float)
    assert flat.std(0).max() < 10 and own.std(0).min() > 40
    img = torch.rand(3, 128, 128)
    files = save_feature_viz(tmp_path, "s", img, teacher, small, torch.zeros(8, 8, dtype=torch.bool))
    student = cv2.imread(str(tmp_path / files["student"])).reshape(-1, 3).astype(float)
    assert student.std(0).min() > 20


def test_same_pca_for_teacher_and_student(tmp_path):
    teacher = _maps(0)
    basis = fit_rgb_pca(teacher)
    # the student equal to the teacher gets the same colours and a zero distance
    assert np.array_equal(pca_rgb(teacher, basis), pca_rgb(teacher.clone(), basis))
    assert np.abs(cosine_distance(teacher, teacher)).max() < 1e-5
    assert cosine_distance(-teacher, teacher).min() > 1.99
    # the PCA is fitted on the teacher only: a scaled student saturates instead of being rescaled
    rgb_big = pca_rgb(teacher * 10, basis)
    assert (rgb_big == 0).mean() + (rgb_big == 255).mean() > (pca_rgb(teacher, basis) == 255).mean()
    # uint8 image and D < 3 work
    files = save_feature_viz(
        tmp_path,
        "s",
        np.zeros((3, 32, 32), np.uint8),
        _maps(2, d=2, h=2, w=2),
        _maps(3, d=2, h=2, w=2),
        np.ones((2, 2), bool),
    )
    assert all(cv2.imread(str(tmp_path / f)) is not None for f in files.values())


def test_feature_viz_shape_errors(tmp_path):
    with pytest.raises(ValueError, match="teacher"):
        save_feature_viz(tmp_path, "s", torch.rand(3, 32, 32), _maps(d=4), _maps(d=5), torch.ones(8, 8))
    with pytest.raises(ValueError, match="mask"):
        save_feature_viz(tmp_path, "s", torch.rand(3, 32, 32), _maps(), _maps(), torch.ones(4, 4))
    with pytest.raises(ValueError, match="image"):
        save_feature_viz(tmp_path, "s", torch.rand(32, 32), _maps(), _maps(), torch.ones(8, 8))


def test_panel_captions_name_classes_and_wrong_class(tmp_path):
    """A prediction lying on a ground-truth box of another class is captioned "wrong class" with its IoU
    against that box (not "IoU 0.00"), classes by name; index.json names the representative panel."""
    from dinocache.grade.metrics import match_image

    imgs = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), np.full((128, 128, 3), 90, np.uint8))
        imgs.append(p)
    gts = [
        Boxes.from_xywhr([[40, 50, 30, 12, 0.4]], classes=[1]),
        Boxes.from_xywhr([[40, 50, 30, 12, 0.4]], classes=[0]),
        Boxes.from_xywhr([[40, 50, 30, 12, 0.4], [90, 90, 20, 20, 0]], classes=[0, 0]),
    ]
    box = [[41, 50, 30, 12, 0.4]]
    preds = [
        Boxes.from_xywhr(box, classes=[0], conf=[0.95]),  # on a class-1 box: wrong class
        Boxes.from_xywhr(box, classes=[0], conf=[0.95]),  # a match
        Boxes.from_xywhr(box + [[100, 20, 10, 10, 0]], classes=[0, 0], conf=[0.95, 0.92]),  # TP + a miss
    ]
    res = match_image(preds[0], gts[0], 0.5, 0.25)
    assert res.tp == 0 and res.best_gt[0] == 0 and res.best_iou[0] > 0.8  # any class, not 0
    m = grade(preds, gts, iou_thr=0.5, conf_thr=0.25, per_image=True)
    per = m.pop("per_image")
    names = {0: "plane", 1: "ship"}
    out = write_overlays(tmp_path / "viz", imgs, gts, preds, per, m, max_samples=3, names=names)
    index = json.loads((out / "index.json").read_text())
    caps = {s["stem"]: s["captions"] for s in index["samples"]}
    assert caps["img0"][0].startswith("p0 plane 0.95 wrong class (best IoU 0.") and caps["img0"][0].endswith(
        "with g0, a ship)"
    )
    assert caps["img1"] == [f"p0 plane 0.95 -> g0 IoU {per[1].matches[0].iou:.2f}"]
    assert caps["img2"][1] == "p1 plane 0.92 unmatched (no ground truth overlaps)"
    # F1 per image 0, 1, 0.5: the median is 0.5 -> img2 is the representative panel
    assert [round(s["f1"], 2) for s in index["samples"]] == [0.0, 1.0, 0.5]
    assert index["representative"] == "img2_panel.jpg"
