"""Trust faults: a cache whose maps belong to other images (edited, re-augmented, another dataset with the
same file names, resized) is refused by default before the first step, naming the image and the repair
command; an image whose bytes are unchanged (a copy without `-p`, a `touch`) still trains."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.faults.test_fault_bad_inputs import _img, t_cfg


def reaugmented(data: Path) -> tuple[str, str]:
    """The image rewritten with other pixels (what `augment overwrite=true seed=7` does to every image)."""
    p = _img(data, 2)
    im = cv2.imread(str(p))
    cv2.imwrite(str(p), np.ascontiguousarray(im[:, ::-1]))
    return p.name, "cache repair"


def foreign(data: Path) -> tuple[str, str]:
    """Another dataset with the same file names: two images swap their bytes (mtimes follow the write)."""
    a, b = _img(data, 0), _img(data, 1)
    ba, bb = a.read_bytes(), b.read_bytes()
    a.write_bytes(bb)
    b.write_bytes(ba)
    return a.name, "another dataset"


def resized(data: Path) -> tuple[str, str]:
    p = _img(data, 3)
    im = cv2.imread(str(p))
    cv2.imwrite(str(p), cv2.resize(cv2.resize(im, (64, 64)), (128, 128)))
    return p.name, "cache repair"


def same_size_new_bytes(data: Path) -> tuple[str, str]:
    """Same size, other bytes, mtime moved on: only the hash can tell."""
    p = _img(data, 4)
    raw = bytearray(p.read_bytes())
    raw[-20] ^= 0xFF  # inside the PNG's last chunk: the file size is kept
    st = p.stat()
    p.write_bytes(bytes(raw))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return p.name, "cache repair"


STALE = {
    "image re-augmented after precompute": reaugmented,
    "another dataset with the same file names": foreign,
    "image resized after precompute": resized,
    "same size, other bytes": same_size_new_bytes,
}


@pytest.mark.parametrize("name", list(STALE))
def test_stale_maps_refused_by_default(name: str, work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.train.cli import main

    data, store = work
    image, hint = STALE[name](data)
    r = faults.expect_clear(
        "train", name, main, t_cfg(tmp_path, data, store, tiny_teacher_dir), [image, hint]
    )
    assert r.rc == 2
    assert not list((tmp_path / "artifacts").rglob("train")), "a refused run left a run folder"


def test_touched_images_are_hashed_and_accepted(work, tmp_path, tiny_teacher_dir, capsys) -> None:
    """Every image gets a new mtime with the same bytes: the preflight hashes them and accepts the cache."""
    from dinocache.train.config import TrainConfig
    from dinocache.train.run import preflight

    from dinocache.core.config import load

    data, store = work
    for p in (data.parent / "images" / "train").iterdir():
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 5_000_000_000))
    cfg = load(TrainConfig, t_cfg(tmp_path, data, store, tiny_teacher_dir)[1], "train")
    assert preflight(cfg).cache_path == str(store)


def test_cache_without_record_warns(work, tmp_path, tiny_teacher_dir) -> None:
    """A cache made before the record existed: trains as before (with a warning saying how to add it)."""
    from dinocache.train.config import TrainConfig
    from dinocache.train.run import preflight

    from dinocache.core.config import load

    data, store = work
    for p in store.glob("images.stat*.json"):
        p.unlink()
    reaugmented(data)  # not detectable without the record: verify_images=true is the full check
    cfg = load(TrainConfig, t_cfg(tmp_path, data, store, tiny_teacher_dir)[1], "train")
    assert preflight(cfg).cache_path == str(store)
