"""Training killed at random points in Stage A and Stage B, then resumed with resume=true: the resumed run's
final weights (live model and EMA, every tensor) equal an uninterrupted run's EXACTLY (torch.equal), because
resume.pt holds the live weights, the optimizer, the EMA and every RNG stream (python, numpy, torch, the
loader's shuffle generator). CPU, workers=0, deterministic=True; not run on a GPU.

The default run crashes in-process (an exception from a batch callback: the process dies between two
batches); the slow test SIGKILLs a real `dinocache train` subprocess at random moments and resumes it in
another one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dinocache.train.config import TrainConfig

from dinocache.core.config import build

REPO = Path(__file__).resolve().parents[2]


def values(tiny_train, root: Path, data: Path, store: Path, teacher: Path, **kw) -> dict:
    v = tiny_train(
        root,
        data=str(data),
        dino_root=str(teacher),
        cache=str(store),
        epochs=2,
        dino_distill_warmup_epochs=1,
        stage_a_ratio=0.5,  # epoch 1 = Stage A (frozen backbone), epoch 2 = Stage B
        stage_a_freeze=10,
        name="run",
        eval_enabled=False,
        dino_viz_enabled=False,
        wandb_enabled=False,
        distill_geometric_aug="off",
        keep_resume=True,  # the final resume.pt holds the live weights and EMA the runs are compared by
    )
    v.update(kw)
    return v


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "weights" / "resume.pt", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        diff = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not diff, f"{part}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    assert a["updates"] == b["updates"] and a["epoch"] == b["epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_data, tiny_teacher_dir, tiny_train, fault_cache) -> dict:
    from dinocache.train.run import train

    root = tmp_path_factory.mktemp("ref")
    t = train(build(TrainConfig, values(tiny_train, root, demo_data, fault_cache, tiny_teacher_dir)))
    return final_state(t.save_dir)


class Crash(Exception):
    pass


class CrashAt:
    """on_train_batch_end: die after batch `i` of epoch `epoch` (0-based)."""

    def __init__(self, epoch: int, i: int) -> None:
        self.epoch, self.i, self.n = epoch, i, 0

    def __call__(self, trainer) -> None:
        if trainer.epoch == self.epoch:
            self.n += 1
            if self.n > self.i:
                raise Crash(f"crash in epoch {self.epoch + 1} after batch {self.i + 1}")


def test_crash_in_stage_b_resumes_exactly(
    tmp_path, demo_data, tiny_teacher_dir, tiny_train, fault_cache, reference, kills
):
    """Crash at a random batch of Stage B (epoch 2), resume from epoch 1's checkpoint (end of Stage A)."""
    from dinocache.train.run import train

    i = random.Random().randrange(0, 3)
    v = values(tiny_train, tmp_path, demo_data, fault_cache, tiny_teacher_dir)
    with pytest.raises(Crash):
        train(build(TrainConfig, v), callbacks={"on_train_batch_end": [CrashAt(1, i)]})
    t = train(build(TrainConfig, {**v, "resume": True}))
    try:
        assert_same_weights(final_state(t.save_dir), reference)
        kills("in-process crash", f"B (epoch 2, after batch {i + 1})", True, "final weights identical")
    except AssertionError as e:
        kills("in-process crash", f"B (epoch 2, after batch {i + 1})", False, str(e)[:200])
        raise


@pytest.mark.slow
def test_crash_in_stage_a_leaves_no_run_then_reruns_exactly(
    tmp_path, demo_data, tiny_teacher_dir, tiny_train, fault_cache, reference, kills
):
    """A crash inside epoch 1 (Stage A, no checkpoint yet) leaves no run folder; rerunning equals the reference."""
    from dinocache.train.run import train

    v = values(tiny_train, tmp_path, demo_data, fault_cache, tiny_teacher_dir)
    with pytest.raises(Crash):
        train(build(TrainConfig, v), callbacks={"on_train_batch_end": [CrashAt(0, 1)]})
    assert not (tmp_path / "artifacts" / "yolo26n-obb" / "runs" / "run").exists()
    t = train(build(TrainConfig, v))
    same = True
    try:
        assert_same_weights(final_state(t.save_dir), reference)
    except AssertionError:
        same = False
        raise
    finally:
        kills("in-process crash", "A (epoch 1, before the first checkpoint)", same, "rerun from scratch")


# -- SIGKILL of real processes (slow) -------------------------------------------------------------------------
def _spawn(cfg: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "dinocache", "train", "--config", str(cfg), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_sigkill_at_random_points_resumes_exactly(
    trial, tmp_path, demo_data, tiny_teacher_dir, tiny_train, fault_cache, kills
) -> None:
    """epochs=4 (Stage A = epochs 1-2, Stage B = 3-4). Each trial SIGKILLs the run at a random moment after a
    checkpoint of Stage A, resumes, SIGKILLs the resumed run again at a random moment in Stage B, resumes
    until done; the final weights equal an uninterrupted subprocess run's exactly."""
    rng = random.Random(trial)
    v = values(tiny_train, tmp_path, demo_data, fault_cache, tiny_teacher_dir, epochs=4, stage_a_ratio=0.5)
    ref_cfg = tmp_path / "ref.json"
    ref_cfg.write_text(json.dumps({"train": {**v, "name": "ref"}}))
    p = _spawn(ref_cfg)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    ref = final_state(tmp_path / "artifacts" / "yolo26n-obb" / "runs" / "ref" / "train")

    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"train": v}))
    run = tmp_path / "artifacts" / "yolo26n-obb" / "runs" / "run" / "train"
    plan = [("A", 1), ("B", 3)]  # kill once the checkpoint of this epoch exists, at a random later moment
    killed: list[str] = []
    extra: list[str] = []
    for stage, after_epoch in plan:
        p = _spawn(cfg, *extra)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 600 and p.poll() is None:
            if (run / "weights" / "resume.pt").exists() and final_state(run)["epoch"] + 1 >= after_epoch:
                break
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 3.0))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            killed.append(stage)
        p.communicate(timeout=60)
        extra = ["resume=true"]
    p = _spawn(cfg, "resume=true")
    out, _ = p.communicate(timeout=900)
    ok = p.returncode == 0 or "nothing to resume" in out
    same = False
    if ok:
        try:
            assert_same_weights(final_state(run), ref)
            same = True
        except AssertionError as e:
            out = str(e)
    for stage in killed:
        kills(
            "SIGKILL subprocess",
            f"{stage} (trial {trial})",
            same,
            "final weights identical" if same else out[-200:],
        )
    assert ok, out[-3000:]
    assert same, f"trial {trial}: resumed weights differ from the uninterrupted run: {out[-500:]}"
    assert killed, "no kill landed (the run finished first)"


# -- the default mode: warped maps, mosaic on, with and without DataLoader workers ----------------------------
def _equal_tensors(a: dict, b: dict) -> tuple[int, int]:
    n = same = 0
    for part in ("model", "ema"):
        for k in a[part]:
            n += 1
            same += int(torch.equal(a[part][k], b[part][k]))
    return same, n


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_crash_in_the_default_mode(
    workers, tmp_path, demo_data, tiny_teacher_dir, tiny_train, fault_cache, kills
):
    """distill_geometric_aug=warp (mosaic, affine and flips on, maps warped), crash in epoch 2, resume.

    workers=0: exact (every RNG stream and Mosaic's buffer are in resume.pt). workers=2: each DataLoader worker
    keeps its own Mosaic buffer and RNG across epochs (Ultralytics' loader reuses its workers), which no
    checkpoint holds, so a resumed run draws other mosaics from epoch 2 on: recorded as measured, not exact."""
    from dinocache.train.run import train

    v = values(
        tiny_train,
        tmp_path,
        demo_data,
        fault_cache,
        tiny_teacher_dir,
        distill_geometric_aug="warp",
        workers=workers,
    )
    ref = final_state(train(build(TrainConfig, {**v, "name": "ref"})).save_dir)
    with pytest.raises(Crash):
        train(build(TrainConfig, v), callbacks={"on_train_batch_end": [CrashAt(1, 1)]})
    got = final_state(train(build(TrainConfig, {**v, "resume": True})).save_dir)
    same, n = _equal_tensors(got, ref)
    run = f"in-process crash, warp + mosaic, workers={workers}"
    kills(run, "B (epoch 2, after batch 2)", same == n, f"{same}/{n} tensors equal")
    print(f"default mode, workers={workers}: {same}/{n} tensors equal after crash + resume")
    if workers == 0:
        assert same == n, f"{same}/{n} tensors equal"
    elif same < n:
        pytest.xfail(f"workers={workers}: {same}/{n} tensors equal (worker-side Mosaic buffers and RNG)")
