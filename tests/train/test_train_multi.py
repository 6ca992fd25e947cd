"""Multi-teacher caches and runs: two teachers (DINOv3 ViT, 16-px cells; DINOv3 ConvNeXt, 32-px cells) in
one cache, a run distilling from both (own columns d_NAME, own viz panels), and the refusals by name."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from dinocache.train.config import TrainConfig, teacher_terms

from dinocache.core.config import ConfigError, build


def _precompute(tmp: Path, data: Path, cache: Path, teacher: Path, name: str, imgsz: int = 128) -> int:
    from dinocache.precompute.run import main as precompute

    (tmp / "empty.json").write_text("{}")
    return precompute(
        [
            "--config",
            str(tmp / "empty.json"),
            f"data={data}",
            f"cache={cache}",
            f"dino_root={teacher}",
            f"teacher_name={name}",
            f"imgsz={imgsz}",
            "channels=8",
            "device=cpu",
            "batch=8",
            "workers=0",
        ]
    )


@pytest.fixture(scope="module")
def multi_cache(tmp_path_factory: pytest.TempPathFactory, demo_data: Path, tiny_teacher_dir: Path) -> dict:
    from dinocache.teacher.tiny import make_tiny_teacher

    d = tmp_path_factory.mktemp("multi")
    conv = make_tiny_teacher(d / "convnext", family="dinov3_convnext")
    cache = d / "features.zarr"
    assert _precompute(d, demo_data, cache, tiny_teacher_dir, "dino") == 0
    assert _precompute(d, demo_data, cache, conv, "conv") == 0
    return {"dir": d, "cache": cache, "dino": tiny_teacher_dir, "conv": conv}


def _cfg(tiny_train, root: Path, data: Path, cache: Path, teachers: list, **kw) -> TrainConfig:
    """The shared tiny run (tests/conftest.py tiny_train) distilling from `teachers` of `cache`."""
    values = tiny_train(
        root,
        data=str(data),
        cache=str(cache),
        epochs=1,
        batch=8,
        nbs=8,
        dino_distill_warmup_epochs=0,
        stage_a_ratio=0.0,
        name="run",
        eval_enabled=False,
        wandb_enabled=False,
        dino_viz_every_n_epochs=1,
        teachers=teachers,
    )
    values.update(kw)
    return build(TrainConfig, values)


def test_manifest_and_single_open_refused(multi_cache: dict) -> None:
    from dinocache.cache import multi

    from dinocache import cache

    m = multi.read_manifest(str(multi_cache["cache"]))
    assert sorted(m["teachers"]) == ["conv", "dino"] and m["imgsz"] == 128
    assert m["teachers"]["conv"]["grid"] == [4, 4] and m["teachers"]["dino"]["grid"] == [8, 8]
    fp = {n: multi.open_teacher(str(multi_cache["cache"]), n).fingerprint for n in ("dino", "conv")}
    assert fp["dino"]["family"] == "dinov3_vit" and fp["conv"]["family"] == "dinov3_convnext"
    with pytest.raises(
        cache.CacheFormatError, match=r"multi-teacher cache holding teachers \['conv', 'dino'\]"
    ):
        cache.open(multi_cache["cache"])
    with pytest.raises(cache.CacheFormatError, match=r"no teacher 'sam' \(it holds \['conv', 'dino'\]\)"):
        multi.open_teacher(str(multi_cache["cache"]), "sam")


def test_two_teacher_run(multi_cache: dict, demo_data: Path, tmp_path: Path, tiny_train) -> None:
    from dinocache.train.run import train

    cfg = _cfg(
        tiny_train,
        tmp_path,
        demo_data,
        multi_cache["cache"],
        [
            {"teacher": "dino", "channels": 8, "dino_root": str(multi_cache["dino"])},
            {"teacher": "conv", "channels": 4, "layers": [16, 19], "stage_b_weight": 0.3},
        ],
    )
    tr = train(cfg)
    run = Path(tr.save_dir)
    with open(run / "results.csv") as f:
        row = {k.strip(): v for k, v in list(csv.DictReader(f))[-1].items()}
    assert "train/distill" not in row  # one column per term instead
    d_dino, d_conv = float(row["train/d_dino"]), float(row["train/d_conv"])
    assert d_dino > 0 and d_conv > 0 and d_dino != d_conv
    viz = {p.name for p in (run / "dino_viz").rglob("*.png")}
    assert any(n.endswith("_dino_teacher.png") for n in viz) and any(
        n.endswith("_conv_teacher.png") for n in viz
    )
    # the final checkpoint is a plain OBB model (no projection convs of either term)
    ck = torch.load(run / "weights" / "best.pt", map_location="cpu", weights_only=False)
    assert not [k for k in ck["model"].state_dict() if k.startswith("distill_proj")]


def test_packed_terms_equal_direct_loss() -> None:
    """A coarse teacher repeated onto the fine grid and pooled back gives the same loss as its own map."""
    from dinocache.train.losses import masked_cosine_loss, obb_cell_mask
    from dinocache.train.model import DistillOBBModel

    terms = [
        dict(
            name="a",
            loss_name="d_a",
            layers=[19],
            channels=3,
            offset=0,
            factor=1,
            object_weight=1.0,
            background_weight=0.5,
        ),
        dict(
            name="b",
            loss_name="d_b",
            layers=[19],
            channels=2,
            offset=3,
            factor=2,
            object_weight=1.0,
            background_weight=0.5,
        ),
    ]
    m = DistillOBBModel("yolo26n-obb.yaml", nc=2, verbose=False, terms=terms)
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 128, 8, 8, generator=g)  # layer-19 output at imgsz 128 (stride 16)
    ta = torch.randn(2, 3, 8, 8, generator=g)
    tb = torch.randn(2, 2, 4, 4, generator=g)
    packed = torch.cat([ta, tb.repeat_interleave(2, -1).repeat_interleave(2, -2)], 1)
    batch = {
        "teacher_feat": packed,
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3, 0.2]]),
        "batch_idx": torch.tensor([0.0]),
    }
    la, lb = m.term_losses([feat], batch)
    proj = m.distill_proj
    mask4 = obb_cell_mask(batch["bboxes"], batch["batch_idx"], 2, (4, 4))
    s = torch.nn.functional.interpolate(proj[1](feat), size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(lb, masked_cosine_loss(s, tb, mask4, 1.0, 0.5), atol=1e-6)
    mask8 = obb_cell_mask(batch["bboxes"], batch["batch_idx"], 2, (8, 8))
    assert torch.allclose(la, masked_cosine_loss(proj[0](feat), ta, mask8, 1.0, 0.5), atol=1e-6)


def test_missing_teacher_and_rows_refused_by_name(
    multi_cache: dict, demo_data: Path, tmp_path: Path, tiny_train
) -> None:
    import shutil

    import zarr
    from dinocache.train.context import TrainError
    from dinocache.train.run import train

    with pytest.raises(TrainError, match=r"no teacher 'sam' \(it holds \['conv', 'dino'\]\)"):
        train(
            _cfg(
                tiny_train,
                tmp_path,
                demo_data,
                multi_cache["cache"],
                [{"teacher": "dino"}, {"teacher": "sam"}],
            )
        )
    assert not (tmp_path / "artifacts").exists() or not list((tmp_path / "artifacts").rglob("results.csv"))
    # a row of one teacher not done: refused naming that teacher's store and the image
    copy = tmp_path / "copy.zarr"
    shutil.copytree(multi_cache["cache"], copy)
    done = zarr.open_array(str(copy / "teachers" / "conv" / "done"), mode="r+")
    done[3] = 0
    with pytest.raises(TrainError, match=r"teachers/conv lacks teacher features for 1 of 16"):
        train(
            _cfg(
                tiny_train,
                tmp_path,
                demo_data,
                copy,
                [{"teacher": "dino", "channels": 8}, {"teacher": "conv", "channels": 4}],
            )
        )


def test_other_imgsz_or_single_store_refused(multi_cache: dict, demo_data: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "c.zarr"
    shutil.copytree(multi_cache["cache"], copy)
    # same images, another imgsz: refused by name (rc 2, nothing written for the new teacher)
    assert _precompute(tmp_path, demo_data, copy, multi_cache["conv"], "big", imgsz=64) == 2
    assert not (copy / "teachers" / "big" / "zarr.json").exists()


def test_teachers_config_errors_name_the_key() -> None:
    base = {"data": "d.yaml", "teacher_source": "cache"}
    with pytest.raises(ConfigError, match=r"teachers\[1\]\.teacher: 'dino' is listed twice"):
        build(TrainConfig, {**base, "teachers": [{"teacher": "dino"}, {"teacher": "dino"}]})
    with pytest.raises(ConfigError, match=r"teachers\[0\]\.teacher: 'Too-Long-Name'"):
        build(TrainConfig, {**base, "teachers": [{"teacher": "Too-Long-Name"}]})
    with pytest.raises(ConfigError, match=r"teachers\[0\]: unknown key\(s\) \['weight'\]"):
        build(TrainConfig, {**base, "teachers": [{"teacher": "a", "weight": 1}]})
    with pytest.raises(ConfigError, match="teacher_source=cache"):
        build(TrainConfig, {**base, "teacher_source": "online", "teachers": [{"teacher": "a"}]})
    cfg = build(TrainConfig, {**base, "teachers": [{"teacher": "a", "channels": 4}]})
    (t,) = teacher_terms(cfg)
    assert t.loss_name == "d_a" and len(t.loss_name) <= 10 and t.layers == cfg.dino_distill_layers
    assert np.isclose(t.stage_b_weight, cfg.stage_b_distill_weight)


def _first_batch_items(trainer) -> dict[str, float]:
    """The loss items of `trainer`'s first training batch (its model, dataset and curriculum at epoch 1)."""
    from dinocache.train.trainer import apply_curriculum

    torch.manual_seed(0)
    trainer.model = trainer.get_model(cfg="yolo26n-obb.yaml", verbose=False)
    trainer.set_model_attributes()  # nc, names, args: what Ultralytics' _setup_train gives the model
    trainer.epoch = 0
    apply_curriculum(trainer)
    ds = trainer.build_dataset(trainer.data["train"], mode="train", batch=4)
    np.random.seed(0)
    import random

    random.seed(0)
    batch = trainer.preprocess_batch(ds.collate_fn([ds[i] for i in range(4)]))
    trainer.model.train()
    _, items = trainer.model.loss(batch)
    return {k: float(v) for k, v in items.items()}


TWO_TERMS = [{"teacher": "dino", "channels": 8}, {"teacher": "conv", "channels": 4, "layers": [16, 19]}]


def test_multi_teacher_rank_first_batch_through_ddp_handoff(
    multi_cache: dict, demo_data: Path, tmp_path: Path, tiny_train, trainer_for
) -> None:
    """A `teachers=[...]` run handed to a DDP rank (Ultralytics' pickled launcher state): the rank rebuilds
    its trainer from the handoff alone and its first batch gives the parent's d_NAME terms."""
    import cloudpickle
    from dinocache.train import ddp
    from dinocache.train.trainer import DinoOBBTrainer
    from ultralytics.utils import DEFAULT_CFG_DICT

    parent = trainer_for(_cfg(tiny_train, tmp_path, demo_data, multi_cache["cache"], TWO_TERMS))
    parent.callbacks[ddp.HANDOFF_EVENT].append(ddp.make_handoff(parent))
    state = cloudpickle.loads(cloudpickle.dumps({"args": vars(parent.args), "callbacks": parent.callbacks}))
    rank = DinoOBBTrainer(
        cfg={**DEFAULT_CFG_DICT, "save_dir": ""}, overrides=state["args"], _callbacks=state["callbacks"]
    )
    assert rank.ctx.packed and rank.ctx.terms == parent.ctx.terms
    assert [t.loss_name for t in rank.ctx.terms] == ["d_dino", "d_conv"]
    ours, theirs = _first_batch_items(parent), _first_batch_items(rank)
    assert ours["d_dino"] > 0 and ours["d_conv"] > 0 and "distill" not in ours
    assert theirs == pytest.approx(ours, rel=1e-5, abs=1e-7)


@pytest.mark.slow  # a training run inside Ultralytics' generated launcher: ~40 s on the shared 2-core machine
def test_multi_teacher_run_through_the_ddp_launcher(
    multi_cache: dict, demo_data: Path, tmp_path: Path, monkeypatch, tiny_train, trainer_for
) -> None:
    """`teachers=[...]` with DDP on: Ultralytics' launcher (run as one CPU process instead of torchrun on
    GPUs) rebuilds our trainer from its pickled state and trains both terms."""
    import os
    import subprocess
    import sys

    import ultralytics.engine.trainer as ut

    repo = Path(__file__).resolve().parents[2]
    real_run = subprocess.run

    def launch(cmd, check=True):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
        r = real_run([sys.executable, cmd[-1]], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    monkeypatch.setattr(ut.subprocess, "run", launch)
    trainer = trainer_for(
        _cfg(
            tiny_train,
            tmp_path,
            demo_data,
            multi_cache["cache"],
            TWO_TERMS,
            dino_viz_enabled=False,
            batch=4,
            nbs=4,
        )
    )
    trainer.ddp, trainer.world_size = True, 2  # what device=0,1 sets; the rank itself runs on the CPU
    trainer.train()
    with open(trainer.save_dir / "results.csv") as f:
        row = {k.strip(): v for k, v in list(csv.DictReader(f))[-1].items()}
    assert float(row["train/d_dino"]) > 0 and float(row["train/d_conv"]) > 0
