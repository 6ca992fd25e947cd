"""One place that says which images a split holds and how the cache keys them.

Precompute and the trainer must agree exactly on the list of training images and on each image's key
(its path relative to the dataset root, POSIX style), so both call these functions. Listing reuses
Ultralytics' own `check_det_dataset` and `BaseDataset.get_img_files`, so we see what its loader sees.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

IMG_EXTS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic"}


class DataError(ValueError):
    """Bad dataset input; the message names the file."""


def load_data_yaml(data: str | Path) -> dict[str, Any]:
    """Resolve a YOLO `data.yaml` the way Ultralytics does (absolute path, so `path:` is not taken
    relative to Ultralytics' DATASETS_DIR). Returns Ultralytics' dict with absolute `path`/`train`/`val`."""
    from ultralytics.data.utils import check_det_dataset

    p = Path(data).expanduser().resolve()
    if not p.exists():
        raise DataError(f"dataset file {p} does not exist")
    if p.is_dir():
        p = p / "data.yaml"
        if not p.exists():
            raise DataError(f"{p.parent} has no data.yaml")
    try:
        return check_det_dataset(str(p), autodownload=False)
    except Exception as e:  # Ultralytics raises several types; say which file
        raise DataError(f"{p}: {e}") from None


def dataset_root(info: dict[str, Any]) -> Path:
    return Path(info["path"]).resolve()


def list_split_images(data: str | Path, split: str = "train") -> tuple[Path, list[Path]]:
    """(dataset root, sorted image files of `split`) exactly as Ultralytics' loader lists them."""
    from ultralytics.data.base import BaseDataset

    info = load_data_yaml(data)
    src = info.get(split)
    if not src:
        raise DataError(f"{info.get('yaml_file', data)}: no '{split}' split")
    try:
        files = BaseDataset.get_img_files(SimpleNamespace(prefix="", fraction=1.0), src)
    except FileNotFoundError as e:
        cause = e.__cause__ or e
        raise DataError(f"{info.get('yaml_file', data)}: no images for split '{split}' ({cause})") from None
    return dataset_root(info), [Path(f).resolve() for f in files]


def image_key(image: str | Path, root: str | Path) -> str:
    """Cache key of an image: its path relative to the dataset root, POSIX separators."""
    p = Path(image).resolve()
    try:
        return p.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        raise DataError(f"image {p} is not inside the dataset root {root}") from None


def file_sha256(path: str | Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()
