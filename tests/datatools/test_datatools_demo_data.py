"""`dinocache demo-data`: determinism, label validity, Ultralytics compatibility, CLI and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dinocache.datatools import demo_data
from dinocache.datatools.demo_data import CLASSES, make_demo_dataset

from dinocache.core.config import ConfigError

SMALL = dict(n_train=4, n_val=2, imgsz=64)


def _content(root: Path) -> dict[str, bytes]:
    """Every image, label and data.yaml (not the saved args, which name the output folder)."""
    files = [*root.glob("images/*/*"), *root.glob("labels/*/*.txt"), root / "data.yaml"]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(files)}


def _labels(root: Path) -> list[tuple[Path, list[list[float]]]]:
    out = []
    for f in sorted(root.glob("labels/*/*.txt")):
        rows = [[float(v) for v in line.split()] for line in f.read_text().splitlines() if line.strip()]
        out.append((f, rows))
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = _content(make_demo_dataset(tmp_path / "a", seed=5, **SMALL))
    b = _content(make_demo_dataset(tmp_path / "b", seed=5, **SMALL))
    c = _content(make_demo_dataset(tmp_path / "c", seed=6, **SMALL))
    assert len([k for k in a if k.endswith(".png")]) == 6
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".png"))


def test_more_images_keep_the_first_ones(tmp_path: Path) -> None:
    a = _content(make_demo_dataset(tmp_path / "a", n_train=2, n_val=1, imgsz=64))
    b = _content(make_demo_dataset(tmp_path / "b", n_train=3, n_val=2, imgsz=64))
    assert all(b[k] == v for k, v in a.items())


def test_layout_images_and_labels(tmp_path: Path) -> None:
    import cv2
    import yaml

    root = make_demo_dataset(tmp_path / "d", n_train=8, n_val=2, imgsz=96, seed=1)
    assert root == tmp_path / "d"
    y = yaml.safe_load((root / "data.yaml").read_text())
    assert y == {"train": "images/train", "val": "images/val", "names": dict(enumerate(CLASSES))}
    for split, n in (("train", 8), ("val", 2)):
        imgs = sorted((root / "images" / split).glob("*.png"))
        assert len(imgs) == n
        for p in imgs:
            im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert im.shape == (96, 96, 3) and im.dtype == np.uint8
            assert (root / "labels" / split / f"{p.stem}.txt").exists()
    n_obj = 0
    for f, rows in _labels(root):
        for r in rows:
            assert len(r) == 9, f
            assert r[0] == int(r[0]) and 0 <= r[0] < len(CLASSES)
            xy = np.array(r[1:]).reshape(4, 2)
            assert ((xy >= 0) & (xy <= 1)).all(), f
            # The label is a rectangle: consecutive sides orthogonal, opposite sides equal.
            e = np.roll(xy, -1, 0) - xy
            assert abs(np.dot(e[0], e[1])) < 1e-4 and np.allclose(
                np.linalg.norm(e[0]), np.linalg.norm(e[2]), atol=1e-5
            )
            assert np.linalg.norm(e[0]) * np.linalg.norm(e[1]) > 0.0005  # not degenerate
            n_obj += 1
    assert n_obj >= 8


def test_object_counts_and_empty_images(tmp_path: Path) -> None:
    empty = make_demo_dataset(tmp_path / "e", empty_frac=1.0, **SMALL)
    assert all(rows == [] for _, rows in _labels(empty))
    full = make_demo_dataset(
        tmp_path / "f", n_train=6, n_val=1, imgsz=128, empty_frac=0.0, min_objects=2, max_objects=3
    )
    counts = [len(rows) for _, rows in _labels(full)]
    assert all(1 <= c <= 3 for c in counts) and max(counts) >= 2


@pytest.mark.parametrize("cls", range(len(CLASSES)))
def test_label_box_is_the_shape_enclosing_rectangle(cls: int) -> None:
    """Each shape fills its w x h box up to the edges (touches all 4 sides), so the OBB is tight."""
    import cv2

    rng = np.random.default_rng(cls)
    w, h, cx, cy, angle = 40.0, 24.0, 50.0, 45.0, 33.0
    local = demo_data._shape_polygon(cls, w, h, rng)
    assert np.allclose(local.min(0), [-w / 2, -h / 2], atol=0.2) and np.allclose(
        local.max(0), [w / 2, h / 2], atol=0.2
    )
    pts = demo_data._to_image(local, cx, cy, angle)
    box = cv2.boxPoints(((cx, cy), (w, h), angle))
    # Every shape vertex lies inside (or on) the label box.
    inside = [cv2.pointPolygonTest(box.reshape(-1, 1, 2), (float(x), float(y)), True) for x, y in pts]
    assert min(inside) > -0.01


def test_ultralytics_reads_it_without_corrupt_labels(tmp_path: Path) -> None:
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import load_dataset_cache_file

    from dinocache.core.data import list_split_images, load_data_yaml

    root = make_demo_dataset(tmp_path / "d", n_train=8, n_val=2, imgsz=64, empty_frac=0.2)
    info = load_data_yaml(root / "data.yaml")  # Ultralytics' check_det_dataset
    assert info["nc"] == len(CLASSES)
    _, files = list_split_images(root / "data.yaml", "train")
    assert len(files) == 8
    ds = YOLODataset(img_path=info["train"], imgsz=64, augment=False, data=info, task="obb", hyp=get_cfg())
    assert len(ds) == 8
    nf, nm, ne, nc, n = load_dataset_cache_file(root / "labels" / "train.cache")["results"]
    msgs = load_dataset_cache_file(root / "labels" / "train.cache")["msgs"]
    assert (nm, nc, n) == (0, 0, 8) and msgs == []
    n_labels = sum(len(rows) for f, rows in _labels(root) if "train" in f.parts)
    assert sum(len(lb["cls"]) for lb in ds.labels) == n_labels
    sample = ds[0]
    assert sample["img"].shape == (3, 64, 64) and sample["bboxes"].shape[-1] == 5


def test_conftest_fixture(demo_data: Path) -> None:
    from dinocache.core.data import list_split_images

    assert demo_data.name == "data.yaml" and demo_data.is_absolute()
    assert len(list_split_images(demo_data, "train")[1]) == 16
    assert len(list_split_images(demo_data, "val")[1]) == 4


def test_cli_writes_refuses_and_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert demo_data.main([str(out), "--train", "2", "--val", "1", "--imgsz", "64"]) == 0
    assert "data.yaml" in capsys.readouterr().out
    before = _content(out)
    assert len([k for k in before if k.endswith(".png")]) == 3
    assert (out / "demo_data_args.yaml").exists()
    # Non-empty OUT refused and untouched.
    assert demo_data.main([str(out), "--train", "3", "--val", "1", "--imgsz", "64", "--seed", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert _content(out) == before
    assert (
        demo_data.main(
            [str(out), "--train", "3", "--val", "1", "--imgsz", "64", "--seed", "1", "--overwrite"]
        )
        == 0
    )
    assert len(list((out / "images" / "train").glob("*.png"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folders left


@pytest.mark.parametrize(
    "args,key",
    [
        (["--imgsz", "8"], "imgsz"),
        (["--train", "0"], "n_train"),
        (["--train", "two"], "n_train"),
        (["max_objects=0"], "min_objects"),
        (["max_objecs=3"], "max_objects"),  # unknown key: suggestion names the right one
        (["empty_frac=2"], "empty_frac"),
    ],
)
def test_cli_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], key: str
) -> None:
    assert demo_data.main([str(tmp_path / "ds"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and key in err
    assert not (tmp_path / "ds").exists()


def test_out_is_a_file_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        make_demo_dataset(tmp_path / "f", **SMALL)


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = demo_data.render_image
    calls = {"n": 0}

    def flaky(rng, cfg):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(rng, cfg)

    monkeypatch.setattr(demo_data, "render_image", flaky)
    with pytest.raises(OSError, match="disk full"):
        make_demo_dataset(tmp_path / "ds", **SMALL)
    assert list(tmp_path.iterdir()) == []
