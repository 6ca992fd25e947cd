"""What every stage of one precompute run shares: its options, the images and their keys, the decode
pool, which writer it is (shard i of N) and where it logs."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinocache.precompute.config import PrecomputeConfig


@dataclass
class Job:
    cfg: PrecomputeConfig
    # the split's images in row order and their keys (paths relative to the dataset root)
    files: list[Path]
    keys: list[str]
    # this writer is shard `rank` of `world`: it owns the zarr shards k with k % world == rank
    rank: int
    world: int
    pool: ThreadPoolExecutor | None = None

    def log(self, msg: str) -> None:
        tag = f"[shard {self.rank}/{self.world}] " if self.world > 1 else ""
        print(f"precompute: {tag}{msg}", file=sys.stderr, flush=True)

    def batches(self, spec: Any) -> list[tuple[int, int, range]]:
        """Every (shard, b0, rows) teacher batch of the write pass: fixed boundaries inside each shard."""
        return [(s, b0, rr) for s in range(spec.n_shards) for b0, rr in self.shard_batches(spec, s)]

    def shard_batches(self, spec: Any, s: int) -> list[tuple[int, range]]:
        """(b0, rows) of each teacher batch of shard `s`: the same boundaries on every run, so a rerun
        reproduces the same bits."""
        r = spec.shard_rows(s)
        b = self.cfg.batch
        return [(b0, range(r.start + b0, min(r.stop, r.start + b0 + b))) for b0 in range(0, len(r), b)]

    def owned(self, spec: Any) -> range:
        """The zarr shards this writer owns."""
        return range(self.rank, spec.n_shards, self.world)
