"""One place that says which images a split holds and how the cache keys them.

Precompute and the trainer must agree exactly on the list of training images and on each image's key
(its path relative to the dataset root, POSIX style), so both call these functions. Listing reuses
Ultralytics' own `check_det_dataset` and `BaseDataset.get_img_files`, so we see what its loader sees.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from dinocache.core.errors import DinocacheError

IMG_EXTS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic"}


class DataError(DinocacheError, ValueError):
    """Bad dataset input; the message names the file."""


def is_dataset_yaml(p: Path) -> bool:
    """A YOLO dataset file: a mapping with a split (train/val) and classes (names/nc)."""
    try:
        d = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(d, dict) and bool({"train", "val"} & set(d)) and bool({"names", "nc"} & set(d))


def find_data_yaml(data: str | Path) -> Path:
    """The dataset file a `data` key names: the yaml itself, or in a folder its `data.yaml`, else its one
    dataset yaml of any name (published datasets ship `<name>.yaml`); two candidates are refused, named."""
    p = Path(data).expanduser().resolve()
    if not p.exists():
        raise DataError(f"dataset file {p} does not exist")
    if p.is_dir():
        if (p / "data.yaml").is_file():
            return p / "data.yaml"
        cands = sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml") and is_dataset_yaml(q))
        if not cands:
            raise DataError(
                f"{p} has no data.yaml (nor one other dataset yaml: <name>.yaml with train/val and names)"
            )
        if len(cands) > 1:
            raise DataError(
                f"{p} holds {len(cands)} dataset files: {', '.join(q.name for q in cands)}; pass the one to use"
            )
        return cands[0]
    _check_utf8(p)
    return p


def _check_utf8(p: Path) -> None:
    """YAML files are UTF-8 (Ultralytics reads them dropping any other byte, so a Latin-1 class name would
    silently lose letters): anything else is refused naming the byte."""
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"dataset file {p}: cannot read ({e.strerror or e})") from None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{p}:{line}: not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 1]!r}); save it as UTF-8"
        ) from None


def _names_dict(names: Any) -> dict[int, str] | None:
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        return {k: str(v) for k, v in sorted(names.items())}
    return None


def _try_light(p: Path, require_val: bool) -> dict[str, Any] | None:
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # the full path below reports it
    if not isinstance(raw, dict):
        return None
    splits = [k for k in ("train", "val", "test") if raw.get(k)]
    if (require_val and not {"train", "val"} <= set(splits)) or not splits:
        return None
    return _resolve_light(p, raw)


def _resolve_light(p: Path, raw: dict[str, Any]) -> dict[str, Any] | None:
    """check_det_dataset's answer for the plain case (local folders that exist, names as a list or an int
    mapping, no nc), without importing Ultralytics (and torch): `dataset inspect/validate` start in a second.
    None for anything else, which then goes through Ultralytics itself (tests compare both)."""
    names = _names_dict(raw.get("names"))
    if names is None or "nc" in raw or "download" in raw or "validation" in raw:
        return None
    root = Path(raw.get("path") or p.parent)
    if not root.exists():
        return None  # Ultralytics looks under its DATASETS_DIR
    info: dict[str, Any] = {**raw, "names": names, "nc": len(names), "channels": raw.get("channels", 3)}
    info["path"] = root
    for k in ("train", "val", "test", "minival"):
        v = raw.get(k)
        if not v:
            continue
        if not isinstance(v, str):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                return None
            info[k] = [str((root / x).resolve()) for x in v]
        else:
            x = (root / v).resolve()
            if not x.exists() and v.startswith("../"):
                x = (root / v[3:]).resolve()
            info[k] = str(x)
        if not all(Path(x).exists() for x in (info[k] if isinstance(info[k], list) else [info[k]])):
            return None
    info["yaml_file"] = str(p)
    return info


def load_data_yaml(data: str | Path, require_val: bool = True) -> dict[str, Any]:
    """The one data.yaml resolver: Ultralytics' own `check_det_dataset` on the absolute path (so `path:` is
    not taken relative to Ultralytics' DATASETS_DIR). Returns Ultralytics' dict with absolute
    `path`/`train`/`val`/`test`, `names` as {id: name} and `yaml_file`.

    `require_val=False` (the dataset tools, which also read what `convert` wrote for a single split) accepts
    any non-empty subset of train/val/test: Ultralytics checks a copy in which the missing splits point at a
    present one, with `path:` pinned to the original's root, and those stand-ins are dropped again."""
    p = find_data_yaml(data)
    if "ultralytics" not in sys.modules:  # light commands: don't pay torch's import for a yaml
        light = _try_light(p, require_val)
        if light is not None:
            return light
    from ultralytics.data.utils import check_det_dataset

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


def _img_files(src: str | list[str]) -> list[str]:
    """Ultralytics' BaseDataset.get_img_files (fraction 1) without importing it: folders searched recursively,
    .txt lists with `./` relative to the list, image suffixes only, sorted."""
    f: list[str] = []
    for p in src if isinstance(src, list) else [src]:
        p = Path(p)
        if p.is_dir():
            f += glob.glob(str(Path(glob.escape(p)) / "**" / "*.*"), recursive=True)
        elif p.is_file():
            with open(p, encoding="utf-8-sig") as t:
                lines = t.read().strip().splitlines()
            parent = str(p.parent) + os.sep
            f += [x.replace("./", parent, 1) if x.startswith("./") else x for x in lines]
        else:
            raise FileNotFoundError(f"{p} does not exist")
    files = sorted(x.replace("/", os.sep) for x in f if x.rpartition(".")[-1].lower() in IMG_EXTS)
    if not files:
        raise FileNotFoundError(f"No images found in {src}")
    return files


def split_images(info: dict[str, Any], split: str) -> list[Path]:
    """Sorted image files of `split` of a loaded data.yaml, exactly as Ultralytics' loader lists them
    (its own BaseDataset.get_img_files once Ultralytics is imported, else the same rule in `_img_files`)."""
    src = info.get(split)
    where = info.get("yaml_file", "data.yaml")
    if not src:
        raise DataError(f"{where}: no '{split}' split")
    try:
        if "ultralytics" in sys.modules:
            from ultralytics.data.base import BaseDataset

            files = BaseDataset.get_img_files(SimpleNamespace(prefix="", fraction=1.0), src)
        else:
            files = _img_files(src)
    except FileNotFoundError as e:
        cause = e.__cause__ or e
        raise DataError(f"{where}: no images for split '{split}' ({cause})") from None
    # absolute, links kept as listed: a per-file link (git-annex, DVC) keeps its name and its label file
    return [Path(os.path.abspath(f)) for f in files]


def list_split_images(data: str | Path, split: str = "train") -> tuple[Path, list[Path]]:
    """(dataset root, sorted image files of `split`) exactly as Ultralytics' loader lists them."""
    info = load_data_yaml(data)
    return dataset_root(info), split_images(info, split)


def list_images(data: str | Path, split: str = "train") -> tuple[Path, list[Path]]:
    """(root, sorted image files) of labelled or unlabeled images: what precompute, `cache verify/repair` and
    pretrain read. Labels are never opened here, so each form below is equally a set of unlabeled images:

    - a dataset yaml, or a folder holding one: its `split`, exactly as Ultralytics' loader lists it
      (`list_split_images`; only that split needs to exist), root = the dataset's `path`;
    - a folder of images without a dataset yaml: every image below it (recursively, Ultralytics' rule for a
      folder source), root = the folder;
    - a .txt list of images (one path a line, `./` relative to the list, Ultralytics' rule): root = the list's
      folder, and every listed image must lie inside it (its key is its path relative to the root).
    """
    p = Path(data).expanduser()
    if not p.exists():
        raise DataError(
            f"data {p} does not exist (a dataset yaml, a folder of images or a .txt list of images)"
        )
    p = p.resolve()
    if p.is_file() and p.suffix == ".txt":
        root, src = p.parent, str(p)
    elif p.is_dir() and not _holds_dataset_yaml(p):
        root, src = p, str(p)
    else:
        info = load_data_yaml(p, require_val=False)
        return dataset_root(info), split_images(info, split)
    try:
        files = [Path(os.path.abspath(f)) for f in _img_files(src)]
    except FileNotFoundError as e:
        raise DataError(f"{p}: no images ({e})") from None
    for f in files:
        if not f.is_file():
            raise DataError(f"{p}: listed image {f} does not exist")
        image_key(f, root)  # refuses an image outside the root, naming it
    return root, files


@contextmanager
def as_dataset_yaml(data: str | Path) -> Iterator[Path]:
    """`data` as a dataset yaml: itself (or its folder's) when it is one; for a folder or .txt list of
    unlabeled images (`list_images`' rules) a temporary yaml whose `train` split is those images, one class
    `object`, no labels, `path` = their root (so their keys stay what precompute gives them)."""
    p = Path(data).expanduser()
    if not p.exists() or p.suffix in (".yaml", ".yml") or (p.is_dir() and _holds_dataset_yaml(p)):
        yield p
        return
    root, _ = list_images(p)  # refuses an empty folder or an image outside the list's folder, by name
    with tempfile.TemporaryDirectory() as tmp:
        y = Path(tmp) / "data.yaml"
        y.write_text(yaml.safe_dump({"path": str(root), "train": str(p.resolve()), "names": {0: "object"}}))
        yield y


def _holds_dataset_yaml(folder: Path) -> bool:
    """A dataset folder: its data.yaml, or one yaml with train/val and names (find_data_yaml's rule)."""
    if (folder / "data.yaml").is_file():
        return True
    return any(q.suffix in (".yaml", ".yml") and is_dataset_yaml(q) for q in folder.iterdir())


def _within(path: str, base: str) -> str | None:
    """`path` relative to `base` (both absolute, normalised) as a POSIX key, or None when it lies outside."""
    prefix = base.rstrip(os.sep) + os.sep
    if not path.startswith(prefix) or len(path) == len(prefix):
        return None
    return path[len(prefix) :].replace(os.sep, "/")


@functools.lru_cache(maxsize=8)
def _linked_folders(root: str) -> tuple[tuple[str, str], ...]:
    """(resolved target, path relative to `root`) of every folder link below the resolved `root`, deepest
    target first. Ultralytics resolves a split's folder (`images/train` a link to a store elsewhere: DVC,
    git-annex, a mounted disk) and lists the files under the target; this maps them back to the path the
    dataset shows. Read once per root (again after a miss), and only when an image lies outside it."""
    out: list[tuple[str, str]] = []
    todo = [root]
    while todo:
        folder = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_symlink():
                    if os.path.isdir(e.path):
                        out.append((os.path.realpath(e.path), os.path.relpath(e.path, root)))
                elif e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
            except OSError:
                continue
    return tuple(sorted(out, key=lambda t: -len(t[0])))


def image_key(image: str | Path, root: str | Path) -> str:
    """Cache key of an image: its path relative to the dataset root as listed (POSIX separators), never the
    target of a link. A file that is a link (git-annex, DVC: each image a link into an object store) keys by
    its own path; an image under a linked folder that Ultralytics lists by the folder's target keys by the
    link's path inside the root."""
    listed = os.path.abspath(image)
    for base in (os.path.abspath(root), os.path.realpath(root)):
        key = _within(listed, base)
        if key is not None:
            return key
    base = os.path.realpath(root)
    # listed through another path to the root (a linked parent folder): the folders resolved, not the file
    key = _within(os.path.join(os.path.realpath(os.path.dirname(listed)), os.path.basename(listed)), base)
    if key is not None:
        return key
    for fresh in (False, True):  # a miss reads the links again: one made since the last read counts
        if fresh:
            _linked_folders.cache_clear()
        for target, rel in _linked_folders(base):
            inner = _within(listed, target)
            if inner is not None:
                return f"{Path(rel).as_posix()}/{inner}"
    raise DataError(f"image {image} is not inside the dataset root {root}")


def image_keys(images: Sequence[str | Path], root: str | Path) -> list[str]:
    """`image_key` of many images at once, same strings: no system call for an image listed inside the root
    (any other goes through `image_key`)."""
    bases = (os.path.abspath(root), os.path.realpath(root))
    out = []
    for image in images:
        listed = os.path.abspath(image)
        key = _within(listed, bases[0])
        if key is None:
            key = _within(listed, bases[1])
        out.append(key if key is not None else image_key(image, root))
    return out


def file_sha256(path: str | Path, bufsize: int = 1 << 20) -> str:
    """sha256 hex of a file, read in `bufsize`-byte pieces (constant memory for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()
