"""Precompute under a launcher: torchrun/SLURM environment -> shard and GPU, `torchrun --nproc-per-node 2
-m dinocache precompute` on the CPU byte for byte against one process, a world size that does not match
the store's writers refused, and a rank that dies while the others finish (a rerun completes the store
bit-identically)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from dinocache.precompute import launch
from dinocache.precompute.run import main as precompute_main

from dinocache import cache
from dinocache.core.config import ConfigError

IMGSZ = 128
REPO = Path(__file__).resolve().parents[2]
SLOW_WRITER = REPO / "tests" / "precompute" / "slow_writer.py"  # a precompute that pauses after each shard
SIDECARS = ("precompute.yaml", "precompute.shard", "images.stat")  # per-writer files, not the data


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a local store by relative path; the sidecars left out and the creation time blanked."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.startswith(SIDECARS):
            continue
        data = p.read_bytes()
        if rel == "zarr.json":
            meta = json.loads(data)
            for block in meta.get("attributes", {}).values():
                if isinstance(block, dict):
                    block.pop("created_at", None)
            data = json.dumps(meta, sort_keys=True).encode()
        out[rel] = data
    return out


def assert_identical(a: Path, b: Path) -> None:
    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb)
    diff = [k for k in fa if fa[k] != fb[k]]
    assert not diff, f"files differ: {diff[:5]}"


def child_env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*launch.VARS["torchrun"], *launch.VARS["SLURM"])}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **kw}


# -- environment -> shard/device -------------------------------------------------------------------------------
def test_launcher_environment() -> None:
    assert launch.from_env({}) is None
    t = launch.from_env(
        {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    )
    assert (t.rank, t.world, t.local_rank, t.source, t.shard) == (3, 8, 1, "torchrun", "3/8")
    s = launch.from_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1"})
    assert (s.shard, s.local_rank, s.source) == ("5/6", 1, "SLURM")
    with pytest.raises(ConfigError, match="RANK=4 WORLD_SIZE=2"):
        launch.from_env({"RANK": "4", "WORLD_SIZE": "2"})
    assert launch.resolve("0/1", False, "cpu", t) == ("3/8", "cpu")
    assert launch.resolve("3/8", True, "cpu", t) == ("3/8", "cpu")
    with pytest.raises(
        ConfigError, match=r"shard: 0/1 was given, but torchrun started this process as rank 3 of 8"
    ):
        launch.resolve("0/1", True, "cpu", t)
    assert launch.resolve("1/4", True, "auto", None) == ("1/4", "auto")  # no launcher: --shard as before


def test_local_rank_picks_the_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    t = launch.Launch(rank=5, world=8, local_rank=1, source="torchrun")
    assert launch.resolve("0/1", False, "auto", t) == ("5/8", "cuda:1")
    assert launch.resolve("0/1", False, "cuda:0", t) == ("5/8", "cuda:0")  # an explicit GPU stays
    with pytest.raises(ConfigError, match="needs GPU 2 but this node has 2 CUDA GPU"):
        launch.resolve("0/1", False, "auto", launch.Launch(2, 8, 2, "torchrun"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # srun --gpus-per-task=1: one visible GPU
    assert launch.resolve("0/1", False, "auto", launch.Launch(7, 8, 3, "SLURM")) == ("7/8", "cuda:0")


def test_python_api_follows_the_launcher(monkeypatch) -> None:
    from dinocache.precompute.run import Precompute, PrecomputeConfig

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    p = Precompute(PrecomputeConfig(device="cpu"))
    assert (p.rank, p.world, p.cfg.shard) == (1, 2, "1/2")
    with pytest.raises(ConfigError, match="overwrite"):  # one writer of two may not delete the store
        Precompute(PrecomputeConfig(device="cpu", overwrite=True))


def test_explicit_shard_conflicting_with_torchrun_refused(
    demo_data, precompute_argv, tiny_teacher_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    store = tmp_path / "c.zarr"
    assert precompute_main([*precompute_argv(store), "--shard", "0/1"]) == 2
    assert "torchrun started this process as rank 1 of 2" in capsys.readouterr().err
    assert not store.exists()


# -- torchrun on the CPU, byte for byte ----------------------------------------------------------------------------
def test_torchrun_two_ranks_byte_identical(
    demo_data, precompute_argv, tiny_teacher_dir, tmp_path, reference_cache
) -> None:
    store = tmp_path / "c.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "dinocache", "precompute", *precompute_argv(store)]
    r = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "[shard 0/2]" in r.stderr and "[shard 1/2]" in r.stderr
    assert (store / "precompute.shard0of2.yaml").exists() and (store / "precompute.shard1of2.yaml").exists()
    assert_identical(store, reference_cache)


# -- world size that does not match the store's writers ---------------------------------------------------------
def test_world_size_mismatch_refused(
    demo_data,
    precompute_argv,
    tiny_teacher_dir,
    tmp_path,
    reference_cache,
    one_torch_thread,
    monkeypatch,
    capsys,
):
    store = tmp_path / "c.zarr"
    argv = precompute_argv(store)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert precompute_main(argv) == 0  # rank 0 of 2 alone: creates the store, writes shards 0, 2, 4, 6
    done = cache.open(str(store)).done.sum()
    assert done == 8
    capsys.readouterr()
    for rank in (0, 2):  # a 3-process launch: rank 0 (resuming) and rank > 0 (joining) both refuse
        monkeypatch.setenv("WORLD_SIZE", "3")
        monkeypatch.setenv("RANK", str(rank))
        assert precompute_main(argv) == 2
        err = capsys.readouterr().err
        assert "written with a different number of writers: 2 (precompute.shard0of2.yaml)" in err, err
        assert "this launch has 3" in err and "reshard=true" in err
        assert cache.open(str(store)).done.sum() == done  # nothing written
    # the right world size finishes it; the result is the one-process cache
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert precompute_main(argv) == 0
    assert_identical(store, reference_cache)


def test_reshard_joins_an_old_layout(
    demo_data, precompute_argv, tiny_teacher_dir, tmp_path, reference_cache, one_torch_thread, monkeypatch
):
    store = tmp_path / "c.zarr"
    argv = precompute_argv(store)
    assert precompute_main([*argv, "--shard", "0/2"]) == 0
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank in (0, 1, 2):
        monkeypatch.setenv("RANK", str(rank))
        assert precompute_main([*argv, "reshard=true"]) == 0
    assert_identical(store, reference_cache)


# -- a rank dies, the others finish, a rerun completes ------------------------------------------------------------
def test_rank_dies_others_finish_rerun_identical(
    demo_data,
    precompute_argv,
    tiny_teacher_dir,
    tmp_path,
    reference_cache,
    one_torch_thread,
    monkeypatch,
    capsys,
):
    """In-process: two writer threads as ranks 0 and 1 of 2; rank 1 fails on its second shard."""
    from dinocache.cache.store import CacheWriter

    store = tmp_path / "c.zarr"
    argv = precompute_argv(store)
    write = CacheWriter.write_shard
    calls: list[int] = []

    def rank1_dies(self, shard, *a, **k):
        if shard % 2 == 1:
            calls.append(shard)
            if len(calls) == 2:
                raise OSError("rank 1 lost its node")
        return write(self, shard, *a, **k)

    monkeypatch.setattr(CacheWriter, "write_shard", rank1_dies)
    rc: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda i=i: rc.__setitem__(i, precompute_main([*argv, "--shard", f"{i}/2"])))
        for i in (1, 0)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert rc == {0: 0, 1: 2}
    assert "rank 1 lost its node" in capsys.readouterr().err
    fc = cache.open(str(store))
    done = fc.done.reshape(-1, 2).all(axis=1)  # per zarr shard of 2 rows
    assert done[0::2].all()  # rank 0 finished all of its shards
    assert done[1::2].tolist() == [True, False, False, False]  # rank 1 got one shard written
    monkeypatch.setattr(CacheWriter, "write_shard", write)
    assert precompute_main([*argv, "--shard", "1/2"]) == 0  # rerun of the dead rank
    assert "1 of 4 owned shard(s) already done, skipped" in capsys.readouterr().err
    assert_identical(store, reference_cache)


@pytest.mark.slow
def test_slurm_task_killed_others_finish_torchrun_rerun(
    demo_data, precompute_argv, tiny_teacher_dir, tmp_path, reference_cache
) -> None:
    """Real processes launched like `srun --ntasks 2` (SLURM_PROCID/SLURM_NTASKS): task 1 is SIGKILLed after its
    first shard; task 0 still finishes; `torchrun --nproc-per-node 2` then completes the store bit-identically."""
    store = tmp_path / "c.zarr"
    argv = precompute_argv(store)

    def task(i: int, delay: float) -> subprocess.Popen:
        env = child_env(SLURM_PROCID=str(i), SLURM_NTASKS="2", SLURM_LOCALID=str(i))
        return subprocess.Popen(
            [sys.executable, str(SLOW_WRITER), str(delay), *argv],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    p1, p0 = task(1, 1.0), task(0, 0.0)
    t0 = time.monotonic()
    while p1.poll() is None and time.monotonic() - t0 < 300:
        if store.exists() and (store / "done").exists():
            try:
                d = cache.open(str(store)).done
            except Exception:
                d = None
            if d is not None and d[2:4].all():  # task 1's first shard (zarr shard 1) is written
                break
        time.sleep(0.05)
    p1.send_signal(signal.SIGKILL)
    out1 = p1.communicate()[0]
    out0 = p0.communicate(timeout=300)[0]
    assert p1.returncode == -signal.SIGKILL, out1
    assert p0.returncode == 0, out0
    done = cache.open(str(store)).done.reshape(-1, 2).all(axis=1)
    assert done[0::2].all() and not done[1::2].all()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "dinocache", "precompute", *argv]
    r = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already done, skipped" in r.stderr
    assert_identical(store, reference_cache)
