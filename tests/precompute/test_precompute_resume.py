"""Resume after a crash and two concurrent `--shard i/2` writers, compared bit for bit with an
uninterrupted single-writer run: in-process versions (a writer that dies after two shards; two writer
threads) and the real thing (SIGKILL of a subprocess, two writer processes). All of them run by default
(none is marked slow); the subprocess ones take longest, each child spending most of its time importing
torch/transformers. There a test-only wrapper slows each shard write so the kill lands mid-run and the
writers overlap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from dinocache.cache import format as fmt
from dinocache.precompute.run import main as precompute_main

from dinocache import cache

IMGSZ = 128
REPO = Path(__file__).resolve().parents[2]
SLOW_WRITER = REPO / "tests" / "precompute" / "slow_writer.py"  # a precompute that pauses after each shard


def spawn(delay: float, argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, str(SLOW_WRITER), str(delay), *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def done_chunks(store: Path) -> int:
    d = store / fmt.DONE
    return len([p for p in d.glob("c.*")]) if d.exists() else 0


def assert_same_cache(a: Path, b: Path) -> None:
    fa, fb = cache.open(str(a)), cache.open(str(b))
    assert fa.attrs | {"created_at": ""} == fb.attrs | {"created_at": ""}
    assert fa.done.all() and fb.done.all()
    for name in (
        fmt.FEATURES,
        fmt.DONE,
        fmt.SHA256,
        fmt.KEYS,
        fmt.CHANNEL_MEAN,
        fmt.CHANNEL_STD,
        fmt.PCA_MEAN,
        fmt.PCA_COMPONENTS,
    ):
        x, y = np.asarray(fa._array(name)[...]), np.asarray(fb._array(name)[...])
        assert x.tobytes() == y.tobytes(), f"array {name} differs"


class Crash(Exception):
    pass


def test_resume_after_crash(
    demo_data,
    precompute_argv,
    tiny_teacher_dir,
    tmp_path,
    reference_cache,
    one_torch_thread,
    monkeypatch,
    capsys,
) -> None:
    from dinocache.cache.store import CacheWriter

    store = tmp_path / "c.zarr"
    write = CacheWriter.write_shard
    calls = []

    def dies_on_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise Crash("power cut")
        return write(self, *a, **k)

    monkeypatch.setattr(CacheWriter, "write_shard", dies_on_third)
    assert precompute_main(precompute_argv(store)) == 2
    assert "power cut" in capsys.readouterr().err
    assert cache.open(str(store)).done.sum() == 4  # 2 shards of 2
    monkeypatch.setattr(CacheWriter, "write_shard", write)
    assert precompute_main(precompute_argv(store)) == 0
    assert "2 of 8 owned shard(s) already done, skipped" in capsys.readouterr().err
    assert_same_cache(store, reference_cache)


def test_two_writer_threads(
    demo_data, precompute_argv, tiny_teacher_dir, tmp_path, reference_cache, one_torch_thread
) -> None:
    store = tmp_path / "c.zarr"
    argv = precompute_argv(store)
    rc: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda i=i: rc.__setitem__(i, precompute_main([*argv, "--shard", f"{i}/2"])))
        for i in (1, 0)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert rc == {0: 0, 1: 0}
    assert_same_cache(store, reference_cache)


def test_resume_after_sigkill(
    demo_data: Path, precompute_argv, tiny_teacher_dir: Path, tmp_path: Path, reference_cache: Path
) -> None:
    store = tmp_path / "c.zarr"
    argv = precompute_argv(store)
    n_shards = cache.open(str(reference_cache)).spec.n_shards
    p = spawn(0.5, argv)
    t0 = time.monotonic()
    while done_chunks(store) < 2 and p.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    out = p.communicate()[0]
    assert p.returncode == -signal.SIGKILL, out
    killed_at = done_chunks(store)
    assert 2 <= killed_at < n_shards, out
    partial = cache.open(str(store))
    assert 0 < partial.done.sum() < partial.n
    # rerun the same command: resumes, skips the finished shards, ends identical to the reference_cache
    p = spawn(0.0, argv)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    assert "already done, skipped" in out
    assert_same_cache(store, reference_cache)


def test_two_concurrent_shard_writers(
    demo_data: Path, precompute_argv, tiny_teacher_dir: Path, tmp_path: Path, reference_cache: Path
) -> None:
    store = tmp_path / "c.zarr"
    argv = precompute_argv(store)
    # shard 1 starts first and must wait for shard 0 to create the store
    p1 = spawn(0.1, [*argv, "--shard", "1/2"])
    p0 = spawn(0.1, [*argv, "--shard", "0/2"])
    out1 = p1.communicate(timeout=300)[0]
    out0 = p0.communicate(timeout=300)[0]
    assert p0.returncode == 0, out0
    assert p1.returncode == 0, out1
    assert (store / "precompute.shard0of2.yaml").exists() and (store / "precompute.shard1of2.yaml").exists()
    assert_same_cache(store, reference_cache)
