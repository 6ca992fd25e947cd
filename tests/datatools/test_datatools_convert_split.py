"""convert round trips (YOLO -> DOTA -> YOLO, COCO, DOTA errors); split is stratified and reproducible;
a raw DOTA folder goes through convert -> tile -> split -> augment."""

from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import yaml
from dinocache.datatools.augment import main as augment_main
from dinocache.datatools.cli import main
from dinocache.datatools.split import assign_splits


def _labels(root, split="train"):
    out = {}
    for p in sorted((root / "labels" / split).glob("*.txt")):
        out[p.stem] = np.array([ln.split() for ln in p.read_text().splitlines()], float).reshape(-1, 9)
    return out


def test_yolo_dota_yolo_round_trip(yolo_data, tmp_path):
    dota, back = tmp_path / "dota", tmp_path / "back"
    assert main(["convert", str(yolo_data), "--from", "yolo", "--to", "dota", "--out", str(dota)]) == 0
    assert (dota / "train" / "labelTxt" / "im0.txt").is_file()
    assert main(["convert", str(dota), "--from", "dota", "--out", str(back), "--names", "c0,c1"]) == 0
    for split in ("train", "val"):
        a, b = _labels(yolo_data.parent, split), _labels(back, split)
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k][:, 0], b[k][:, 0])
            assert np.allclose(a[k][:, 1:], b[k][:, 1:], atol=1e-4)  # DOTA keeps 2 decimals of a pixel
    assert yaml.safe_load((back / "data.yaml").read_text())["names"] == {0: "c0", 1: "c1"}


def test_dota_bad_line_names_file_and_line(synth, tmp_path, capsys):
    raw = synth.make_dota(tmp_path / "raw", n=2, size=(200, 150))
    lt = raw / "labelTxt" / "P0001.txt"
    lt.write_text(lt.read_text() + "1 2 3 plane\n")
    assert main(["convert", str(raw), "--from", "dota", "--out", str(tmp_path / "o")]) == 2
    assert "labelTxt/P0001.txt:9: error: 4 fields" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()
    assert main(["convert", str(raw), "--from", "dota", "--out", str(tmp_path / "o"), "--skip-bad"]) == 0
    assert (
        main(["convert", str(raw), "--from", "dota", "--out", str(tmp_path / "p"), "--names", "plane"]) == 2
    )
    assert "not in --names" in capsys.readouterr().out


def test_coco_bbox_and_segmentation_to_rotated_boxes(synth, tmp_path):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    box = synth.rotated_box(60, 40, 50, 20, 30)
    cv2.imwrite(str(root / "images" / "a.png"), synth.draw_boxes((120, 80), [(0, box)]))
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 120, "height": 80}],
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "boat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 10]},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 3,
                "segmentation": [box.reshape(-1).tolist()],
                "bbox": [0, 0, 1, 1],
            },
        ],
    }
    (root / "instances_train.json").write_text(json.dumps(coco))
    assert (
        main(["convert", str(root / "instances_train.json"), "--from", "coco", "--out", str(tmp_path / "y")])
        == 0
    )
    lab = _labels(tmp_path / "y")["a"]
    assert yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())["names"] == {0: "car", 1: "boat"}
    assert lab[0, 0] == 1 and np.allclose(np.sort(lab[0, 1::2] * 120), [10, 10, 30, 30], atol=1e-3)
    got = lab[1, 1:].reshape(4, 2) * [120, 80]
    d = np.linalg.norm(got[:, None] - box[None], axis=-1).min(1)
    assert lab[1, 0] == 0 and d.max() < 0.05  # segmentation -> its minimum-area rotated box


def test_split_is_stratified_and_reproducible():
    classes = [{0}] * 70 + [{0, 1}] * 20 + [{2}] * 10
    a = assign_splits(classes, [0.8, 0.1, 0.1], seed=0)
    assert a == assign_splits(classes, [0.8, 0.1, 0.1], seed=0)
    assert a != assign_splits(classes, [0.8, 0.1, 0.1], seed=1)
    assert Counter(a) == {"train": 80, "val": 10, "test": 10}
    for cls, n in ((1, 20), (2, 10)):  # each rare class spread in proportion
        c = Counter(s for s, cs in zip(a, classes) if cls in cs)
        assert c == {"train": n * 0.8, "val": n * 0.1, "test": n * 0.1}


def test_raw_dota_to_augmented_end_to_end(synth, tmp_path, capsys):
    raw = synth.make_dota(tmp_path / "raw", n=3, size=(1000, 800))
    conv, tiles, split, aug = (tmp_path / n for n in ("conv", "tiles", "split", "aug"))
    assert main(["inspect", str(raw), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "dota" and info["images"] == 3 and info["image_sizes"]["max"] == [1000, 800]
    assert main(["convert", str(raw), "--from", "dota", "--out", str(conv)]) == 0
    assert main(["validate", str(conv)]) == 0
    assert (
        main(["tile", str(conv / "data.yaml"), "--out", str(tiles), "--imgsz", "512", "--overlap", "0.2"])
        == 0
    )
    tile_imgs = sorted((tiles / "images" / "train").glob("*.png"))
    # 1000 x 800 with 512 tiles and a 102 px gap: 3 x 2 windows (Ultralytics' get_windows)
    assert len(tile_imgs) == 3 * 6 and all(cv2.imread(str(p)).shape[:2] == (512, 512) for p in tile_imgs)
    assert main(["validate", str(tiles)]) == 0
    capsys.readouterr()
    assert main(["split", str(tiles / "data.yaml"), "--out", str(split), "--ratios", "0.5,0.25,0.25"]) == 0
    table = capsys.readouterr().out
    assert "plane" in table and "images" in table
    d = yaml.safe_load((split / "data.yaml").read_text())
    assert d["train"] == "images/train" and d["test"] == "images/test"
    assert (
        augment_main(
            [f"data={split / 'data.yaml'}", f"out={aug}", "imgsz=128", "views=2", "image_format=png"]
        )
        == 0
    )
    n = {s: len(list((split / "images" / s).glob("*.png"))) for s in ("train", "val", "test")}
    assert n["train"] == 9 and n["val"] + n["test"] == 9 and min(n.values()) >= 4
    assert len(list((aug / "images" / "train").glob("*.png"))) == 2 * n["train"]
    assert len(list((aug / "images" / "test").glob("*.png"))) == n["test"]
    assert main(["validate", str(aug)]) == 0


def test_tile_keeps_mostly_visible_boxes(synth, tmp_path):
    from dinocache.datatools.formats import load_yolo
    from dinocache.datatools.tile import tile

    raw = synth.make_dota(tmp_path / "raw", n=1, size=(1000, 800), seed=3)
    main(["convert", str(raw), "--from", "dota", "--out", str(tmp_path / "c")])
    tile(
        tmp_path / "c" / "data.yaml",
        tmp_path / "t",
        imgsz=512,
        overlap=0.2,
        min_visible=0.6,
        log=lambda *_: None,
    )
    src = load_yolo(tmp_path / "c" / "data.yaml")
    col = load_yolo(tmp_path / "t" / "data.yaml", decode=True)
    assert col.n_errors == 0
    # every source box (smaller than the 102 px overlap) appears whole and exact in some tile
    placed = []
    for it in col.items:
        _, x0, y0 = (int(v) for v in it.image.stem.replace("___", "__").split("__")[1:])
        placed += [(o.cls, o.poly + [x0, y0]) for o in it.objects]
    for o in src.items[0].objects:
        assert any(c == o.cls and np.abs(p - o.poly).max() < 0.01 for c, p in placed)
