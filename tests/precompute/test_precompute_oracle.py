"""The oracle cache writer reads each key's labels where `label_of` says: a cache of unlabeled images whose labels
are kept elsewhere (the signal.pretrain benchmark's hidden labels) gets the same oracle rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def test_label_of_gives_the_same_oracle_rows(reference_cache: Path, demo_data: Path, tmp_path: Path) -> None:
    from dinocache.precompute.oracle import write_oracle_features

    from dinocache import cache

    hidden = tmp_path / "hidden-labels"  # the labels moved away from the images
    shutil.copytree(demo_data.parent / "labels" / "train", hidden)
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    shutil.copytree(reference_cache, a)
    shutil.copytree(reference_cache, b)
    mu_a, _ = write_oracle_features(a, demo_data, 5)
    mu_b, _ = write_oracle_features(
        b, "", 5, label_of=lambda key: hidden / Path(key).with_suffix(".txt").name
    )
    np.testing.assert_array_equal(mu_a, mu_b)
    fa, fb = cache.open(a), cache.open(b)
    keys = sorted(fa.keys)
    assert keys and keys == sorted(fb.keys)
    for k in keys:
        np.testing.assert_array_equal(np.asarray(fa.get(k)), np.asarray(fb.get(k)))
    assert float(np.abs(mu_a).sum()) > 0  # the oracle rows hold class coverage, not zeros
