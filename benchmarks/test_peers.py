"""dinocache next to the tools a user would pick instead, side by side in one run.

    pytest benchmarks/test_peers.py --benchmark -s        # or: just bench -k peers

Runs, each in a fresh subprocess on the same demo images, same student (YOLO26-n OBB), same image size,
batch and epochs, and times the measured epochs (the first is a warm-up):
  * plain Ultralytics training (the baseline every ratio is taken against);
  * Ultralytics knowledge distillation, `distill_model=` a YOLO26-s OBB teacher built from its yaml;
  * LightlyTrain `distillation` with a ViT-B/16-shaped DINOv3 teacher (random weights, offline);
    skipped when `lightly-train` (optional extra `bench-peers`, AGPL) is not installed;
  * dinocache `none`, `cache` and `online` with a ViT-B/16-shaped random DINOv3 teacher
    (`benchmarks/scenarios/train_epoch.py`); skipped when that scenario or the precompute is missing;
  * dinocache `pretrain` from the cache and online (`benchmarks/scenarios/pretrain_epoch.py`): the
    label-free job LightlyTrain's row does, at the student's cost when the maps come from the cache.
The last test writes the section "peers" with per-image time, peak memory and ratios to plain
Ultralytics. What each run trains differs; see docs/peers.md (also the section note in BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import ROOT, peak_mem_mib, run_scenario

SECTION = "peers"
# Sizes that keep the whole file near 10 minutes on a 2-core CPU (the ViT-B teacher dominates).
FULL = dict(n_train=32, imgsz=256, batch=8, epochs=2, warmup=1)
QUICK = dict(n_train=16, imgsz=128, batch=8, epochs=2, warmup=1)
TIMEOUT = 1500.0

NOTE = (
    "Same demo images, same YOLO26-n OBB student, same image size, batch and epochs, each run in a fresh "
    "process; the first epoch is a warm-up and not timed. Ratios are per-image time and peak memory over "
    "plain Ultralytics training in this run. **The runs do not train the same thing**: "
    "*Ultralytics KD* trains the full detector on the labels plus a score-weighted L2 loss to a YOLO26-s "
    "teacher's neck features, the teacher running every step; "
    "*LightlyTrain* trains only the student's backbone (layers 0-10, no neck or head), label-free, against "
    "a DINOv3 ViT-B/16 run every step (global + local feature distillation); a separate fine-tune with "
    "labels follows in practice and is not timed here; "
    "*dinocache* trains the full detector on the labels plus DINOv3 feature distillation, the teacher "
    "either read from the precomputed cache (`cache`, teacher cost paid once, before training, not in "
    "these figures) or run every step (`online`); `none` is dinocache's trainer without distillation; "
    "*dinocache pretrain* is the label-free job LightlyTrain does (backbone and neck against the teacher's "
    "maps, no labels, no head), the maps read from the same cache or the teacher run every step. "
    "Teachers have random weights (the compute of real ones). On CPU, peak memory is the process's peak "
    "RSS, which includes each library's import footprint (`import_rss_mib`). See docs/peers.md."
)

# label -> row, filled by the tests below in file order, written by the last test
ROWS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def size(quick: bool) -> dict:
    return QUICK if quick else FULL


@pytest.fixture(scope="module")
def peer_data(tmp_path_factory: pytest.TempPathFactory, size: dict) -> Path:
    """Absolute data.yaml of the demo dataset every tool trains on."""
    from dinocache.datatools.demo_data import make_demo_dataset

    root = make_demo_dataset(
        tmp_path_factory.mktemp("peers") / "data",
        n_train=size["n_train"],
        n_val=4,
        imgsz=size["imgsz"],
        seed=0,
    )
    return (Path(root) / "data.yaml").resolve()


def _common_args(size: dict) -> list[str]:
    return [
        "--imgsz",
        str(size["imgsz"]),
        "--batch",
        str(size["batch"]),
        "--epochs",
        str(size["epochs"]),
        "--warmup-epochs",
        str(size["warmup"]),
    ]


def _row(label: str, trains: str, teacher: str, res: dict) -> dict:
    """One table row; per_image_s is derived from epoch_s when a scenario reports only per_image_ms."""
    per_image = res.get("per_image_s")
    if per_image is None and res.get("per_image_ms") is not None:
        per_image = float(res["per_image_ms"]) / 1000
    row = {
        "label": label,
        "trains": trains,
        "teacher": teacher,
        "per_image_s": per_image,
        "peak_mem_mib": peak_mem_mib(res),
        "epoch_s": res["epoch_s"],
        # process CPU seconds per image (None where a scenario does not report it): robust to other jobs
        "cpu_per_image_s": res.get("cpu_per_image_s"),
        "peak_rss_mib": res.get("peak_rss_mib"),
        "cuda_max_allocated_mib": res.get("cuda_max_allocated_mib"),
        "import_rss_mib": res.get("import_rss_mib"),
    }
    ROWS[label] = row
    print(f"[peers] {label}: {row}", flush=True)
    return row


def test_ultralytics_plain(peer_data: Path, size: dict, tmp_path: Path) -> None:
    res = run_scenario(
        "benchmarks.scenarios.peer_ultralytics_kd",
        ["--mode", "plain", "--data", str(peer_data), "--workdir", str(tmp_path), *_common_args(size)],
        timeout=TIMEOUT,
    )
    _row("ultralytics plain", "detector, labels", "-", res)


def test_ultralytics_kd(peer_data: Path, size: dict, tmp_path: Path) -> None:
    res = run_scenario(
        "benchmarks.scenarios.peer_ultralytics_kd",
        [
            "--mode",
            "kd",
            "--data",
            str(peer_data),
            "--workdir",
            str(tmp_path),
            "--teacher",
            "yolo26s-obb.yaml",
            *_common_args(size),
        ],
        timeout=TIMEOUT,
    )
    _row("ultralytics KD", "detector, labels + L2 to teacher neck", "YOLO26-s OBB (online)", res)


def test_lightly_train(peer_data: Path, size: dict, tmp_path: Path) -> None:
    if importlib.util.find_spec("lightly_train") is None:
        pytest.skip("lightly-train is not installed (optional, AGPL): pip install -e '.[bench-peers]'")
    res = run_scenario(
        "benchmarks.scenarios.peer_lightly",
        [
            "--data",
            str(peer_data),
            "--workdir",
            str(tmp_path),
            "--teacher",
            "dinov3/vitb16-notpretrained",
            *_common_args(size),
        ],
        timeout=TIMEOUT,
    )
    _row("LightlyTrain distill", "backbone only, no labels", "DINOv3 ViT-B/16 (online)", res)


def _dinocache_missing() -> str | None:
    if not (ROOT / "benchmarks" / "scenarios" / "train_epoch.py").exists():
        return "benchmarks/scenarios/train_epoch.py does not exist yet (dinocache trainer scenario)"
    for mod in ("dinocache.train.run", "dinocache.precompute.run", "dinocache.teacher.tiny"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not importable yet"
    return None


def _cli(args: list[str], cwd: Path) -> None:
    """`dinocache ARGS` in a subprocess (setup, not measured); cwd away from the repo's config.json."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run(
        [sys.executable, "-m", "dinocache.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if p.returncode != 0:
        raise RuntimeError(
            f"dinocache {' '.join(args)} failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}"
        )


def test_dinocache_modes(peer_data: Path, size: dict, tmp_path: Path) -> None:
    missing = _dinocache_missing()
    if missing:
        pytest.skip(f"dinocache rows skipped: {missing}")
    teacher = tmp_path / "dinov3_vitb"
    cache = tmp_path / "features.zarr"
    # A ViT-B/16-shaped random DINOv3, the same size as LightlyTrain's dinov3/vitb16 teacher.
    _cli(["make-tiny-teacher", str(teacher), "--size", "vitb", "--seed", "0"], tmp_path)
    _cli(
        [
            "precompute",
            f"data={peer_data}",
            f"cache={cache}",
            f"dino_root={teacher}",
            f"imgsz={size['imgsz']}",
            f"batch={size['batch']}",
            "workers=0",
            "device=auto",
        ],
        tmp_path,
    )
    trains = {
        "none": ("detector, labels", "-"),
        "cache": ("detector, labels + DINOv3 features", "DINOv3 ViT-B/16 (cached)"),
        "online": ("detector, labels + DINOv3 features", "DINOv3 ViT-B/16 (online)"),
    }
    for mode, (what, teacher_desc) in trains.items():
        res = run_scenario(
            "benchmarks.scenarios.train_epoch",
            [
                "--mode",
                mode,
                "--data",
                str(peer_data),
                "--cache",
                str(cache),
                "--dino-root",
                str(teacher),
                *_common_args(size),
            ],
            timeout=TIMEOUT,
        )
        _row(f"dinocache {mode}", what, teacher_desc, res)
    # label-free pretraining, the job LightlyTrain's row does: backbone and neck on the maps alone
    for source in ("cache", "online"):
        res = run_scenario(
            "benchmarks.scenarios.pretrain_epoch",
            [
                "--source",
                source,
                "--data",
                str(peer_data),
                "--cache",
                str(cache),
                "--dino-root",
                str(teacher),
                *_common_args(size),
            ],
            timeout=TIMEOUT,
        )
        _row(
            f"dinocache pretrain {source}",
            "backbone + neck, no labels",
            f"DINOv3 ViT-B/16 ({'cached' if source == 'cache' else 'online'})",
            res,
        )


def test_write_peer_table(results) -> None:
    """Ratios to plain Ultralytics (same run), then the rows into latest.json / BENCHMARKS.md / plot."""
    if not ROWS:
        pytest.skip("no peer run produced figures")
    base = ROWS.get("ultralytics plain")
    for row in ROWS.values():
        t_ratio = m_ratio = None
        if base and base["per_image_s"] and row["per_image_s"] is not None:
            t_ratio = round(row["per_image_s"] / base["per_image_s"], 3)
        if base and base["peak_mem_mib"]:
            m_ratio = round(row["peak_mem_mib"] / base["peak_mem_mib"], 3)
        c_ratio = None
        if base and base["cpu_per_image_s"] and row["cpu_per_image_s"] is not None:
            c_ratio = round(row["cpu_per_image_s"] / base["cpu_per_image_s"], 3)
        keys = list(row)
        # ratios next to the figures they are taken from
        keys.insert(keys.index("per_image_s") + 1, "time_vs_plain")
        keys.insert(keys.index("peak_mem_mib") + 1, "mem_vs_plain")
        keys.insert(keys.index("cpu_per_image_s") + 1, "cpu_vs_plain")
        full = {**row, "time_vs_plain": t_ratio, "mem_vs_plain": m_ratio, "cpu_vs_plain": c_ratio}
        results.add(SECTION, **{k: full[k] for k in keys})
    results.note(SECTION, NOTE)
