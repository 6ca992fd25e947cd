"""The grade on hand-made boxes: perfect, shifted, rotated, missing, duplicate, thresholds, empty input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dinocache.grade.metrics import Boxes, angle_error_deg, grade, polygon_iou, symmetry_period

RECT = [50.0, 50.0, 40.0, 20.0, 0.0]  # x, y, w, h (px), r (rad)
SQUARE = [50.0, 50.0, 30.0, 30.0, 0.0]


def B(rows, conf=None, cls=None) -> Boxes:
    return Boxes.from_xywhr(np.array(rows, dtype=float).reshape(-1, 5), cls, conf)


def test_perfect():
    gt = B([RECT, [120, 40, 30, 10, 0.3]])
    pred = B([RECT, [120, 40, 30, 10, 0.3]], conf=[0.95, 0.99])
    m = grade([pred], [gt])
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == m["grade"] == 1.0
    assert m["mean_iou"] == pytest.approx(1.0)
    assert m["centre_err"] == pytest.approx(0.0, abs=1e-9)
    assert m["angle_err"] == pytest.approx(0.0, abs=1e-6)


def test_shifted_inside_threshold():
    # 40x20 box shifted 4 px along x: overlap 36x20 = 720, union 2*800 - 720 = 880
    m = grade([B([[54, 50, 40, 20, 0]], conf=[0.95])], [B([RECT])])
    assert m["grade"] == 1.0
    assert m["mean_iou"] == pytest.approx(720 / 880)
    assert m["centre_err"] == pytest.approx(4.0)
    assert m["angle_err"] == pytest.approx(0.0, abs=1e-6)


def test_shifted_below_threshold_is_fp_and_fn():
    # shifted 10 px: IoU 600 / 1000 = 0.6 < 0.75
    m = grade([B([[60, 50, 40, 20, 0]], conf=[0.95])], [B([RECT])])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    assert m["grade"] == 0.0 and m["precision"] == 0.0 and m["recall"] == 0.0
    assert m["mean_iou"] is None and m["centre_err"] is None and m["angle_err"] is None
    # a lower IoU threshold accepts it
    assert grade([B([[60, 50, 40, 20, 0]], conf=[0.95])], [B([RECT])], iou_thr=0.5)["grade"] == 1.0


def test_square_rotated_90_is_perfect():
    m = grade([B([[50, 50, 30, 30, math.pi / 2]], conf=[0.95])], [B([SQUARE])])
    assert m["grade"] == 1.0
    assert m["mean_iou"] == pytest.approx(1.0)
    assert m["angle_err"] == pytest.approx(0.0, abs=1e-4)


def test_square_rotated_85_has_5_degrees_error():
    m = grade([B([[50, 50, 30, 30, math.radians(85)]], conf=[0.95])], [B([SQUARE])], iou_thr=0.5)
    assert m["tp"] == 1
    assert m["angle_err"] == pytest.approx(5.0, abs=1e-3)


def test_rectangle_rotated_180_is_perfect_but_90_is_not():
    m180 = grade([B([[50, 50, 40, 20, math.pi]], conf=[0.95])], [B([RECT])])
    assert m180["grade"] == 1.0 and m180["angle_err"] == pytest.approx(0.0, abs=1e-4)
    # 40x20 vs 20x40 on the same centre: overlap 20x20 = 400, union 1200
    m90 = grade([B([[50, 50, 40, 20, math.pi / 2]], conf=[0.95])], [B([RECT])])
    assert m90["grade"] == 0.0
    m90low = grade([B([[50, 50, 40, 20, math.pi / 2]], conf=[0.95])], [B([RECT])], iou_thr=0.3)
    assert m90low["mean_iou"] == pytest.approx(400 / 1200)
    assert m90low["angle_err"] == pytest.approx(90.0, abs=1e-3)


def test_rectangle_given_as_swapped_sides_matches():
    # w/h swapped + 90 deg is the same rectangle
    m = grade([B([[50, 50, 20, 40, math.pi / 2]], conf=[0.95])], [B([RECT])])
    assert m["grade"] == 1.0 and m["angle_err"] == pytest.approx(0.0, abs=1e-4)


def test_rotated_10_degrees():
    m = grade([B([[50, 50, 40, 20, math.radians(10)]], conf=[0.95])], [B([RECT])], iou_thr=0.5)
    assert m["tp"] == 1
    assert m["angle_err"] == pytest.approx(10.0, abs=1e-3)
    assert m["centre_err"] == pytest.approx(0.0, abs=1e-6)


def test_missing_prediction():
    gt = B([RECT, [120, 40, 30, 10, 0.3]])
    m = grade([B([RECT], conf=[0.95])], [gt])
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1)
    assert m["precision"] == 1.0 and m["recall"] == 0.5
    assert m["grade"] == pytest.approx(2 / 3)


def test_duplicate_prediction_counts_once():
    pred = B([RECT, [51, 50, 40, 20, 0]], conf=[0.92, 0.95])
    res = grade([pred], [B([RECT])], per_image=True)
    assert (res["tp"], res["fp"], res["fn"]) == (1, 1, 0)
    assert res["precision"] == 0.5 and res["recall"] == 1.0
    assert res["grade"] == pytest.approx(2 / 3)
    # greedy by confidence: the 0.95 prediction (index 1) takes the box
    assert res["per_image"][0].matches[0].pred == 1


def test_confidence_threshold_inclusive():
    gt = B([RECT])
    assert grade([B([RECT], conf=[0.89])], [gt])["grade"] == 0.0
    assert grade([B([RECT], conf=[0.89])], [gt])["pred"] == 0
    assert grade([B([RECT], conf=[0.9])], [gt])["grade"] == 1.0


def test_class_must_agree():
    m = grade([B([RECT], conf=[0.95], cls=[1])], [B([RECT], cls=[0])])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)


def test_greedy_takes_best_iou_box():
    gts = B([RECT, [54, 50, 40, 20, 0]])  # two overlapping ground-truth boxes
    res = grade([B([[53, 50, 40, 20, 0]], conf=[0.95])], [gts], iou_thr=0.5, per_image=True)
    assert res["per_image"][0].matches[0].gt == 1  # 1 px away beats 3 px away


def test_micro_average_over_images():
    gts = [B([RECT]), B([SQUARE]), Boxes.empty()]
    preds = [B([RECT], conf=[0.95]), Boxes.empty(), B([SQUARE], conf=[0.97])]
    m = grade(preds, gts)
    assert (m["tp"], m["fp"], m["fn"], m["images"]) == (1, 1, 1, 3)
    assert m["grade"] == pytest.approx(0.5)


def test_empty_inputs_give_zero():
    for preds, gts in [
        ([], []),
        ([None], [None]),
        ([Boxes.empty()], [B([RECT])]),
        ([B([RECT], conf=[0.99])], [None]),
    ]:
        m = grade(preds, gts)
        assert m["grade"] == 0.0 and m["mean_iou"] is None


def test_input_forms():
    poly = Boxes.from_xywhr(np.array([RECT])).poly
    m = grade([{"poly": poly.reshape(1, 8), "conf": [0.95], "cls": [0]}], [{"xywhr": [RECT]}])
    assert m["grade"] == 1.0
    with pytest.raises(ValueError, match="prediction sets"):
        grade([None], [])
    with pytest.raises(ValueError, match="'poly' or 'xywhr'"):
        grade([{"boxes": []}], [None])


def test_polygon_iou_and_helpers():
    a = B([RECT]).poly
    assert polygon_iou(a, a)[0, 0] == pytest.approx(1.0)
    assert polygon_iou(a, np.zeros((0, 4, 2))).shape == (1, 0)
    assert symmetry_period(30, 30) == 90.0 and symmetry_period(40, 20) == 180.0
    assert angle_error_deg(math.radians(179), 0.0, 180.0) == pytest.approx(1.0)
