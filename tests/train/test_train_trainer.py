"""End-to-end trainer runs on the tiny teacher and tiny data (imgsz 128, batch 4, CPU).

One precomputed cache (the real `precompute.run.main`, tests/train/conftest.py) is shared by the session. Runs use nbs=batch and
warmup_epochs=0 so every batch is an optimizer step.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dinocache.train.config import TrainConfig
from dinocache.train.losses import distill_weight

from dinocache.core.config import build


def make_cfg(root: Path, demo_data: Path, teacher: Path, cache: Path, **kw) -> TrainConfig:
    values = {
        "data": str(demo_data),
        "dino_root": str(teacher),
        "cache": str(cache),
        "imgsz": 128,
        "epochs": 3,
        "batch": 4,
        "workers": 0,
        "device": "cpu",
        "nbs": 4,
        "warmup_epochs": 0,
        "dino_distill_channels": 8,
        "dino_distill_warmup_epochs": 1,
        "stage_a_ratio": 0.34,  # int(3 * 0.34) = 1 epoch of Stage A
        "stage_a_freeze": 10,  # given explicitly: a .yaml (random) start does not freeze otherwise
        "artifacts_root": str(root / "artifacts"),
        "name": "run",
        "extra": {"plots": False, "val": False},
        # these tests check the plain cache mode; warp mode: tests/train/test_train_warp_integration.py
        "distill_geometric_aug": "off",
    }
    values.update(kw)
    return build(TrainConfig, values)


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# -- the main cache run ---------------------------------------------------------------------------------------
class Probe:
    """Module-level-state-free recorder used as Ultralytics callbacks."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def start(self, trainer) -> None:
        m = trainer.model
        self.rows.append(
            {
                "epoch": trainer.epoch,
                "w": m.distill_weight,
                "l0_start": m.model[0].conv.weight.detach().clone(),
                "l10_start": m.model[10].state_dict()[next(iter(m.model[10].state_dict()))].clone(),
                "l0_grad": m.model[0].conv.weight.requires_grad,
            }
        )

    def end(self, trainer) -> None:
        m = trainer.model
        r = self.rows[-1]
        r["l0_end"] = m.model[0].conv.weight.detach().clone()
        r["l10_end"] = m.model[10].state_dict()[next(iter(m.model[10].state_dict()))].clone()
        r["bn0_training"] = m.model[0].bn.training


@pytest.fixture(scope="module")
def cache_run(tmp_path_factory, demo_data, tiny_teacher_dir, feature_cache):
    from dinocache.train.run import train

    root = tmp_path_factory.mktemp("cacherun")
    # keep_resume: the test reads the finished run's resume.pt (by default a clean finish removes it)
    cfg = make_cfg(root, demo_data, tiny_teacher_dir, feature_cache, keep_resume=True)
    probe = Probe()
    # bound methods of a plain object are fine here: the probe is not part of the model or EMA
    trainer = train(cfg, callbacks={"on_train_epoch_start": [probe.start], "on_train_epoch_end": [probe.end]})
    return cfg, trainer, probe


def test_cache_run_outputs_and_schedule(cache_run) -> None:
    cfg, trainer, probe = cache_run
    d = trainer.save_dir
    assert d == Path(cfg.artifacts_root).resolve() / "yolo26n-obb" / "runs" / "run" / "train"
    for f in ("weights/best.pt", "weights/last.pt", "weights/resume.pt", "results.csv", "args.yaml"):
        assert (d / f).exists(), f
    import yaml

    args = yaml.safe_load((d / "args.yaml").read_text())
    assert args["dinocache"]["teacher_source"] == "cache" and args["mosaic"] == 0.0 and args["fliplr"] == 0.5
    assert yaml.safe_load((d / "dinocache_args.yaml").read_text())["dino_distill_channels"] == 8
    rows = read_csv(d / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert "val/distill" in rows[0]
    for r in rows:
        assert all(math.isfinite(v) for k, v in r.items() if k.startswith("train/"))
    # w = 0 in the warmup epoch, then Stage B's weight: the logged value is w * L_distill
    assert rows[0]["train/distill"] == 0.0
    assert all(r["train/distill"] > 0 for r in rows[1:])
    assert [r["w"] for r in probe.rows] == pytest.approx([distill_weight(e, cfg) for e in range(3)])
    state = torch.load(d / "weights" / "resume.pt", weights_only=True)  # tensors and dicts only
    assert state["epoch"] == 2 and any(k.startswith("distill_proj.") for k in state["ema"])


def test_frozen_in_stage_a_trained_in_stage_b(cache_run) -> None:
    _, _, probe = cache_run
    a, b = probe.rows[0], probe.rows[1]
    assert not a["l0_grad"] and torch.equal(a["l0_start"], a["l0_end"])  # frozen backbone: no update
    assert not a["bn0_training"]
    assert not torch.equal(a["l10_start"], a["l10_end"])  # layer 10 is not frozen (freeze=10 -> 0..9)
    assert b["l0_grad"] and not torch.equal(b["l0_start"], b["l0_end"])  # Stage B: trained
    assert b["bn0_training"]


def test_clean_weights_load_without_dinocache(cache_run, tmp_path: Path, demo_data: Path) -> None:
    _, trainer, _ = cache_run
    img = next((demo_data.parent / "images" / "val").glob("*.png"))
    purelib = sysconfig.get_paths()["purelib"]
    script = textwrap.dedent(
        f"""
        import sys
        # site-packages without processing its .pth files: the editable dinocache finder stays out
        sys.path.append({purelib!r})
        for name in ("train", "cache", "precompute", "dinocache"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(f"{{name}} is importable; the test would prove nothing")
        from ultralytics import YOLO
        for w in ("best.pt", "last.pt"):
            m = YOLO({str(trainer.wdir)!r} + "/" + w)
            assert type(m.model).__name__ == "OBBModel", type(m.model)
            assert not any(k.startswith("distill_proj") for k in m.model.state_dict())
            r = m.predict({str(img)!r}, imgsz=128, device="cpu", verbose=False)
            assert r[0].obb is not None
        print("CLEAN-OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="0")
    p = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and "CLEAN-OK" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]


# -- flips ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_flip_moves_teacher_map_with_image(direction, demo_data: Path, feature_cache: Path) -> None:
    import cv2
    from dinocache.train.config import GEOMETRIC_AUGMENTATIONS
    from dinocache.train.dataset import DistillDataset, TeacherLookup
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    from dinocache import cache
    from dinocache.core.data import image_key, load_data_yaml

    info = load_data_yaml(demo_data)
    flips = {"fliplr": 1.0, "flipud": 0.0} if direction == "horizontal" else {"fliplr": 0.0, "flipud": 1.0}
    hyp = get_cfg(DEFAULT_CFG, {**GEOMETRIC_AUGMENTATIONS, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0, **flips})
    hyp.augmentations = []
    root = Path(info["path"])
    ds = DistillDataset(
        img_path=info["train"],
        imgsz=128,
        batch_size=4,
        augment=True,
        hyp=hyp,
        rect=False,
        stride=32,
        pad=0.0,
        task="obb",
        data=info,
        teacher=TeacherLookup(str(feature_cache), root, 8),
    )
    fc = cache.open(str(feature_cache))
    samples = [ds[i] for i in (0, 5)]
    for s in samples:
        rgb = cv2.imread(s["im_file"])[..., ::-1]
        want_img = np.flip(rgb, axis=1 if direction == "horizontal" else 0).transpose(2, 0, 1)
        assert np.array_equal(s["img"].numpy(), want_img)
        feat = fc.get(image_key(s["im_file"], root), channels=8)
        want_feat = np.flip(feat, axis=-1 if direction == "horizontal" else -2)
        assert np.array_equal(s["teacher_feat"], want_feat)
    batch = DistillDataset.collate_fn(samples)
    assert batch["teacher_feat"].shape == (2, 8, 8, 8) and batch["teacher_feat"].dtype == torch.float16


# -- cached vs online parity ---------------------------------------------------------------------------------------
class LossLog:
    def __init__(self) -> None:
        self.values: list[float] = []

    def __call__(self, trainer) -> None:
        self.values.append(float(trainer.loss_items["distill"]))


def test_cached_and_online_distill_loss_agree(tmp_path, demo_data, tiny_teacher_dir, feature_cache) -> None:
    from dinocache.train.run import train

    steps = {}
    for src in ("cache", "online"):
        log = LossLog()
        extra = {
            "plots": False,
            "val": False,
            "hsv_h": 0,
            "hsv_s": 0,
            "hsv_v": 0,
            "fliplr": 0,
            "augmentations": [],
        }
        # (flips are off too: the cache flips the map, online runs the teacher on the flipped image)
        cfg = make_cfg(
            tmp_path, demo_data, tiny_teacher_dir, feature_cache, epochs=1, name=src, teacher_source=src,
            dino_distill_warmup_epochs=0, extra=extra,
        )  # fmt: skip
        train(cfg, callbacks={"on_train_batch_end": [log]})
        steps[src] = log.values
    assert len(steps["cache"]) == 4 and all(v > 0 for v in steps["cache"])
    # same seed, same batches: only the fp16 storage of the cache differs
    np.testing.assert_allclose(steps["cache"][:2], steps["online"][:2], rtol=5e-3)


# -- resume ------------------------------------------------------------------------------------------------------
def _stop_after_first_epoch(trainer) -> None:
    trainer.stop = True


class ResumeProbe:
    def __call__(self, trainer) -> None:
        m = trainer.model
        self.start_epoch = trainer.start_epoch
        self.proj = m.distill_proj[0].weight.detach().clone()
        self.w = m.distill_weight
        self.l0_grad = m.model[0].conv.weight.requires_grad


def test_resume_restores_stage_weight_and_projection(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache
) -> None:
    from dinocache.train.run import train

    kw = {"epochs": 2, "stage_a_ratio": 0.5, "dino_distill_warmup_epochs": 0, "name": "r"}
    cfg = make_cfg(tmp_path, demo_data, tiny_teacher_dir, feature_cache, **kw)
    first = train(cfg, callbacks={"on_train_epoch_end": [_stop_after_first_epoch]})
    state = torch.load(first.wdir / "resume.pt", weights_only=True)
    assert state["epoch"] == 0 and state["stage"] == "A"
    csv_path = first.save_dir / "results.csv"
    lines = csv_path.read_text().splitlines()  # pretend epoch 1 took 1000 s: the resumed run's time goes on
    head = [c.strip() for c in lines[0].split(",")]
    cells = lines[1].split(",")
    cells[head.index("time")] = "1000"
    csv_path.write_text("\n".join([lines[0], ",".join(cells)]) + "\n")
    probe = ResumeProbe()
    cfg2 = make_cfg(tmp_path, demo_data, tiny_teacher_dir, feature_cache, name="r", resume=True, epochs=99)
    second = train(cfg2, callbacks={"on_train_epoch_start": [probe]})
    assert second.save_dir == first.save_dir and second.epochs == 2  # the saved config rules, not epochs=99
    assert probe.start_epoch == 1 and probe.l0_grad  # resumed into Stage B: unfrozen
    assert probe.w == pytest.approx(0.08)
    torch.testing.assert_close(probe.proj, state["ema"]["distill_proj.0.weight"].float())
    rows = read_csv(second.save_dir / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert rows[0]["time"] == 1000 and rows[1]["time"] > 1000  # the time column continues across the resume


# -- refusals ------------------------------------------------------------------------------------------------------
def _cli(args: list[str], cfg_file: Path, capsys) -> tuple[int, str]:
    from dinocache.train.cli import main

    rc = main(["--config", str(cfg_file), *args])
    return rc, capsys.readouterr().err


@pytest.fixture()
def cfg_file(tmp_path, demo_data, tiny_teacher_dir, feature_cache) -> Path:
    sec = {
        "data": str(demo_data),
        "dino_root": str(tiny_teacher_dir),
        "cache": str(feature_cache),
        "imgsz": 128,
        "epochs": 1,
        "batch": 4,
        "workers": 0,
        "device": "cpu",
        "dino_distill_channels": 8,
        "artifacts_root": str(tmp_path / "artifacts"),
        "name": "x",
    }
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"train": sec}))
    return p


def test_refuses_cache_of_other_imgsz(cfg_file, capsys) -> None:
    rc, err = _cli(["imgsz=160"], cfg_file, capsys)
    # the hint is the command that works: precompute refuses an existing cache of other settings without it
    assert rc == 2 and "imgsz=128" in err and "just precompute --overwrite" in err
    assert not (cfg_file.parent / "artifacts").exists()  # nothing written


def test_refuses_cache_of_other_teacher(cfg_file, tmp_path, capsys) -> None:
    from dinocache.teacher.tiny import make_tiny_teacher

    other = make_tiny_teacher(tmp_path / "other", seed=1)
    rc, err = _cli([f"dino_root={other}"], cfg_file, capsys)
    assert (
        rc == 2
        and "model.safetensors: changed since the cache was made" in err
        and "just precompute --overwrite" in err
    )
    assert str(other / "model.safetensors") in err  # names the file
    rc, err = _cli(["dino_layer=1"], cfg_file, capsys)
    assert rc == 2 and "layer" in err and "just precompute --overwrite" in err
    assert not (cfg_file.parent / "artifacts").exists()


def test_refuses_cache_missing_training_images(cfg_file, tmp_path, demo_data, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_data.parent, data)
    imgs = sorted((data / "images" / "train").glob("*.png"))
    for i, src in enumerate(imgs[:3]):
        shutil.copy(src, src.with_name(f"zz_new{i}.png"))
        lab = data / "labels" / "train" / (src.stem + ".txt")
        shutil.copy(lab, lab.with_name(f"zz_new{i}.txt"))
    for c in data.rglob("*.cache"):
        c.unlink()
    rc, err = _cli([f"data={data / 'data.yaml'}"], cfg_file, capsys)
    assert rc == 2 and "3 of 19 training images" in err and "images/train/zz_new0.png" in err
    assert "`just precompute` finishes an interrupted cache" in err and "just precompute --overwrite" in err
    rc, err = _cli([f"cache={tmp_path / 'nope.zarr'}"], cfg_file, capsys)
    assert rc == 2 and "nope.zarr" in err and "just precompute" in err and "--overwrite" not in err
    rc, err = _cli(["dino_distill_channels=32"], cfg_file, capsys)
    assert rc == 2 and "dino_distill_channels" in err
    rc, err = _cli(["stage_a_ratio=2"], cfg_file, capsys)
    assert rc == 2 and "stage_a_ratio" in err
    assert not (cfg_file.parent / "artifacts").exists()


def test_refuses_existing_run_folder(cfg_file, capsys) -> None:
    d = cfg_file.parent / "artifacts" / "yolo26n-obb" / "runs" / "x" / "train"
    d.mkdir(parents=True)
    (d / "results.csv").write_text("epoch\n")
    rc, err = _cli([], cfg_file, capsys)
    assert rc == 2 and "already holds a run" in err


def test_warp_run_draws_augmented_samples(tmp_path, demo_data, tiny_teacher_dir, feature_cache) -> None:
    """Warp mode (mosaic on): dino_viz/ also shows the first training samples as the student saw them,
    with their warped cached teacher maps and validity masks."""
    from dinocache.train.run import train

    cfg = make_cfg(
        tmp_path,
        demo_data,
        tiny_teacher_dir,
        feature_cache,
        epochs=1,
        distill_geometric_aug="warp",
        dino_viz_every_n_epochs=1,
        eval_enabled=False,
        wandb_enabled=False,
        extra={"plots": False, "val": False, "close_mosaic": 0, "mosaic": 1.0},
    )
    trainer = train(cfg)
    viz = Path(trainer.save_dir) / "dino_viz" / "epoch_001"
    for kind in ("teacher", "student", "mask", "diff"):
        img = cv2.imread(str(viz / f"augmented_0_{kind}.png"))
        assert img is not None and img.shape[0] > 0, kind


def test_cache_mode_refuses_changed_weights_naming_the_file(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache
) -> None:
    """Weights edited in place after precompute: refused by the file digest, the sidecar does not hide it."""
    import time

    from dinocache.teacher.digest import SIDECAR
    from dinocache.train.context import TrainError
    from dinocache.train.preflight import preflight

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, teacher)
    cfg = make_cfg(tmp_path, demo_data, teacher, feature_cache)
    preflight(cfg)  # same bytes: accepted (and the size+mtime sidecar written)
    assert (teacher / SIDECAR).exists()
    w = teacher / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 0xFF  # same size, one byte different
    time.sleep(0.01)
    w.write_bytes(bytes(raw))
    with pytest.raises(TrainError, match=r"model\.safetensors: changed since the cache was made"):
        preflight(cfg)
    (teacher / "model.safetensors").rename(teacher / "model-renamed.safetensors")
    with pytest.raises(TrainError, match=r"model\.safetensors: in the cache's teacher, missing"):
        preflight(cfg)


def test_cache_mode_start_builds_no_teacher(tmp_path, demo_data, tiny_teacher_dir, feature_cache) -> None:
    """preflight in cache mode imports no transformers model code and never calls from_pretrained."""
    values = {"data": str(demo_data), "dino_root": str(tiny_teacher_dir), "cache": str(feature_cache)}
    values |= {"imgsz": 128, "dino_distill_channels": 8}
    (tmp_path / "cfg.json").write_text(json.dumps(values))
    code = textwrap.dedent(
        f"""
        import json, sys
        from dinocache.core.config import build
        from dinocache.train.config import TrainConfig
        from dinocache.train.preflight import preflight
        import dinocache.teacher.model as tm
        tm.DinoV3Teacher.from_pretrained = None  # any call would raise TypeError
        ctx = preflight(build(TrainConfig, json.load(open({str(tmp_path / "cfg.json")!r}))))
        assert ctx.cache_path and ctx.teacher is None
        print("MODEL_MODULES", sorted(m for m in sys.modules if m.startswith("transformers.models")))
        """
    )
    env = {**os.environ, "YOLO_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MODEL_MODULES []" in r.stdout, r.stdout


def test_workers_inherit_keys_and_cache(demo_data: Path, feature_cache: Path) -> None:
    """The dataset resolves every key and opens the cache in the main process; forked DataLoader workers read the
    same maps through their own shard maps without resolving a path or opening the cache again."""
    from dinocache.cache import format as fmt
    from dinocache.train.dataset import DistillDataset, TeacherLookup
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    from dinocache import cache
    from dinocache.core.data import image_key, load_data_yaml

    info = load_data_yaml(demo_data)
    root = Path(info["path"])
    lookup = TeacherLookup(str(feature_cache), root, 8)
    hyp = get_cfg(DEFAULT_CFG, {"mosaic": 0.0, "fliplr": 0.0, "degrees": 0.0, "translate": 0.0, "scale": 0.0})
    ds = DistillDataset(
        img_path=info["train"], imgsz=128, batch_size=4, augment=True, hyp=hyp, rect=False, stride=32, pad=0.0,
        task="obb", data=info, teacher=lookup, geometric_aug="off",
    )  # fmt: skip
    assert set(lookup._keys) == set(ds.im_files) and lookup._fc is not None and lookup._fc._row is not None
    assert lookup._fc._mapped_reader(fmt.FEATURES) is not None
    real_open = cache.open

    def reopen(*args, **kwargs):  # raised in a worker, the DataLoader re-raises it here
        raise AssertionError(f"a worker opened the cache again: {args}")

    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=2, collate_fn=DistillDataset.collate_fn, multiprocessing_context="fork"
    )
    try:
        cache.open = reopen
        batches = list(loader)
    finally:
        cache.open = real_open
    assert sum(len(b["im_file"]) for b in batches) == len(ds)
    fc = cache.open(str(feature_cache), read_path="tensorstore")
    for b in batches:
        for f, feat in zip(b["im_file"], b["teacher_feat"]):
            assert np.array_equal(feat.numpy(), fc.get(image_key(f, root), channels=8))
