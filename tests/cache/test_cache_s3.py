"""Caches in object storage: `s3://` through fsspec/s3fs against a local S3 server (moto's server mode on
127.0.0.1, started and stopped here). Precompute writes, `cache verify` checks, `train` reads, a killed
precompute resumes to the same bytes; missing credentials and a missing bucket are refused by URL with
nothing written."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dinocache.cache import format as fmt
from dinocache.precompute.run import main as precompute_main

from dinocache import cache

IMGSZ = 128
REPO = Path(__file__).resolve().parents[2]
SLOW_WRITER = REPO / "tests" / "precompute" / "slow_writer.py"  # a precompute that pauses after each shard
BUCKET = "dino"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clear_s3fs_instances() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches one client per set of options


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A moto S3 server on 127.0.0.1 with bucket `dino`; the AWS_* variables of this module point at it."""
    # moto's server is in the `test` extra (the README's test command installs it), not in a user's install
    ThreadedMotoServer = pytest.importorskip(
        "moto.server", reason="moto's S3 server: pip install -c requirements/lock.txt -e '.[dev,test]'"
    ).ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata endpoint
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path_factory.mktemp("aws") / "none"),
        "AWS_CONFIG_FILE": str(tmp_path_factory.mktemp("aws") / "none"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        clear_s3fs_instances()
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        yield {"fs": fs, "env": env, "endpoint": env["AWS_ENDPOINT_URL"]}
    clear_s3fs_instances()
    server.stop()


def assert_same_arrays(url: str, local: Path) -> None:
    a, b = cache.open(url), cache.open(str(local))
    assert a.attrs | {"created_at": ""} == b.attrs | {"created_at": ""}
    assert a.done.all()
    for name in (
        fmt.FEATURES,
        fmt.DONE,
        fmt.SHA256,
        fmt.KEYS,
        fmt.CHANNEL_MEAN,
        fmt.CHANNEL_STD,
        fmt.PCA_COMPONENTS,
    ):
        x, y = np.asarray(a._array(name)[...]), np.asarray(b._array(name)[...])
        assert x.tobytes() == y.tobytes(), f"array {name} differs"


def objects(fs, prefix: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(fs.find(prefix))


# -- precompute -> verify -> train, all on S3 -----------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_cache(s3, demo_data, precompute_argv, tiny_teacher_dir, reference_cache) -> str:
    url = f"s3://{BUCKET}/features.zarr"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert precompute_main(precompute_argv(url)) == 0
    finally:
        torch.set_num_threads(n)
    return url


def test_precompute_writes_s3_and_verify_checks(s3, s3_cache, reference_cache, demo_data, capsys) -> None:
    from dinocache.cache.cli import main as cache_main

    names = {p.rsplit("/", 1)[-1] for p in objects(s3["fs"], f"{BUCKET}/features.zarr")}
    assert {"zarr.json", "precompute.yaml"} <= names
    assert_same_arrays(s3_cache, reference_cache)  # the same bytes as a local precompute
    assert cache_main(["verify", s3_cache, "--data", str(demo_data)]) == 0
    assert "verify: OK s3://dino/features.zarr" in capsys.readouterr().out
    # verify finds damage on S3 too: a feature shard object overwritten with garbage
    fs = s3["fs"]
    bad = f"{BUCKET}/bad.zarr"
    fs.copy(f"{BUCKET}/features.zarr", bad, recursive=True)
    shard = sorted(p for p in objects(fs, f"{bad}/{fmt.FEATURES}") if "/c." in p)[0]
    raw = bytearray(fs.cat(shard))
    raw[10] ^= 0xFF
    fs.pipe(shard, bytes(raw))
    assert cache_main(["verify", f"s3://{bad}", "--data", str(demo_data)]) == 1


def test_s3_reads_through_tensorstore_and_zarr_alike(s3, s3_cache, reference_cache) -> None:
    fc = cache.open(s3_cache)
    assert fc._ts_features() is not None  # tensorstore's s3 kvstore, pointed at the same endpoint
    zr = cache.open(s3_cache, read_path="zarr")
    assert zr._ts_features() is None
    rows = [5, 0, 11, 5, 15]
    a, b = fc.read(rows, channels=4), zr.read(rows, channels=4)
    assert a.dtype == np.float16 and a.shape == (5, 4, 8, 8)
    assert a.tobytes() == b.tobytes() == cache.open(str(reference_cache)).read(rows, channels=4).tobytes()
    # storage options tensorstore cannot take stay on zarr-python
    assert cache.open(s3_cache, {"key": "testing", "secret": "testing"})._ts_features() is None


def test_train_reads_s3_cache(s3, s3_cache, tmp_path, demo_data, tiny_teacher_dir, tiny_train) -> None:
    from dinocache.train.config import TrainConfig
    from dinocache.train.run import train

    from dinocache.core.config import build

    cfg = build(
        TrainConfig,
        tiny_train(
            tmp_path,
            data=str(demo_data),
            dino_root=str(tiny_teacher_dir),
            cache=s3_cache,
            imgsz=IMGSZ,
            epochs=2,
            dino_distill_warmup_epochs=0,
            stage_a_ratio=0.5,
            name="s3",
            eval_enabled=False,
            dino_viz_enabled=False,
            wandb_enabled=False,
        ),
    )
    trainer = train(cfg)
    rows = (trainer.save_dir / "results.csv").read_text().splitlines()
    head = [c.strip() for c in rows[0].split(",")]
    vals = [dict(zip(head, (float(v) for v in r.split(",")))) for r in rows[1:]]
    assert len(vals) == 2 and all(v["train/distill"] > 0 for v in vals)


def test_s3_precompute_resumes_after_sigkill(
    s3, demo_data, precompute_argv, tiny_teacher_dir, reference_cache, capsys
) -> None:
    url = f"s3://{BUCKET}/killed.zarr"
    argv = precompute_argv(url)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    p = subprocess.Popen(
        [sys.executable, str(SLOW_WRITER), "0.5", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    fs = s3["fs"]
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < 300:
        if len([x for x in objects(fs, f"{BUCKET}/killed.zarr/{fmt.DONE}") if "/c." in x]) >= 2:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    out = p.communicate()[0]
    assert p.returncode == -signal.SIGKILL, out
    partial = cache.open(url)
    assert 0 < partial.done.sum() < partial.n, out
    clear_s3fs_instances()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert precompute_main(argv) == 0
    finally:
        torch.set_num_threads(n)
    assert "already done, skipped" in capsys.readouterr().err
    assert_same_arrays(url, reference_cache)


# -- refusals ---------------------------------------------------------------------------------------------------
def test_missing_bucket_refused_nothing_written(
    s3, demo_data, precompute_argv, tiny_teacher_dir, capsys
) -> None:
    url = "s3://no-such-bucket/features.zarr"
    assert precompute_main(precompute_argv(url)) == 2
    err = capsys.readouterr().err
    assert f"{url}: bucket 'no-such-bucket' does not exist" in err
    assert "fitted" not in err  # refused before the PCA fit
    assert not s3["fs"].exists("no-such-bucket")  # never created on our behalf
    from dinocache.train.context import TrainError
    from dinocache.train.preflight import _open_cache

    with pytest.raises(TrainError, match="s3://no-such-bucket/features.zarr"):
        _open_cache(url)


def test_missing_credentials_refused_nothing_written(
    s3, s3_cache, demo_data, precompute_argv, tiny_teacher_dir, monkeypatch, capsys
) -> None:
    fs = s3["fs"]
    before = objects(fs, BUCKET)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    clear_s3fs_instances()
    try:
        url = f"s3://{BUCKET}/new.zarr"
        assert precompute_main(precompute_argv(url)) == 2
        err = capsys.readouterr().err
        assert f"{url}: cannot reach the object store (NoCredentialsError" in err
        assert "AWS_ACCESS_KEY_ID" in err
        # reading is refused the same way (train and cache verify open the cache like this)
        with pytest.raises(cache.CacheError, match=r"s3://dino/features.zarr: cannot reach the object store"):
            cache.open(s3_cache)
    finally:
        clear_s3fs_instances()
    assert objects(fs, BUCKET) == before  # nothing was written


# -- credentials: used for the run, never stored or printed ----------------------------------------------------
SECRET_ID = "AKIADINOCACHETEST0001"
SECRET = "sEcReT-dinocache-never-store-me-42"


def _leaks(text: str) -> list[str]:
    return [s for s in (SECRET_ID, SECRET) if s in text]


def test_storage_option_credentials_never_stored_or_printed(
    s3, demo_data, precompute_argv, tmp_path, capsys, monkeypatch
) -> None:
    """Explicit key/secret in storage_options (moto accepts any): the run works with them, and no object of
    the cache, no file of the run folder and nothing printed holds them; a JSON typo doesn't echo them."""
    from dinocache.cache.cli import main as cache_main
    from dinocache.precompute.run import repair_main

    monkeypatch.chdir(tmp_path)
    url = f"s3://{BUCKET}/secret.zarr"
    so = json.dumps({"key": SECRET_ID, "secret": SECRET, "client_kwargs": {"aws_session_token": SECRET}})
    clear_s3fs_instances()
    assert precompute_main([*precompute_argv(url), f"storage_options={so}"]) == 0
    assert cache_main(["verify", url, "--data", str(demo_data), "--storage-options", so]) == 0
    assert repair_main([url, "--data", str(demo_data), f"storage_options={so}"]) == 0
    printed = capsys.readouterr()
    assert not _leaks(printed.out + printed.err)
    fs = s3["fs"]
    stored = objects(fs, f"{BUCKET}/secret.zarr")
    assert any(p.endswith("precompute.yaml") for p in stored)
    for p in stored:
        assert not _leaks(fs.cat(p).decode("latin-1")), f"{p} holds the credential"
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert not _leaks(p.read_bytes().decode("latin-1")), f"{p} holds the credential"

    # a typo in the JSON: refused without echoing the text
    typo = so[:-1]
    assert precompute_main([*precompute_argv(f"s3://{BUCKET}/typo.zarr"), f"storage_options={typo}"]) == 2
    assert cache_main(["info", url, "--storage-options", typo]) == 2
    assert repair_main([url, "--data", str(demo_data), f"storage_options={typo}"]) == 2
    printed = capsys.readouterr()
    assert "storage_options" in printed.err and "storage-options" in printed.err
    assert not _leaks(printed.out + printed.err)
