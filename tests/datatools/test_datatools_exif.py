"""EXIF orientation: one frame, the displayed one (as Ultralytics' `exif_size` and loader), for sizes, pixels
and labels everywhere: the dataset tools, precompute's teacher input, the training loader's image and map,
pretraining's sizes and grade's ground truth. The image is stored rotated with orientation 6 (a phone held
upright)."""

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


def store_oriented(path: Path, shown_bgr: np.ndarray) -> None:
    """Write `shown_bgr` (the displayed frame) as its pixels rotated back plus EXIF orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(shown_bgr, 1))  # undo orientation 6's clockwise turn
    Image.fromarray(stored[..., ::-1]).save(path, exif=exif)


def test_grade_ground_truth_is_in_the_displayed_frame(tmp_path, synth) -> None:
    """grade scores predictions made on cv2.imread's pixels (the displayed frame) against labels in that frame:
    its image size must be the displayed one, so each ground-truth box lies on its object."""
    from dinocache.grade.evaluate import load_split

    data = oriented_dataset(tmp_path / "ds", synth)
    (s,) = load_split(data, "val")
    assert s.shape == (H, W)
    shown = cv2.imread(str(s.image), cv2.IMREAD_COLOR).mean(axis=2)
    for poly in s.gt.poly:
        c = poly.mean(axis=0)
        mask = np.zeros(shown.shape, np.uint8)
        cv2.fillPoly(mask, [np.round(c + (poly - c) * 0.6).astype(np.int32)], 1)
        assert shown[mask.astype(bool)].mean() > 200, "a ground-truth box is off its object"


def test_pretrain_sizes_are_the_displayed_frame(tmp_path, synth) -> None:
    """Pretraining's label-free dataset gives Ultralytics each image's size: the displayed one, the frame its
    loader decodes the pixels in."""
    from dinocache.train.pretrain_trainer import NoLabels

    data = oriented_dataset(tmp_path / "ds", synth)
    ds = NoLabels()
    ds.im_files = [str(data.parent / "images" / "train" / "a.png")]
    (label,) = ds.get_labels()
    assert label["shape"] == (H, W) == cv2.imread(ds.im_files[0]).shape[:2]


def test_precompute_and_training_use_the_displayed_frame(tmp_path, demo_data, tiny_teacher_dir) -> None:
    """One training image stored rotated with orientation 6 and the same image stored as displayed give the
    same cache (precompute's teacher input is the displayed frame), and the training loader pairs the
    displayed pixels with that map, flipped together."""
    import shutil

    from dinocache.cache.freshness import read_record
    from dinocache.precompute.run import main as precompute
    from dinocache.train.config import GEOMETRIC_AUGMENTATIONS
    from dinocache.train.dataset import DistillDataset, TeacherLookup
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    from dinocache import cache
    from dinocache.core.data import load_data_yaml

    plain, turned = tmp_path / "plain", tmp_path / "turned"
    for d in (plain, turned):
        shutil.copytree(demo_data.parent, d)
    img = turned / "images" / "train" / "000000.png"
    shown = cv2.imread(str(img), cv2.IMREAD_COLOR)
    store_oriented(img, shown)
    with Image.open(img) as im:
        assert np.array_equal(np.asarray(im)[..., ::-1], np.rot90(shown, 1))  # stored turned
    assert np.array_equal(cv2.imread(str(img), cv2.IMREAD_COLOR), shown)  # displayed as before

    (tmp_path / "empty.json").write_text("{}")
    caches = {}
    for d in (plain, turned):
        caches[d] = d / "c.zarr"
        argv = [f"data={d / 'data.yaml'}", f"cache={caches[d]}", f"dino_root={tiny_teacher_dir}", "imgsz=128"]
        argv += ["channels=8", "device=cpu", "batch=8", "workers=0"]
        assert precompute(["--config", str(tmp_path / "empty.json"), *argv]) == 0
    a, b = cache.open(str(caches[plain])), cache.open(str(caches[turned]))
    key = "images/train/000000.png"
    assert key in b.keys and np.array_equal(a.get(key, channels=8), b.get(key, channels=8))
    assert np.asarray(a.pca.components).tobytes() == np.asarray(b.pca.components).tobytes()
    assert read_record(str(caches[turned]))[key][0][0] == img.stat().st_size

    info = load_data_yaml(turned / "data.yaml")
    hyp = get_cfg(DEFAULT_CFG, {**GEOMETRIC_AUGMENTATIONS, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "fliplr": 1.0})
    hyp.augmentations = []
    ds = DistillDataset(
        img_path=info["train"], imgsz=128, batch_size=4, augment=True, hyp=hyp, rect=False, stride=32, pad=0.0,
        task="obb", data=info, teacher=TeacherLookup(str(caches[turned]), info["path"], 8),
    )  # fmt: skip
    i = [Path(f).name for f in ds.im_files].index("000000.png")
    s = ds[i]
    assert np.array_equal(s["img"].numpy(), np.flip(shown[..., ::-1], axis=1).transpose(2, 0, 1))
    assert np.array_equal(s["teacher_feat"], np.flip(a.get(key, channels=8), axis=-1))
