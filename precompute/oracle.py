"""An oracle "teacher" cache: a finished cache's `features` overwritten with each image's class coverage.

For diagnostics only (the default-suite signal test, benchmarks/signal_oracle.py): if distilling towards a map
built from the labels themselves does not help a student, no teacher's cached map can be expected to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def write_oracle_features(
    cache_path: str | Path, data: str | Path, n_cls: int, label_of: Callable[[str], Path] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Overwrite every row of the cache at `cache_path` (made from `data`'s train split) with its image's oracle
    map (datatools.oracle.oracle_map), through the cache's own writer, expressed in the cache's stored channel
    statistics so that the trainer's standardisation ((x - mean) / std) yields the oracle's own standardised
    maps. Returns the oracle's per-channel (mean, std) over the rows, to undo that standardisation.
    `label_of(key)`: the label file of a cache key, for a cache of unlabeled images whose labels are kept
    elsewhere (hidden from the pretraining, known to the oracle); default: `data`'s labels/ beside images/."""
    from dinocache.cache.writer import CacheWriter
    from dinocache.datatools.oracle import oracle_map

    from dinocache import cache
    from dinocache.core.data import list_split_images

    w = CacheWriter(cache_path)
    spec, keys = w.spec, w.stored_keys()
    if label_of is None:
        root, _ = list_split_images(data, "train")
        labels = [Path(root) / "labels" / Path(k).with_suffix(".txt").relative_to("images") for k in keys]
    else:
        labels = [label_of(k) for k in keys]
    maps = np.stack([oracle_map(f, spec.imgsz, spec.k, n_cls) for f in labels])  # (N, K, g, g)
    fc = cache.open(cache_path)
    mean, std = np.asarray(fc.channel_mean, np.float32), np.asarray(fc.channel_std, np.float32)
    mu, sd = maps.mean((0, 2, 3)), maps.std((0, 2, 3))
    z = (maps - mu[None, :, None, None]) / np.maximum(sd, 1e-6)[None, :, None, None]
    maps = mean[None, :, None, None] + std[None, :, None, None] * z  # (N, K, g, g) in the stored units
    for s in range(spec.n_shards):
        r = spec.shard_rows(s)
        done, sha = w.shard_state(s)
        w.write_shard(s, maps[r.start : r.stop].astype(np.float16), sha, done)
    return mu, sd
