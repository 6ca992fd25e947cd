"""`dinocache pretrain` end to end on tiny data: distillation-only training on unlabeled images, its outputs
(results.csv with the feature fit, results.png, last/best/resume), exact resume, the checkpoint loading and
fine-tuning in plain Ultralytics without dinocache, and refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dinocache.train.pretrain import Pretrain, PretrainConfig, head_inputs

from dinocache.core.config import ConfigError
from dinocache.core.data import DataError

REPO = Path(__file__).resolve().parents[2]


def cfg(tmp_path: Path, data: Path, cache: Path, teacher: Path, **kw) -> PretrainConfig:
    v = dict(
        data=str(data),
        cache=str(cache),
        dino_root=str(teacher),
        imgsz=128,
        channels=16,
        epochs=2,
        batch=4,
        nbs=4,
        warmup_epochs=0,
        workers=0,
        device="cpu",
        fit_images=3,
        artifacts_root=str(tmp_path / "artifacts"),
        name="run",
        extra={"plots": False},
    )
    v.update(kw)
    return PretrainConfig(**v)


def csv_rows(path: Path) -> list[dict[str, float]]:
    import csv

    with open(path) as f:
        return [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_head_inputs_are_the_neck_outputs() -> None:
    assert head_inputs("yolo26n-obb.yaml") == [16, 19, 22]
    assert head_inputs("yolo26n.yaml") == [16, 19, 22]


def test_pretrain_end_to_end_and_plain_ultralytics(
    tmp_path: Path, demo_data: Path, feature_cache: Path, tiny_teacher_dir: Path
) -> None:
    """Pretrain on the demo's training images (labels ignored) -> best.pt; in a process where dinocache cannot
    be imported, Ultralytics loads it, transfers the backbone and neck into a fresh model for other classes,
    and fine-tunes it."""
    res = Pretrain(cfg(tmp_path, demo_data, feature_cache, tiny_teacher_dir)).run()
    for f in ("weights/best.pt", "weights/last.pt", "weights/resume.pt", "results.csv", "data.yaml"):
        assert (res.save_dir / f).exists(), f
    rows = csv_rows(res.save_dir / "results.csv")
    assert len(rows) == 2
    for k in ("train/distill", "train/d16", "train/d19", "train/d22", "fit/cos", "fit/cos_shuf", "fit/gap"):
        assert k in rows[0], k
    assert (
        "fit/cos_obj" in rows[0] and "fit/cos_bg" in rows[0]
    )  # a dataset yaml: held-out boxes score objects
    assert rows[1]["train/distill"] < rows[0]["train/distill"] + 0.5 and all(
        abs(r["fit/cos"]) <= 1 for r in rows
    )
    held = (res.save_dir / "val.txt").read_text().split()
    assert len(held) == 3 and not set(held) & set((res.save_dir / "train.txt").read_text().split())
    # the checkpoint pickles Ultralytics classes only (its git metadata may quote text; no module is ours)
    # (counted with torch's allow-list empty: a trusted loader earlier in the process may have extended it)
    allowed = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        globs = torch.serialization.get_unsafe_globals_in_checkpoint(res.best)
    finally:
        torch.serialization.add_safe_globals(allowed)
    assert globs and not [g for g in globs if g.split(".")[0] in ("dinocache", "train", "cache")], globs
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dinocache", "train", "cache", "precompute"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import OBBModel
y = YOLO({str(res.best)!r})
src = y.model.float().state_dict()
fresh = OBBModel(y.model.yaml, nc=3, verbose=False)
fresh.load(y.model)
sd = fresh.state_dict()
body = [k for k in src if not k.startswith("model.23.")]
assert all(torch.equal(sd[k], src[k]) for k in body), "backbone/neck not transferred"
y.train(data={str(demo_data)!r}, epochs=1, imgsz=128, batch=4, nbs=4, warmup_epochs=0, device="cpu", workers=0,
        project={str(tmp_path / "ft")!r}, name="ft", exist_ok=True, plots=False, val=False)
assert not any(m.split(".")[0] == "dinocache" for m in sys.modules)
print("PLAIN-OK", type(y.model).__name__)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert "PLAIN-OK OBBModel" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    assert (tmp_path / "ft" / "ft" / "weights" / "last.pt").exists()


class Stop(Exception):
    pass


def stop_after_epoch_1(trainer) -> None:
    if trainer.epoch == 0:
        raise Stop("stopped after epoch 1")


def test_pretrain_resume_is_exact(
    tmp_path: Path, demo_data: Path, feature_cache: Path, tiny_teacher_dir: Path
) -> None:
    """Stopped after epoch 1 (its checkpoint saved), resumed: the same weights as the uninterrupted run."""
    # mosaic and the warp on (the default), 13 training images in batches of 4: a partial last batch
    kw: dict = {}
    ref = Pretrain(cfg(tmp_path / "a", demo_data, feature_cache, tiny_teacher_dir, **kw)).run()
    c = cfg(tmp_path / "b", demo_data, feature_cache, tiny_teacher_dir, **kw)
    with pytest.raises(Stop):
        Pretrain(c).run(callbacks={"on_fit_epoch_end": [stop_after_epoch_1]})
    res = Pretrain(c, resume=True).run()
    a = torch.load(ref.save_dir / "weights" / "resume.pt", weights_only=True)
    b = torch.load(res.save_dir / "weights" / "resume.pt", weights_only=True)
    for part in ("model", "ema"):
        diff = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not diff, f"{part}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    assert len(csv_rows(res.save_dir / "results.csv")) == 2


def test_pretrain_refusals(
    tmp_path: Path, demo_data: Path, feature_cache: Path, tiny_teacher_dir: Path
) -> None:
    from dinocache.train.context import TrainError

    with pytest.raises(ConfigError, match="shuffle"):
        cfg(tmp_path, demo_data, feature_cache, tiny_teacher_dir, shuffle=True, teacher_source="online")
    with pytest.raises(ConfigError, match="fit_images"):
        cfg(tmp_path, demo_data, feature_cache, tiny_teacher_dir, fit_images=0)
    with pytest.raises(TrainError, match="layers"):
        Pretrain(cfg(tmp_path, demo_data, feature_cache, tiny_teacher_dir, layers=[23])).run()
    with pytest.raises(TrainError, match="imgsz"):
        Pretrain(cfg(tmp_path, demo_data, feature_cache, tiny_teacher_dir, imgsz=160)).run()
    with pytest.raises(DataError, match="at least 2"):
        (tmp_path / "one").mkdir()
        shutil.copy(next(demo_data.parent.glob("images/train/*.png")), tmp_path / "one")
        Pretrain(cfg(tmp_path, tmp_path / "one", feature_cache, tiny_teacher_dir)).run()
    assert not (tmp_path / "artifacts" / "yolo26n-obb" / "pretrain" / "run").exists()  # nothing half-written
    # one pretraining per run folder
    from dinocache.core.locks import hold

    held = hold(tmp_path / "artifacts" / "yolo26n-obb" / "pretrain" / "run" / ".lock", "x", "y")
    try:
        with pytest.raises(TrainError, match="another pretraining"):
            Pretrain(cfg(tmp_path, demo_data, feature_cache, tiny_teacher_dir)).run()
    finally:
        held.release(tidy=True)


def test_compare_pretrain_config(tmp_path: Path) -> None:
    """compare's pretrain modes: the train section's student and device, the pretrain values, the run's seed."""
    from dinocache.compare import CompareConfig, pretrain_config, run_config

    train = {"data": "d/data.yaml", "model": "yolo26n.yaml", "device": "cpu", "imgsz": 128, "epochs": 5}
    cfg = CompareConfig(modes=["none", "pretrain", "pretrain-shuffled"], pretrain={"data": "u/", "epochs": 3})
    p = pretrain_config(train, "pretrain", 4, cfg, tmp_path)
    s = pretrain_config(train, "pretrain-shuffled", 4, cfg, tmp_path)
    assert (p.model, p.device, p.imgsz, p.data, p.epochs, p.seed) == ("yolo26n.yaml", "cpu", 128, "u/", 3, 4)
    assert s.shuffle and not p.shuffle and p.artifacts_root == str(tmp_path / "runs")
    t = run_config(train, "pretrain", 4, cfg, tmp_path, model="w/best.pt")
    assert (t.model, t.teacher_source, t.stage_a_freeze, t.epochs) == ("w/best.pt", "none", 0, 5)


@pytest.mark.slow  # a 1-epoch pretraining and a 1-epoch fine-tuning (~30 s CPU)
def test_compare_pretrain_end_to_end(
    tmp_path: Path, demo_data: Path, tiny_teacher_dir: Path, feature_cache: Path
) -> None:
    import json

    from dinocache.compare import main

    train = {
        "data": str(demo_data), "dino_root": str(tiny_teacher_dir), "cache": str(feature_cache), "imgsz": 128,
        "batch": 4, "nbs": 4, "workers": 0, "device": "cpu", "warmup_epochs": 0, "dino_distill_channels": 8,
        "eval_enabled": False, "dino_viz_enabled": False, "wandb_enabled": False, "extra": {"plots": False},
    }  # fmt: skip
    pre = {
        "epochs": 1,
        "batch": 4,
        "nbs": 4,
        "warmup_epochs": 0,
        "channels": 8,
        "fit_images": 2,
        "extra": {"plots": False},
    }
    (tmp_path / "c.json").write_text(json.dumps({"train": train, "pretrain": pre}))
    out = tmp_path / "cmp"
    rc = main(["--config", str(tmp_path / "c.json"), "modes=pretrain", "seeds=1", "epochs=1", "grade=false",
               "pretrain.lr0=0.001", f"out={out}"])  # fmt: skip
    assert rc == 0
    run = json.loads((out / "compare.json").read_text())["runs"]["pretrain"][0]
    assert run["pretrained"].endswith("best.pt") and Path(run["pretrained"]).exists()
    assert "pretrain_cos" in run and run["pretrain_wall_s"] > 0


def test_feature_fit_scores_own_map_against_shuffled() -> None:
    """A student whose projection IS each image's map: fit/cos 1, pcc 1, the shuffled scores lower; object and
    background cells split by the boxes."""
    from dinocache.train.fit import feature_fit
    from torch import nn

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 8, 4, 4, generator=g)  # (N, D, h, w)

    class Student(nn.Module):
        distill_layers = [7]

        def __init__(self) -> None:
            super().__init__()
            self.distill_proj = nn.ModuleList([nn.Identity()])

        def distill_features(self, img: torch.Tensor) -> list[torch.Tensor]:
            return [maps[img[:, 0, 0, 0].long()]]

    def batches():
        for i in (0, 3):
            img = torch.zeros(3, 3, 64, 64)
            img[:, 0, 0, 0] = torch.arange(i, i + 3) * 255.0
            yield {
                "img": img,
                "bboxes": torch.tensor([[0.25, 0.25, 0.2, 0.2, 0.0]]),
                "batch_idx": torch.tensor([0]),
            }

    def teacher_of(batch):
        return maps[batch["img"][:, 0, 0, 0].round().long()]  # feature_fit hands over img / 255

    out = feature_fit(Student(), batches(), teacher_of, "cpu")
    assert abs(out["fit/cos"] - 1) < 1e-5 and abs(out["fit/pcc"] - 1) < 1e-4
    assert out["fit/cos_shuf"] < 0.5 and out["fit/gap"] > 0.5 and out["fit/pcc_shuf"] < 0.5
    assert abs(out["fit/cos_obj"] - 1) < 1e-5 and "fit/cos_L7" in out


@pytest.mark.slow  # a launcher process training 1 epoch (~25 s on the shared 2-core machine)
def test_pretrain_through_the_ddp_launcher(
    tmp_path: Path, demo_data: Path, feature_cache: Path, tiny_teacher_dir: Path, monkeypatch
) -> None:
    """device=0,1: Ultralytics' DDP launcher state rebuilds a PretrainTrainer (distillation only, our config
    and cache) from the pickled state alone; run here as one CPU process instead of torchrun on GPUs."""
    import os

    import ultralytics.engine.trainer as ut
    from dinocache.train import ddp
    from dinocache.train.pretrain_trainer import PretrainTrainer

    p = Pretrain(cfg(tmp_path, demo_data, feature_cache, tiny_teacher_dir, epochs=1))
    tc, ov, ctx, state, save_dir = p.prepare()
    trainer = PretrainTrainer(overrides=ov, dino=tc, ctx=ctx, resume_state=state)
    trainer.ddp, trainer.world_size = True, 2
    real_run = subprocess.run
    seen: dict = {}

    def fake_run(cmd, check=True):
        from ultralytics.utils.patches import torch_load

        file = cmd[-1]
        st = torch_load(Path(file).with_suffix(".pt"), map_location="cpu")
        seen["cls"] = st.get("trainer_class") or st.get("cls")
        seen["handoff"] = ddp.find_handoff(st["callbacks"])
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        r = real_run([sys.executable, file], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    monkeypatch.setattr(ut.subprocess, "run", fake_run)
    trainer.train()
    assert seen["handoff"] is not None and seen["handoff"].dino["dino_distill_layers"] == [16, 19, 22]
    rows = csv_rows(save_dir / "results.csv")
    assert len(rows) == 1 and rows[0]["train/distill"] > 0 and "fit/cos" in rows[0]
    assert (save_dir / "weights" / "best.pt").exists()


def test_pretrain_folder_beside_labels_reads_no_label(
    tmp_path: Path, demo_data: Path, tiny_teacher_dir: Path
) -> None:
    """`data` = a dataset's images/train folder: its labels/ (class ids the one-class run doesn't have) are
    neither checked nor read; the keys are relative to the folder."""
    from dinocache.precompute.run import main as precompute

    images = tmp_path / "ds" / "images" / "train"
    shutil.copytree(demo_data.parent, tmp_path / "ds")
    store = tmp_path / "u.zarr"
    args = [f"data={images}", f"cache={store}", f"dino_root={tiny_teacher_dir}", "imgsz=128", "channels=16"]
    assert precompute([*args, "device=cpu", "batch=8", "workers=0"]) == 0
    res = Pretrain(cfg(tmp_path, images, store, tiny_teacher_dir, epochs=1)).run()
    rows = csv_rows(res.save_dir / "results.csv")
    assert len(rows) == 1 and "fit/cos_obj" not in rows[0]  # a folder: no labels, all cells alike


def test_best_checkpoint_follows_the_fit_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """best.pt is the epoch with the best held-out fit/gap, not fit/cos: under the mse loss fit/cos peaks early on
    the background every map shares, then falls while the student learns each image (the gap rises)."""
    from types import SimpleNamespace

    from dinocache.train import pretrain_trainer

    t = object.__new__(pretrain_trainer.PretrainTrainer)
    t.ema, t.test_loader, t.device, t.best_fitness = SimpleNamespace(ema=None), [], "cpu", None
    fits = iter([{"fit/cos": 0.65, "fit/gap": 0.02}, {"fit/cos": 0.30, "fit/gap": 0.25}])
    monkeypatch.setattr(pretrain_trainer, "feature_fit", lambda *a, **k: next(fits))
    assert t.validate()[1] == 0.02
    assert t.validate()[1] == 0.25 and t.best_fitness == 0.25
