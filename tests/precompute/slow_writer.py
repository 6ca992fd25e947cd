"""`python slow_writer.py DELAY key=value ...`: `dinocache precompute` with a sleep of DELAY seconds after every
whole-shard write, so the kill/concurrency tests (precompute resume, launchers, S3) can stop a writer between
shards. Run by path in a subprocess, never imported."""

import sys
import time

import torch

torch.set_num_threads(1)

from dinocache.cache.store import CacheWriter  # noqa: E402

from dinocache.cli import main  # noqa: E402

_write = CacheWriter.write_shard


def _slow(self, *a, **k):
    _write(self, *a, **k)
    time.sleep(float(sys.argv[1]))


CacheWriter.write_shard = _slow
sys.exit(main(["precompute", *sys.argv[2:]]))
