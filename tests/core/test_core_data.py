"""The one data.yaml resolver (Ultralytics' check_det_dataset) in its strict and its tolerant form."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from dinocache.core.data import DataError, list_split_images, load_data_yaml


def _dataset(root: Path, splits: list[str]) -> Path:
    for s in splits:
        (root / "images" / s).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / s / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (root / "data.yaml").write_text(yaml.safe_dump({**{s: f"images/{s}" for s in splits}, "names": ["x"]}))
    return root / "data.yaml"


def test_strict_and_tolerant(tmp_path: Path) -> None:
    both = _dataset(tmp_path / "both", ["train", "val"])
    info = load_data_yaml(both.parent)  # a folder means its data.yaml
    assert info["names"] == {0: "x"} and Path(info["path"]) == both.parent.resolve()
    assert [p.name for p in list_split_images(both, "val")[1]] == ["a.png"]

    only_test = _dataset(tmp_path / "t", ["test"])
    with pytest.raises(DataError, match=r"data.yaml.*'train:' key missing"):
        load_data_yaml(only_test)
    info = load_data_yaml(only_test, require_val=False)
    assert "train" not in info and "val" not in info and info["yaml_file"] == str(only_test.resolve())
    assert Path(info["test"]) == (only_test.parent / "images" / "test").resolve()


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data_yaml(tmp_path / "nope.yaml")
    with pytest.raises(DataError, match="has no data.yaml"):
        load_data_yaml(tmp_path)
    (tmp_path / "data.yaml").write_text("names: [x]\n")
    with pytest.raises(DataError, match="no train/val/test split"):
        load_data_yaml(tmp_path, require_val=False)


def test_image_keys_match_image_key(tmp_path) -> None:
    """The bulk key resolution gives image_key's strings: links to files, linked folders, '..', relative paths."""
    import os

    from dinocache.core.data import DataError, image_key, image_keys

    (tmp_path / "root" / "images" / "sub").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    for f in ("root/images/a.png", "root/images/sub/c.png", "out/b.png"):
        (tmp_path / f).write_text("x")
    os.symlink(tmp_path / "root" / "images" / "a.png", tmp_path / "root" / "images" / "link.png")
    os.symlink(tmp_path / "out" / "b.png", tmp_path / "root" / "images" / "outside.png")
    os.symlink(tmp_path / "root" / "images", tmp_path / "root" / "alias")
    os.symlink(tmp_path / "root", tmp_path / "rootlink")
    r = tmp_path / "root"
    files = [
        r / "images" / "a.png",
        str(r / "images" / "sub" / "c.png"),
        r / "images" / "link.png",
        r / "alias" / "a.png",
        r / "images" / "sub" / ".." / "a.png",
        tmp_path / "rootlink" / "images" / "a.png",
        str(r / "images" / "." / "a.png"),
    ]
    for root in (r, tmp_path / "rootlink", f"{r}/"):
        assert image_keys(files, root) == [image_key(f, root) for f in files]
    with pytest.raises(DataError, match="not inside the dataset root"):
        image_keys([tmp_path / "out" / "b.png"], r)
    # a per-file link to outside the root (git-annex, DVC) keys by the path as listed, as Ultralytics reads it
    assert image_keys([r / "images" / "outside.png"], r) == ["images/outside.png"]
    # so does a link to another file inside the root (git-annex's objects under the dataset's .git)
    assert image_keys([r / "images" / "link.png"], r) == ["images/link.png"]
    # a linked folder whose target is outside the root: Ultralytics lists the files under the target (it
    # resolves a split's folder); they key by the link's path inside the root, as do the files listed through it
    os.symlink(tmp_path / "out", r / "images" / "ext")
    for root in (r, tmp_path / "rootlink"):
        for f in (tmp_path / "out" / "b.png", r / "images" / "ext" / "b.png"):
            assert image_keys([f], root) == [image_key(f, root)] == ["images/ext/b.png"]
    cwd = os.getcwd()
    try:
        os.chdir(r)
        rel = ["images/a.png", "./images/sub/c.png"]
        assert (
            image_keys(rel, ".") == [image_key(f, ".") for f in rel] == ["images/a.png", "images/sub/c.png"]
        )
    finally:
        os.chdir(cwd)
