"""Shared fixtures: a tiny random DINOv3 saved with save_pretrained and a tiny synthetic OBB dataset.

Both are session-scoped and built once in a temp folder; tests that modify them must copy first.
"""

from __future__ import annotations

import os

# Nothing in the tests may reach for the network or pip-install itself.
for _k, _v in {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "WANDB_MODE": "offline",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "YOLO_VERBOSE": "False",
    # Tiny tensors: a second intra-op thread only adds contention on a 2-core machine.
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(_k, _v)

from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Small enough for a 2-core CPU: 128 px images -> an 8x8 teacher grid (patch 16) and an 8x8 student
# map at layer 19 (stride 16).
TEST_IMGSZ = 128


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv3 folder, loadable with `DinoV3Teacher.from_pretrained(path)`."""
    from dinocache.teacher.tiny import make_tiny_teacher

    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "dinov3", seed=0)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the data.yaml of a tiny synthetic OBB dataset (16 train / 4 val, square at TEST_IMGSZ)."""
    from dinocache.datatools.demo_data import make_demo_dataset

    root = make_demo_dataset(
        tmp_path_factory.mktemp("data") / "dataset", n_train=16, n_val=4, imgsz=TEST_IMGSZ, seed=0
    )
    return root / "data.yaml"


@pytest.fixture(scope="session")
def tiny_train():
    """`(root, **keys) -> dict`: the `train` section of a tiny CPU run (TEST_IMGSZ, batch 4, an optimizer step
    per batch: nbs=batch and no warm-up; 8 distilled channels; no plots, no per-epoch validation; run folders
    under root/artifacts). The training tests add their data, teacher, cache and schedule as keys (a key given
    replaces the default)."""

    def values(root: Path | str, **keys) -> dict:
        return {
            "imgsz": TEST_IMGSZ,
            "batch": 4,
            "workers": 0,
            "device": "cpu",
            "nbs": 4,
            "warmup_epochs": 0,
            "dino_distill_channels": 8,
            "artifacts_root": str(Path(root) / "artifacts"),
            "extra": {"plots": False, "val": False},
            **keys,
        }

    return values


@pytest.fixture(scope="session")
def precompute_argv(demo_data: Path, tiny_teacher_dir: Path):
    """`store -> key=value list` for a small, fast precompute of `demo_data` with the tiny teacher (2-image
    shards, 8 PCA channels); the precompute, launcher and S3 tests compare caches written with it."""

    def argv(store: Path | str) -> list[str]:
        return [
            f"data={demo_data}",
            f"dino_root={tiny_teacher_dir}",
            f"cache={store}",
            f"imgsz={TEST_IMGSZ}",
            "batch=2",
            "workers=1",
            "device=cpu",
            "channels=8",
            "shard_size=2",
            "pca_fit_images=8",
        ]

    return argv


@contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test (as the launched precompute children use): on 2 shared cores it
    avoids OpenMP spinning, and caches compared bit for bit are made with the same thread count."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def reference_cache(precompute_argv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`precompute_argv`'s cache from one uninterrupted single-writer run with 1 torch thread: what resumed,
    sharded, launched and S3 runs must reproduce bit for bit. Read only."""
    from dinocache.precompute.run import main as precompute_main

    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    with _torch_threads(1):
        assert precompute_main(precompute_argv(store)) == 0
    return store


@pytest.fixture(scope="session")
def flip_caches(precompute_argv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`precompute_argv`'s cache made with cache_flips=true ("flips") and without ("plain"), same thread count,
    so their `features` compare bit for bit. Read only (copy before damaging)."""
    from dinocache.precompute.run import main as precompute_main

    d = tmp_path_factory.mktemp("flips")
    with _torch_threads(1):
        assert precompute_main([*precompute_argv(d / "flips.zarr"), "cache_flips=true"]) == 0
        assert precompute_main(precompute_argv(d / "plain.zarr")) == 0
    return {"flips": d / "flips.zarr", "plain": d / "plain.zarr"}
