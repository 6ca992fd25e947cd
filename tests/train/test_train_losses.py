"""Pure pieces of the distillation: masked cosine, OBB cell mask, weight schedule, config checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from dinocache.train.config import TrainConfig
from dinocache.train.losses import (
    align_to_grid,
    distill_weight,
    masked_cosine_loss,
    normalise_teacher,
    obb_cell_mask,
    stage_of,
)

from dinocache.core.config import ConfigError, build


def test_masked_cosine_known_values() -> None:
    # 1 image, D=2, 1x2 grid: cell 0 identical vectors (cos 1), cell 1 orthogonal (cos 0)
    t = torch.zeros(1, 2, 1, 2)
    t[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    t[0, :, 0, 1] = torch.tensor([1.0, 0.0])
    s = torch.zeros(1, 2, 1, 2)
    s[0, :, 0, 0] = torch.tensor([3.0, 0.0])  # same direction, other length -> distance 0
    s[0, :, 0, 1] = torch.tensor([0.0, 2.0])  # orthogonal -> distance 1
    obj_first = torch.tensor([[[True, False]]])
    assert masked_cosine_loss(s, t, obj_first, 1.15, 0.15).item() == pytest.approx(1.15 * 0 + 0.15 * 1)
    assert masked_cosine_loss(s, t, ~obj_first, 1.15, 0.15).item() == pytest.approx(1.15 * 1 + 0.15 * 0)
    # opposite vectors: distance 2
    assert masked_cosine_loss(-t, t, obj_first, 1.0, 1.0).item() == pytest.approx(4.0)


def test_masked_cosine_pools_cells_and_empty_images_add_only_background() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    dist = 1 - torch.nn.functional.cosine_similarity(s, t, dim=1)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = True  # image 1 has no object at all
    want = 2.0 * dist[0, 1, 1] + 0.5 * dist[mask.logical_not()].mean()
    assert masked_cosine_loss(s, t, mask, 2.0, 0.5).item() == pytest.approx(want.item(), rel=1e-5)
    # no object anywhere: background term only, no NaN
    none = torch.zeros(2, 3, 3, dtype=torch.bool)
    assert masked_cosine_loss(s, t, none, 2.0, 0.5).item() == pytest.approx(
        0.5 * dist.mean().item(), rel=1e-5
    )


def test_masked_cosine_is_fp32_for_half_inputs() -> None:
    s, t = torch.randn(1, 8, 2, 2).half(), torch.randn(1, 8, 2, 2).half()
    out = masked_cosine_loss(s, t, torch.ones(1, 2, 2, dtype=torch.bool), 1.0, 1.0)
    assert out.dtype == torch.float32


def test_obb_mask_axis_aligned_box() -> None:
    # 8x8 grid; box covering cells x in [2, 5), y in [1, 3) exactly (edges on cell borders)
    box = torch.tensor([[3.5 / 8, 2.0 / 8, 3.0 / 8, 2.0 / 8, 0.0]])
    m = obb_cell_mask(box, torch.tensor([0]), 1, (8, 8))[0]
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[1:3, 2:5] = True  # cells only touching the edges (x=1, x=5, y=0, y=3) are not object
    assert torch.equal(m, want)


def test_obb_mask_rotated_box_matches_shapely() -> None:
    from shapely.geometry import Polygon, box  # a main dependency (pyproject), never skipped

    # a long thin box at 30 degrees in the middle of a 16x16 grid
    g = 16
    cx, cy, w, h, r = 8.0, 8.0, 10.0, 2.0, math.radians(30)
    xywhr = torch.tensor([[cx / g, cy / g, w / g, h / g, r]])
    m = obb_cell_mask(xywhr, torch.tensor([0]), 1, (g, g))[0]
    c, s = math.cos(r), math.sin(r)
    corners = [
        (cx + dx * c - dy * s, cy + dx * s + dy * c)
        for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))
    ]
    poly = Polygon(corners)
    want = torch.tensor(
        [[poly.intersection(box(j, i, j + 1, i + 1)).area > 1e-9 for j in range(g)] for i in range(g)]
    )
    assert torch.equal(m, want)
    assert 20 < int(m.sum()) < 60  # sanity: a 10x2 box at 30 deg covers a few dozen cells


def test_obb_mask_per_image_and_empty() -> None:
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2, 0.3]])
    m = obb_cell_mask(boxes, torch.tensor([1]), 3, (4, 4))
    assert not m[0].any() and m[1].any() and not m[2].any()
    assert not obb_cell_mask(torch.zeros(0, 5), torch.zeros(0), 2, (4, 4)).any()


def test_align_and_normalise() -> None:
    x = torch.randn(2, 3, 4, 4)
    assert align_to_grid(x, (4, 4)) is x
    assert align_to_grid(x, (8, 8)).shape == (2, 3, 8, 8)
    f = torch.arange(2 * 4, dtype=torch.float16).reshape(1, 4, 1, 2)
    mean, std = torch.tensor([1.0, 2.0, 9.0, 9.0]), torch.tensor([2.0, 4.0, 1.0, 1.0])
    out = normalise_teacher(f, mean, std, 2)
    assert out.shape == (1, 2, 1, 2) and out.dtype == torch.float32
    assert out[0, 1, 0, 1].item() == pytest.approx((3.0 - 2.0) / 4.0)


def test_weight_schedule_per_epoch() -> None:
    cfg = TrainConfig(epochs=10, stage_a_ratio=0.3, dino_distill_warmup_epochs=2)
    assert [stage_of(e, cfg) for e in range(10)] == ["A"] * 3 + ["B"] * 7
    ws = [distill_weight(e, cfg) for e in range(10)]
    assert ws[:3] == pytest.approx([0.0, 0.125, 0.25])  # ramp 0 -> 1 over 2 epochs, Stage A weight 0.25
    assert ws[3:] == pytest.approx([0.08] * 7)
    cfg0 = TrainConfig(epochs=3, stage_a_ratio=0.5, dino_distill_warmup_epochs=0)  # int(1.5) = 1
    assert [distill_weight(e, cfg0) for e in range(3)] == pytest.approx([0.25, 0.08, 0.08])
    assert TrainConfig(epochs=6, stage_a_ratio=0.3).stage_a_epochs == 1  # int(1.8), not round
    assert distill_weight(5, TrainConfig(teacher_source="none")) == 0.0


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"epochs": 0}, "epochs"),
        ({"imgsz": 100}, "imgsz"),
        ({"stage_a_ratio": 1.5}, "stage_a_ratio"),
        ({"dino_distill_layers": []}, "dino_distill_layers"),
        ({"stage_b_distill_weight": -1}, "stage_b_distill_weight"),
        ({"teacher_source": "disk"}, "teacher_source"),
        ({"extra": {"mosiac": 0}}, "extra"),
        ({"extra": {"freeze": 3}}, "extra"),
        ({"device": "0,0"}, "device"),
        ({"device": "0,cuda:1"}, "device"),
        ({"device": "0,1", "batch": 5}, "batch"),
        ({"epochz": 3}, "epochz"),
    ],
)
def test_config_rejects_naming_the_key(values: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build(TrainConfig, values, "config.json[train]")


def test_config_defaults_and_overrides(tmp_path) -> None:
    from dinocache.core.config import load

    p = tmp_path / "config.json"
    p.write_text('{"train": {"epochs": 6, "dino_distill_layers": [16, 19]}}')
    cfg = load(TrainConfig, p, "train", ["batch=4", "extra={hsv_h: 0}", "teacher_source=online"])
    assert (cfg.epochs, cfg.batch, cfg.dino_distill_layers, cfg.extra) == (6, 4, [16, 19], {"hsv_h": 0})
    assert cfg.model_key == "yolo26n-obb" and TrainConfig(model="x/yolo26n-obb.pt").model_key == "yolo26n-obb"
    assert (TrainConfig().lr0, TrainConfig().freeze_layers, TrainConfig().dino_distill_channels) == (
        0.0012,
        0,  # a .yaml start (random weights) freezes nothing unless stage_a_freeze is given
        32,
    )
    assert TrainConfig(model="w.pt").freeze_layers == 10 and TrainConfig(stage_a_freeze=4).freeze_layers == 4


@pytest.mark.parametrize("source", ["cache", "online"])
def test_online_keeps_the_same_augmentation_as_cache(source: str) -> None:
    """Fair A/B: with distill_geometric_aug=warp, cache and online runs get identical Ultralytics arguments."""
    from dinocache.train.overrides import apply_augmentation_policy, ultralytics_overrides

    def ov_for(src: str, aug: str) -> dict:
        cfg = TrainConfig(teacher_source=src, distill_geometric_aug=aug, extra={"mixup": 0.2, "mosaic": 1.0})
        ov = ultralytics_overrides(cfg, Path("runs/x"), "cpu")
        apply_augmentation_policy(cfg, ov)
        return ov

    warp = ov_for(source, "warp")
    assert warp["mosaic"] == 1.0 and warp["mixup"] == 0.0 and warp["multi_scale"] == 0.0
    assert warp == ov_for("cache", "warp")
    off = ov_for(source, "off")
    assert off["mosaic"] == 0.0 and off["scale"] == 0.0 and off == ov_for("cache", "off")
    assert ov_for("none", "warp")["mixup"] == 0.2  # none: Ultralytics' augmentation untouched
