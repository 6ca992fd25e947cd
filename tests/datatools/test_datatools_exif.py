"""EXIF orientation: one frame, the displayed one (as Ultralytics' `exif_size` and loader), for sizes, pixels
and labels in the dataset tools. The image is stored rotated with orientation 6 (a phone held upright)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

W, H = 160, 96  # the displayed frame; the stored pixels are 96 x 160


def oriented_dataset(root: Path, synth) -> Path:
    """One train and one val image: white boxes on grey in the displayed frame, labels in that frame, the
    pixels stored rotated back with EXIF orientation 6 (displayed = stored rotated 90 degrees clockwise)."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        boxes = [(0, synth.rotated_box(cx, 48, 36, 18, rng.uniform(0, 40))) for cx in (40, 115)]
        shown = synth.draw_boxes((W, H), boxes)
        stored = np.ascontiguousarray(np.rot90(shown, 1))  # undo orientation 6's clockwise turn
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(stored[..., ::-1]).save(root / "images" / split / "a.png", exif=exif)
        (root / "labels" / split / "a.txt").write_text(
            "".join(synth.yolo_line(c, p, W, H) + "\n" for c, p in boxes)
        )
    (root / "data.yaml").write_text(
        yaml.safe_dump({"train": "images/train", "val": "images/val", "names": {0: "a"}})
    )
    return root / "data.yaml"


def inside_mean(img: np.ndarray, label_file: Path) -> list[float]:
    """Mean grey level inside each labelled polygon (white = the box is where its label says)."""
    h, w = img.shape[:2]
    grey = img if img.ndim == 2 else img.mean(axis=2)
    out = []
    for line in label_file.read_text().splitlines():
        pts = np.array(line.split()[1:], float).reshape(-1, 2) * [w, h]
        c = pts.mean(axis=0)
        inner = c + (pts - c) * 0.6  # away from the anti-aliased edge
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], 1)
        out.append(float(grey[mask.astype(bool)].mean()))
    return out


def test_sizes_and_pixels_are_the_displayed_frame(tmp_path, synth) -> None:
    from dinocache.datatools.formats import decode_image, image_size
    from ultralytics.data.utils import exif_size

    data = oriented_dataset(tmp_path / "ds", synth)
    p = data.parent / "images" / "train" / "a.png"
    with Image.open(p) as im:
        assert exif_size(im) == (W, H)  # Ultralytics' frame of the labels
    assert image_size(p, decode=False) == image_size(p, decode=True) == (W, H)
    shown = cv2.imread(str(p), cv2.IMREAD_COLOR)  # what Ultralytics' loader trains on
    assert np.array_equal(decode_image(p), shown)
    assert min(inside_mean(shown, data.parent / "labels" / "train" / "a.txt")) > 200


def test_augment_and_tile_keep_boxes_on_their_objects(tmp_path, synth) -> None:
    from dinocache.datatools.augment import main as augment
    from dinocache.datatools.tile import tile

    data = oriented_dataset(tmp_path / "ds", synth)
    assert (
        augment([f"data={data}", f"out={tmp_path / 'aug'}", "imgsz=128", "views=2", "image_format=png"]) == 0
    )
    tile(data, tmp_path / "t", imgsz=96, overlap=0.0, min_visible=0.9, log=lambda *_: None)
    for out in (tmp_path / "aug", tmp_path / "t"):
        labels = sorted((out / "labels" / "train").glob("*.txt"))
        assert labels
        for lf in labels:
            img = cv2.imread(str(out / "images" / "train" / f"{lf.stem}.png"), cv2.IMREAD_COLOR)
            means, bg = (
                inside_mean(img, lf),
                float(np.median(img)),
            )  # bg: the grey (photometric views shift it)
            assert means and min(means) > bg + 50, (
                f"{out.name}/{lf.stem}: boxes off their objects ({means}, {bg})"
            )
