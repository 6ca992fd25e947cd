"""One place that says which images a split holds and how the cache keys them.

Precompute and the trainer must agree exactly on the list of training images and on each image's key
(its path relative to the dataset root, POSIX style), so both call these functions. Listing reuses
Ultralytics' own `check_det_dataset` and `BaseDataset.get_img_files`, so we see what its loader sees.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

IMG_EXTS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic"}


class DataError(ValueError):
    """Bad dataset input; the message names the file."""


def find_data_yaml(data: str | Path) -> Path:
    """The dataset file a `data` key names: the yaml itself, or `data.yaml` inside a folder."""
    p = Path(data).expanduser().resolve()
    if not p.exists():
        raise DataError(f"dataset file {p} does not exist")
    if p.is_dir():
        p = p / "data.yaml"
        if not p.exists():
            raise DataError(f"{p.parent} has no data.yaml")
    return p


def load_data_yaml(data: str | Path, require_val: bool = True) -> dict[str, Any]:
    """The one data.yaml resolver: Ultralytics' own `check_det_dataset` on the absolute path (so `path:` is
    not taken relative to Ultralytics' DATASETS_DIR). Returns Ultralytics' dict with absolute
    `path`/`train`/`val`/`test`, `names` as {id: name} and `yaml_file`.

    `require_val=False` (the dataset tools, which also read what `convert` wrote for a single split) accepts
    any non-empty subset of train/val/test: Ultralytics checks a copy in which the missing splits point at a
    present one, with `path:` pinned to the original's root, and those stand-ins are dropped again."""
    from ultralytics.data.utils import check_det_dataset

    p = find_data_yaml(data)
    src, stand_ins = p, []
    if not require_val:
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise DataError(f"{p}: invalid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise DataError(f"{p}: expected a mapping with train/val/names")
        present = [k for k in ("train", "val", "test") if raw.get(k)]
        if not present:
            raise DataError(f"{p}: no train/val/test split")
        stand_ins = [k for k in ("train", "val") if not raw.get(k)]
    with tempfile.TemporaryDirectory() as tmp:
        if stand_ins:
            raw = {**raw, "path": raw.get("path") or str(p.parent)}
            raw.update({k: raw[present[0]] for k in stand_ins})
            src = Path(tmp) / p.name
            src.write_text(yaml.safe_dump(raw))
        try:
            info = check_det_dataset(str(src), autodownload=False)
        except Exception as e:  # Ultralytics raises several types; say which file
            raise DataError(f"{p}: {str(e).replace(str(src), str(p))}") from None
    for k in stand_ins:
        info.pop(k, None)
    info["yaml_file"] = str(p)
    return info


def dataset_root(info: dict[str, Any]) -> Path:
    return Path(info["path"]).resolve()


def split_images(info: dict[str, Any], split: str) -> list[Path]:
    """Sorted image files of `split` of a loaded data.yaml, exactly as Ultralytics' loader lists them."""
    from ultralytics.data.base import BaseDataset

    src = info.get(split)
    where = info.get("yaml_file", "data.yaml")
    if not src:
        raise DataError(f"{where}: no '{split}' split")
    try:
        files = BaseDataset.get_img_files(SimpleNamespace(prefix="", fraction=1.0), src)
    except FileNotFoundError as e:
        cause = e.__cause__ or e
        raise DataError(f"{where}: no images for split '{split}' ({cause})") from None
    return [Path(f).resolve() for f in files]


def list_split_images(data: str | Path, split: str = "train") -> tuple[Path, list[Path]]:
    """(dataset root, sorted image files of `split`) exactly as Ultralytics' loader lists them."""
    info = load_data_yaml(data)
    return dataset_root(info), split_images(info, split)


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
