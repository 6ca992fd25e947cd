"""Trust faults: a cache whose maps belong to other images (edited, re-augmented, another dataset with the
same file names, resized) is refused by default before the first step, naming the image and the repair
command; an image whose bytes are unchanged (a copy without `-p`, a `touch`) still trains."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.faults.conftest import no_run_folder
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
    # the repair command names this dataset, not the path of the machine the (copied) cache was built on
    must = [image, hint] + ([f"--data {data}"] if hint == "cache repair" else [])
    argv = t_cfg(tmp_path, data, store, tiny_teacher_dir)
    r = faults.expect_clear("train", name, main, argv, must, intact=no_run_folder(tmp_path))
    assert r.rc == 2
    assert not list((tmp_path / "artifacts").rglob("train")), "a refused run left a run folder"


def test_touched_images_are_hashed_and_accepted(work, tmp_path, tiny_teacher_dir, capsys) -> None:
    """Every image gets a new mtime with the same bytes: the preflight hashes them and accepts the cache."""
    from dinocache.train.config import TrainConfig
    from dinocache.train.preflight import preflight

    from dinocache.core.config import load

    data, store = work
    for p in (data.parent / "images" / "train").iterdir():
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 5_000_000_000))
    cfg = load(TrainConfig, t_cfg(tmp_path, data, store, tiny_teacher_dir)[1], "train")
    assert preflight(cfg).cache_path == str(store)


def test_cache_without_record_warns(work, tmp_path, tiny_teacher_dir) -> None:
    """A cache made before the record existed: trains as before (with a warning saying how to add it)."""
    from dinocache.train.config import TrainConfig
    from dinocache.train.preflight import preflight

    from dinocache.core.config import load

    data, store = work
    for p in store.glob("images.stat*.json"):
        p.unlink()
    reaugmented(data)  # not detectable without the record: verify_images=true is the full check
    cfg = load(TrainConfig, t_cfg(tmp_path, data, store, tiny_teacher_dir)[1], "train")
    assert preflight(cfg).cache_path == str(store)


# -- one writer per run folder and per cache --------------------------------------------------------------------
def test_second_training_in_a_run_folder_refused(work, tmp_path, tiny_teacher_dir, faults) -> None:
    """A run named x is training (its lock held): a second `train name=x` is refused and writes nothing."""
    from dinocache.train.cli import main

    from dinocache.core.locks import hold, release

    data, store = work
    run = tmp_path / "artifacts" / "yolo26n-obb" / "runs" / "x"
    lock = hold(run / ".lock", "run x", "")
    try:
        r = faults.expect_clear(
            "train",
            "second training in the same run folder",
            main,
            t_cfg(tmp_path, data, store, tiny_teacher_dir),
            [str(run / "train"), "in use by another process"],
            intact=lambda: sorted(p.name for p in run.iterdir()) == [".lock"],
        )
        assert r.rc == 2
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        release(lock)


def test_unnamed_runs_started_in_one_second_get_two_folders(tmp_path, monkeypatch) -> None:
    from dinocache.train import preflight as R
    from dinocache.train.config import TrainConfig

    monkeypatch.setattr(R.time, "strftime", lambda fmt, *a: "20260101-120000")
    cfg = TrainConfig(artifacts_root=str(tmp_path), name="")
    (a_cfg, a), (b_cfg, b) = R.claim_run(cfg), R.claim_run(cfg)
    try:
        assert a != b and a_cfg.name == "20260101-120000" and b_cfg.name == "20260101-120000-2"
    finally:
        R.release_run(a)
        R.release_run(b)
    c_cfg, c = R.claim_run(cfg)  # both released, nothing written: the first name is free again
    R.release_run(c)
    assert c == a


def test_second_precompute_writer_refused(
    demo_data, tiny_teacher_dir, tmp_path, precompute_argv, faults
) -> None:
    from dinocache.precompute.run import main

    from dinocache.core.locks import hold, release

    store = tmp_path / "c.zarr"
    lock = hold(tmp_path / ".c.zarr.writer0of1.lock", "writer", "")
    try:
        faults.expect_clear(
            "precompute",
            "second writer on one cache",
            main,
            precompute_argv(store),
            [str(store), "in use by another process"],
            intact=lambda: not store.exists(),
        )
    finally:
        release(lock)
    assert not store.exists()


def test_interrupted_overwrite_advises_a_rerun_without_it(monkeypatch, capsys) -> None:
    from dinocache.precompute import run as P

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(P.Precompute, "run", interrupted)
    assert P.main(["--overwrite", "cache=/tmp/x.zarr"]) == 130
    assert "without --overwrite" in capsys.readouterr().err
    assert P.main(["cache=/tmp/x.zarr"]) == 130
    assert "rerun the same command" in capsys.readouterr().err


# -- no code from data files ---------------------------------------------------------------------------------------
class RunsCode:
    """Pickles as a call of os.makedirs(marker): what a hostile checkpoint would do with a worse function."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def hostile_pt(path: Path, marker: Path, **extra) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": RunsCode(marker), "train_args": {"imgsz": 128}, **extra}, path)
    return path


def test_grade_refuses_a_code_carrying_checkpoint(work, tmp_path, faults) -> None:
    from dinocache.grade.cli import main

    data, _ = work
    marker = tmp_path / "ran"
    pt = hostile_pt(tmp_path / "evil.pt", marker)
    faults.expect_clear(
        "grade",
        "checkpoint that runs code",
        main,
        ["--weights", str(pt), "--data", str(data)],
        ["evil.pt", "refused"],
    )
    assert not marker.exists(), "the checkpoint's code ran"


def test_train_refuses_a_code_carrying_student(work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.train.cli import main

    data, store = work
    marker = tmp_path / "ran"
    pt = hostile_pt(tmp_path / "evil.pt", marker)
    argv = [*t_cfg(tmp_path, data, store, tiny_teacher_dir), f"model={pt}"]
    faults.expect_clear("train", "model= a checkpoint that runs code", main, argv, ["evil.pt", "refused"])
    assert not marker.exists(), "the checkpoint's code ran"


def test_finetune_resume_refuses_a_code_carrying_state(work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.finetune.train import main

    data, _ = work
    marker = tmp_path / "ran"
    hostile_pt(tmp_path / "exp" / "r" / "teachers" / "dinov3_lora" / "last" / "trainer_state.pt", marker)
    argv = [f"data={data}", f"dino_root={tiny_teacher_dir}", f"project={tmp_path / 'exp'}", "name=r"]
    argv += ["imgsz=128", "device=cpu", "epochs=2", "resume=true"]
    faults.expect_clear(
        "finetune-teacher", "resume state that runs code", main, argv, ["trainer_state.pt", "refused"]
    )
    assert not marker.exists(), "the state file's code ran"


def test_grade_resume_pt_points_to_best(work, tmp_path, faults) -> None:
    import torch
    from dinocache.grade.cli import main

    data, _ = work
    pt = tmp_path / "weights" / "resume.pt"
    pt.parent.mkdir()
    torch.save({"epoch": 1, "optimizer": {}}, pt)
    faults.expect_clear(
        "grade", "--weights resume.pt", main, ["--weights", str(pt), "--data", str(data)], ["best.pt"]
    )


# -- label rows Ultralytics would drop: refused before the first step ---------------------------------------------
LABEL_ROWS = {
    "class id out of range": "9 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5",
    "negative class id": "-1 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5",
    "fractional class id": "0.5 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5",
    "inf coordinate": "0 inf 0.1 0.5 0.1 0.5 0.5 0.1 0.5",
    "nan coordinate": "0 0.1 nan 0.5 0.1 0.5 0.5 0.1 0.5",
}


@pytest.mark.parametrize("name", list(LABEL_ROWS))
def test_dropped_label_rows_refused_before_training(name, work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.train.cli import main

    from tests.faults.test_fault_bad_inputs import set_line

    data, store = work
    set_line(data, 1, LABEL_ROWS[name])
    r = faults.expect_clear(
        "train",
        f"label row: {name}",
        main,
        t_cfg(tmp_path, data, store, tiny_teacher_dir),
        ["labels/train/000001.txt:1", "drop"],
        intact=no_run_folder(tmp_path),
    )
    assert r.rc == 2
    assert not list((tmp_path / "artifacts").rglob("train")), "a refused run left a run folder"


# -- Ctrl-C and a full disk during training -----------------------------------------------------------------------
def _epochs(run: Path) -> list[int]:
    import csv

    return [int(float(r["epoch"])) for r in csv.DictReader(open(run / "results.csv"), skipinitialspace=True)]


def test_ctrl_c_in_epoch_2_exits_130_with_the_resume_command(
    work, tmp_path, tiny_teacher_dir, tiny_train, monkeypatch, faults
) -> None:
    from dinocache.train.cli import main
    from dinocache.train.model import DistillOBBModel

    from tests.faults.test_fault_train import RUN, write_cfg

    data, store = work
    calls = {"n": 0}
    loss = DistillOBBModel.loss

    def interrupted(self, batch, preds=None):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:  # 4 batches per epoch: inside epoch 2
                raise KeyboardInterrupt
        return loss(self, batch, preds)

    monkeypatch.setattr(DistillOBBModel, "loss", interrupted)
    cfg = write_cfg(tiny_train, tmp_path, data, store, tiny_teacher_dir)
    r = faults.expect_clear(
        "train", "Ctrl-C in epoch 2", main, ["--config", str(cfg)], ["interrupted", "resume=true name=x"]
    )
    assert r.rc == 130 and "Traceback" not in r.err
    monkeypatch.undo()
    # an option the resume would not apply is refused, not silently dropped
    faults.expect_clear(
        "train",
        "resume=true epochs=6 (the run has 3)",
        main,
        ["--config", str(cfg), "resume=true", "name=x", "epochs=6"],
        ["epochs=6", "the run has 3"],
    )
    assert main(["--config", str(cfg), "resume=true", "name=x"]) == 0
    assert _epochs(tmp_path.joinpath(*RUN)) == [1, 2, 3]


def test_full_disk_at_a_checkpoint_keeps_the_last_one(
    work, tmp_path, tiny_teacher_dir, tiny_train, monkeypatch, faults
) -> None:
    """ENOSPC while writing epoch 2's resume.pt: a clear error, no .tmp left, epoch 1's checkpoint kept, and
    after the resume results.csv holds each epoch once (epoch 2's row, written before the failed save, goes)."""
    import torch
    from dinocache.train.cli import main

    from tests.faults.test_fault_train import RUN, write_cfg

    data, store = work
    save = torch.save
    seen = {"n": 0}

    def full_disk(obj, f, *a, **k):
        if isinstance(f, Path) and f.name.endswith(".tmp"):
            seen["n"] += 1
            if seen["n"] == 2:
                f.write_bytes(b"\0" * 100)  # torch got this far before the disk filled
                raise OSError(28, "No space left on device")
        return save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = write_cfg(tiny_train, tmp_path, data, store, tiny_teacher_dir)
    run = tmp_path.joinpath(*RUN)
    r = faults.expect_clear(
        "train",
        "disk full at the epoch 2 checkpoint",
        main,
        ["--config", str(cfg)],
        ["resume.pt", "disk", "epoch 1"],
        intact=lambda: (
            not list(run.rglob("*.tmp"))
            and torch.load(run / "weights" / "resume.pt", weights_only=True)["epoch"] == 0
        ),
    )
    assert r.rc == 2
    assert not list(run.rglob("*.tmp"))
    assert torch.load(run / "weights" / "resume.pt", weights_only=True)["epoch"] == 0
    monkeypatch.undo()
    assert main(["--config", str(cfg), "resume=true", "name=x"]) == 0
    assert _epochs(run) == [1, 2, 3]


def test_empty_image_named_before_training(work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.train.cli import main

    data, store = work
    _img(data, 5).write_bytes(b"")
    r = faults.expect_clear(
        "train",
        "0-byte image",
        main,
        t_cfg(tmp_path, data, store, tiny_teacher_dir),
        ["000005.png", "0 bytes"],
    )
    assert r.rc == 2 and "pi_heif" not in r.err


def test_precompute_count_mismatch_names_the_images(work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.precompute.run import main

    from tests.faults.conftest import precompute_args

    data, store = work
    _img(data, 7).unlink()
    (data.parent / "labels" / "train" / "000007.txt").unlink()
    (tmp_path / "empty.json").write_text("{}")
    argv = ["--config", str(tmp_path / "empty.json"), *precompute_args(data, tiny_teacher_dir, store)]
    faults.expect_clear(
        "precompute",
        "an image removed since the cache was made",
        main,
        argv,
        ["images/train/000007.png", "no longer"],
    )


def test_per_file_symlinks_outside_the_root_are_accepted(
    work, tmp_path, tiny_teacher_dir, precompute_argv
) -> None:
    """git-annex / DVC layout: an image is a link into an object store outside the dataset; Ultralytics trains
    it, so precompute caches it under the path as listed and `cache verify` finds it."""
    from dinocache.cache.cli import main as cache_main
    from dinocache.precompute.run import main as precompute

    from dinocache.core.data import image_key, image_keys, list_split_images

    data, _ = work
    objects = tmp_path / "annex" / "objects"
    objects.mkdir(parents=True)
    for i in (0, 3):
        src = _img(data, i)
        target = objects / f"SHA256E-{i}.png"
        src.rename(target)
        src.symlink_to(target)
    root, files = list_split_images(data, "train")
    keys = image_keys(files, root)
    assert keys == [image_key(f, root) for f in files] and "images/train/000000.png" in keys
    store = tmp_path / "linked.zarr"
    assert precompute([*precompute_argv(store), f"data={data}"]) == 0
    assert cache_main(["verify", str(store), "--data", str(data)]) == 0


@pytest.mark.slow
def test_linked_image_folders_are_accepted(work, tmp_path, tiny_teacher_dir, precompute_argv) -> None:
    """The split folders are links to a store outside the dataset (a mounted disk, a DVC/annex checkout):
    Ultralytics lists the files under the links' targets and trains them. The keys are the paths the dataset
    shows (images/train/...), so the cache made before the move still trains, and precompute and
    `cache verify` agree on them."""
    from dinocache.cache.cli import main as cache_main
    from dinocache.precompute.run import main as precompute
    from dinocache.train.cli import main as train

    from dinocache import cache
    from dinocache.core.data import image_keys, list_split_images

    data, store = work
    store_dir = tmp_path / "store"
    for kind in ("images", "labels"):
        (store_dir / kind).mkdir(parents=True)
        src = data.parent / kind / "train"
        src.rename(store_dir / kind / "train")  # rename keeps size and mtime: the cache's record still holds
        src.symlink_to(store_dir / kind / "train", target_is_directory=True)
    root, files = list_split_images(data, "train")
    keys = image_keys(files, root)
    assert keys == sorted(cache.open(str(store)).keys)
    assert keys[0] == "images/train/000000.png"
    assert train(t_cfg(tmp_path, data, store, tiny_teacher_dir)) == 0
    linked = tmp_path / "linked.zarr"
    assert precompute([*precompute_argv(linked), f"data={data}"]) == 0
    assert sorted(cache.open(str(linked)).keys) == keys
    assert cache_main(["verify", str(linked), "--data", str(data)]) == 0


def test_online_refuses_an_imgsz_the_teacher_cannot_split(work, tmp_path, faults, monkeypatch) -> None:
    """A patch-14 DINOv3 at imgsz 128: precompute refuses it, and so does online distillation."""
    from dinocache.teacher import tiny
    from dinocache.train.cli import main

    data, store = work
    monkeypatch.setitem(tiny.COMMON, "patch_size", 14)
    teacher = tiny.make_tiny_teacher(tmp_path / "dinov3p14")
    argv = [*t_cfg(tmp_path, data, store, teacher), "teacher_source=online", "cache="]
    r = faults.expect_clear("train", "online: patch-14 teacher at imgsz 128", main, argv, ["imgsz", "14"])
    assert r.rc == 2


def test_verify_with_an_unreachable_endpoint_is_named(work, monkeypatch, faults) -> None:
    import socket

    from dinocache.cache.cli import main

    data, _ = work
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    for k, v in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    }.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        faults.expect_clear(
            "cache verify",
            "unreachable S3 endpoint",
            main,
            ["verify", "s3://nowhere/c.zarr", "--data", str(data)],
            ["s3://nowhere/c.zarr", "cannot reach"],
        )
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_hostile_label_cache_refused_and_a_real_one_accepted(
    work, tmp_path, tiny_teacher_dir, faults
) -> None:
    """labels/train.cache is unpickled by Ultralytics' loader: one that would run code is refused by name
    before training; the cache Ultralytics itself writes passes the same check."""
    import numpy as np
    from dinocache.train.cli import main
    from dinocache.train.label_rows import check_label_cache

    data, store = work
    real = tmp_path / "real.npy"  # Ultralytics' layout: np.save of a dict of lists, strings and arrays
    np.save(str(real), {"labels": [{"cls": np.zeros((1, 1), np.float32)}], "hash": "h", "version": "1.0.3"})
    check_label_cache(real)
    marker = tmp_path / "ran"
    cache = data.parent / "labels" / "train.cache"
    with open(cache, "wb") as f:
        np.save(f, np.array(RunsCode(marker), dtype=object), allow_pickle=True)
    r = faults.expect_clear(
        "train",
        "label cache that runs code",
        main,
        t_cfg(tmp_path, data, store, tiny_teacher_dir),
        ["train.cache", "delete it"],
    )
    assert r.rc == 2 and not marker.exists()


def test_multi_teacher_stale_maps_refused_for_every_teacher(
    demo_data, tmp_path, tiny_teacher_dir, faults
) -> None:
    """A `teachers=[...]` run checks every teacher's maps against the images: the first teacher recomputed after
    an edit (fresh), the second left as it was (stale) is refused naming the second teacher and the image."""
    import shutil

    from dinocache.precompute.run import main as precompute
    from dinocache.train.cli import main

    from tests.faults.conftest import precompute_args

    shutil.copytree(demo_data.parent, tmp_path / "ds")
    data, store = tmp_path / "ds" / "data.yaml", tmp_path / "multi.zarr"
    (tmp_path / "empty.json").write_text("{}")

    def cache_teacher(name: str) -> int:
        argv = precompute_args(data, tiny_teacher_dir, store, f"teacher_name={name}")
        return precompute(["--config", str(tmp_path / "empty.json"), *argv])

    assert cache_teacher("first") == 0 and cache_teacher("second") == 0
    image, _ = reaugmented(data)
    assert cache_teacher("first") == 0  # recomputes the edited image's row of this teacher only
    terms = [{"teacher": "first", "channels": 8}, {"teacher": "second", "channels": 8}]
    r = faults.expect_clear(
        "train",
        "multi-teacher: the second teacher's maps stale",
        main,
        t_cfg(tmp_path, data, store, tiny_teacher_dir, teachers=terms),
        ["teachers/second", image, "cache repair"],
        intact=no_run_folder(tmp_path),
    )
    assert r.rc == 2
    assert not list((tmp_path / "artifacts").rglob("train")), "a refused run left a run folder"


# -- credentials are never printed ----------------------------------------------------------------------------------
SECRET = "hunter2-xyz-do-not-print"


def test_precompute_storage_options_typo_never_echoes_the_secret(
    work, tmp_path, tiny_teacher_dir, faults
) -> None:
    from dinocache.precompute.run import main

    from tests.faults.conftest import precompute_args

    data, _ = work
    store = tmp_path / "new.zarr"
    (tmp_path / "empty.json").write_text("{}")
    typo = f'storage_options={{"key": "AKIDEXAMPLE", "secret": "{SECRET}", oops'
    faults.expect_clear(
        "precompute",
        "--storage-options JSON typo holding a secret",
        main,
        ["--config", str(tmp_path / "empty.json"), *precompute_args(data, tiny_teacher_dir, store), typo],
        ["storage_options"],
        secret=SECRET,
        intact=lambda: not store.exists(),
    )


def test_verify_storage_options_typo_never_echoes_the_secret(work, faults) -> None:
    from dinocache.cache.cli import main

    data, store = work
    faults.expect_clear(
        "cache verify",
        "--storage-options JSON typo holding a secret",
        main,
        ["verify", str(store), "--data", str(data), "--storage-options", f'{{"secret": "{SECRET}", oops'],
        ["--storage-options"],
        secret=SECRET,
    )


def test_unreachable_endpoint_with_credentials_never_echoes_them(work, tmp_path, monkeypatch, faults) -> None:
    """Credentials given in storage_options for an S3 cache whose endpoint does not answer: the error names
    the cache and the endpoint problem, never the key or the secret."""
    import socket

    import s3fs
    from dinocache.cache.cli import main

    data, _ = work
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    for k, v in {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    }.items():
        monkeypatch.setenv(k, v)
    so = {
        "key": "AKIDEXAMPLE",
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
    }
    import json

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        faults.expect_clear(
            "cache verify",
            "unreachable S3 endpoint, credentials in --storage-options",
            main,
            ["verify", "s3://nowhere/c.zarr", "--data", str(data), "--storage-options", json.dumps(so)],
            ["s3://nowhere/c.zarr"],
            secret=SECRET,
        )
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


# -- a 0-byte image is named as such by every command that reads images ---------------------------------------------
def test_empty_image_named_by_precompute_and_validate(work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.datatools.cli import main as datatools
    from dinocache.precompute.run import main as precompute

    from tests.faults.conftest import precompute_args

    data, _ = work
    _img(data, 5).write_bytes(b"")
    store = tmp_path / "new.zarr"
    (tmp_path / "empty.json").write_text("{}")
    argv = ["--config", str(tmp_path / "empty.json"), *precompute_args(data, tiny_teacher_dir, store)]
    r = faults.expect_clear("precompute", "0-byte image", precompute, argv, ["000005.png"])
    assert "pi_heif" not in r.err
    r = faults.expect_clear(
        "dataset validate", "0-byte image", datatools, ["validate", str(data)], ["000005.png"]
    )
    assert "pi_heif" not in r.err
