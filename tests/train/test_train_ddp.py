"""Multi-GPU training without GPUs: our model + loss under torch.distributed (gloo, 2 CPU processes), the
config handoff through Ultralytics' generated DDP launcher, the rank-0 rules and the device refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from dinocache.train import ddp
from dinocache.train.config import TrainConfig

from dinocache.core.config import build, to_dict

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def torchrun(nproc: int, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# -- 2 ranks on the CPU: projection gradients all-reduced, loss equal to one process ----------------------------
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker as w
    finally:
        sys.path.remove(str(HERE))
    r = torchrun(2, str(HERE / "ddp_worker.py"), str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1)]

    # one process, same weights, the same two micro-batches one after the other (gradient accumulation)
    torch.set_num_threads(1)
    model = w.build_model()
    ref_loss = []
    for i in (0, 1):
        loss, _ = model(w.micro_batch(i))
        loss.sum().backward()
        ref_loss.append(loss.detach())
    ref_a = w.grads(model, w.WATCH)

    for i, r_ in enumerate(ranks):
        # each rank's loss (distill term included, last entry) is the one-process loss of its micro-batch
        assert torch.allclose(r_["a_loss"], ref_loss[i], rtol=1e-5, atol=1e-6), (i, r_["a_loss"], ref_loss[i])
        assert float(r_["a_loss"][-1]) > 0 and float(r_["a_distill"]) > 0
    proj = [k for k in ranks[0]["a_grads"] if k.startswith("distill_proj.")]
    assert proj, "the projection got no gradient"
    for k in ranks[0]["a_grads"]:
        g0, g1 = ranks[0]["a_grads"][k], ranks[1]["a_grads"][k]
        assert torch.equal(g0, g1), f"{k}: ranks differ (not all-reduced)"
        # DDP averages world_size * grad_r over the ranks = the accumulated one-process gradient
        assert torch.allclose(g0, ref_a[k], rtol=1e-4, atol=1e-6), k
    assert not any(k.startswith("model.0.") for k in ranks[0]["a_grads"])  # frozen in Stage A

    # Stage B: the curriculum re-wrapped DDP, so the newly unfrozen layers are all-reduced too
    assert ranks[0]["rewrapped"] and ranks[1]["rewrapped"]
    l0 = [k for k in ranks[0]["b_grads"] if k.startswith("model.0.")]
    assert l0
    for k in ranks[0]["b_grads"]:
        assert torch.equal(ranks[0]["b_grads"][k], ranks[1]["b_grads"][k]), f"{k}: ranks differ in Stage B"
    g = torch.stack([ranks[i]["b_grads"][l0[0]] for i in (0, 1)])
    assert float(g.abs().sum()) > 0


# -- the config reaches every rank through Ultralytics' own launcher -------------------------------------------
def small_cfg(tiny_train, root: Path, demo_data: Path, teacher: Path, cache: Path, **kw) -> TrainConfig:
    values = tiny_train(
        root,
        data=str(demo_data),
        dino_root=str(teacher),
        cache=str(cache),
        epochs=2,
        dino_distill_warmup_epochs=0,
        stage_a_ratio=0.5,
        name="ddp",
        eval_enabled=False,
        dino_viz_enabled=False,
        wandb_enabled=False,
        distill_geometric_aug="off",
    )
    values.update(kw)
    return build(TrainConfig, values)


def test_ultralytics_ddp_launcher_carries_our_config(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache, monkeypatch, tiny_train, trainer_for
) -> None:
    """Our train() with ddp on: Ultralytics writes its launcher + pickled state; running that launcher
    (as one CPU process here instead of torchrun on GPUs) rebuilds our trainer with our TrainConfig and
    teacher context from the state alone, and trains with the cache."""
    import ultralytics.engine.trainer as ut
    from ultralytics.utils.patches import torch_load

    cfg = small_cfg(
        tiny_train,
        tmp_path,
        demo_data,
        tiny_teacher_dir,
        feature_cache,
        stage_b_distill_weight=0.3,
        keep_resume=True,
    )
    trainer = trainer_for(cfg)
    trainer.ddp, trainer.world_size = True, 2  # what device=0,1 sets; the ranks themselves run on the CPU
    seen: dict = {}
    real_run = subprocess.run  # ut.subprocess is the subprocess module itself

    def fake_run(cmd, check=True):
        file = cmd[-1]
        assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
        state = torch_load(Path(file).with_suffix(".pt"), map_location="cpu")
        h = ddp.find_handoff(state["callbacks"])
        seen["handoff"] = h
        seen["args"] = state["args"]
        # no dinocache key leaked into Ultralytics' args (it would reject them on the rank)
        assert not any(k.startswith(("dino_", "stage_", "teacher_")) for k in state["args"])
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        r = real_run([sys.executable, file], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        seen["out"] = r.stdout + r.stderr

    monkeypatch.setattr(ut.subprocess, "run", fake_run)
    trainer.train()
    h = seen["handoff"]
    assert isinstance(h, ddp.DDPHandoff) and h.dino == to_dict(cfg) and h.resume_file is None
    assert h.ctx.cache_path == str(feature_cache) and h.ctx.channel_mean is not None
    assert ddp.find_handoff(trainer.callbacks) is None  # removed again in the parent
    d = trainer.save_dir
    # written by the rebuilt trainer on "rank 0": our config, and a run that distilled from the cache
    assert yaml.safe_load((d / "dinocache_args.yaml").read_text()) == to_dict(cfg)
    rows = (d / "results.csv").read_text().splitlines()
    head = [c.strip() for c in rows[0].split(",")]
    last = dict(zip(head, (float(v) for v in rows[-1].split(","))))
    assert len(rows) == 3 and last["train/distill"] > 0
    assert (d / "weights" / "resume.pt").exists() and (d / "weights" / "last.pt").exists()
    state = torch.load(d / "weights" / "resume.pt", weights_only=True)
    assert state["stage"] == "B" and state["distill_weight"] == pytest.approx(0.3)  # the curriculum ran


def _stop_after_first_epoch(trainer) -> None:
    trainer.stop = True


@pytest.mark.slow  # two training runs + a launcher process: ~35 s on the shared 2-core machine
def test_ddp_resume_through_the_launcher(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache, monkeypatch, tiny_train
) -> None:
    """A run stopped after epoch 1, resumed with ddp on: the rank rebuilt by Ultralytics' launcher reads
    weights/resume.pt (path in the handoff), continues at epoch 2 and appends to results.csv."""
    import ultralytics.engine.trainer as ut
    from dinocache.train.run import train
    from dinocache.train.trainer import DinoOBBTrainer

    # keep_resume: the finished run's resume.pt is read at the end (a resume takes the saved settings)
    cfg = small_cfg(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache, keep_resume=True)
    first = train(cfg, callbacks={"on_train_epoch_end": [_stop_after_first_epoch]})
    assert torch.load(first.wdir / "resume.pt", weights_only=True)["epoch"] == 0
    real_run = subprocess.run
    seen: dict = {}

    def launch(cmd, check=True):
        seen["handoff"] = ddp.find_handoff(
            torch.load(Path(cmd[-1]).with_suffix(".pt"), weights_only=False)["callbacks"]
        )
        assert (first.wdir / "resume.pt").exists()  # Ultralytics did not delete the run folder
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        r = real_run([sys.executable, cmd[-1]], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    monkeypatch.setattr(ut.subprocess, "run", launch)
    second = DinoOBBTrainer(  # keep_resume: the finished run's resume.pt is read below
        small_cfg(
            tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache, resume=True, keep_resume=True
        )
    )
    second.ddp, second.world_size = True, 2  # what device=0,1 sets in the parent
    second.train()
    assert seen["handoff"].resume_file == str(first.wdir / "resume.pt")
    rows = (first.save_dir / "results.csv").read_text().splitlines()
    assert [int(float(r.split(",")[0])) for r in rows[1:]] == [1, 2]  # epoch 1 kept, epoch 2 appended
    state = torch.load(first.wdir / "resume.pt", weights_only=True)
    assert state["epoch"] == 1 and state["stage"] == "B"


def test_ddp_resume_keeps_run_folder(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache, monkeypatch, tiny_train, trainer_for
) -> None:
    """Ultralytics deletes save_dir before launching unless resuming: ours must survive with resume.pt."""
    import ultralytics.engine.trainer as ut
    from dinocache.train.context import RESUME_FILE

    cfg = small_cfg(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache)
    trainer = trainer_for(cfg, resume_state={"epoch": 0})
    (trainer.wdir / RESUME_FILE).write_bytes(b"x")
    trainer.ddp, trainer.world_size = True, 2
    seen = {}
    monkeypatch.setattr(ut.subprocess, "run", lambda cmd, check=True: seen.setdefault("cmd", cmd))
    trainer.train()
    assert "cmd" in seen and (trainer.wdir / RESUME_FILE).exists()
    assert trainer.resume is False  # restored after the launch


def test_failed_rank_is_a_clear_error(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache, monkeypatch, tiny_train, trainer_for
) -> None:
    import ultralytics.engine.trainer as ut
    from dinocache.train.context import TrainError

    def rank_fails(cmd, check=True):
        raise subprocess.CalledProcessError(1, cmd)

    trainer = trainer_for(small_cfg(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache))
    trainer.ddp, trainer.world_size = True, 2
    monkeypatch.setattr(ut.subprocess, "run", rank_fails)
    with pytest.raises(TrainError, match=r"a DDP rank exited with code 1 \(its error is printed above\)"):
        trainer.train()


def test_rank_handoff_roundtrip_and_callbacks_once(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache, tiny_train, trainer_for
) -> None:
    """What a rank does with the pickled state: config and context back, our callback registered once."""
    import cloudpickle
    from dinocache.train.trainer import DinoOBBTrainer, apply_curriculum

    cfg = small_cfg(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache)
    parent = trainer_for(cfg)
    parent.callbacks[ddp.HANDOFF_EVENT].append(ddp.make_handoff(parent))
    state = cloudpickle.loads(cloudpickle.dumps({"args": vars(parent.args), "callbacks": parent.callbacks}))
    from ultralytics.utils import DEFAULT_CFG_DICT

    rank = DinoOBBTrainer(
        cfg={**DEFAULT_CFG_DICT, "save_dir": ""}, overrides=state["args"], _callbacks=state["callbacks"]
    )
    assert to_dict(rank.dino) == to_dict(cfg)
    assert rank.ctx.cache_path == str(feature_cache)
    assert rank.ctx.teacher is None  # online mode: every rank loads its own teacher on its own GPU
    assert torch.equal(rank.ctx.channel_mean, parent.ctx.channel_mean)
    assert rank.callbacks["on_train_epoch_start"].count(apply_curriculum) == 1
    assert ddp.find_handoff(rank.callbacks) is None


# -- rank-0 rules ---------------------------------------------------------------------------------------------
def test_only_rank0_writes(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache, monkeypatch, tiny_train, trainer_for
) -> None:
    import ultralytics.engine.trainer as ut
    import ultralytics.utils as uu
    from dinocache.train import eval_hooks
    from dinocache.train import trainer as tr

    for mod in (ut, uu, tr):
        monkeypatch.setattr(mod, "RANK", 1)
    cfg = small_cfg(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache)
    t = trainer_for(cfg)
    assert not (t.save_dir / "dinocache_args.yaml").exists() and not (t.save_dir / "args.yaml").exists()
    # grading, best_geo.pt, viz and logging: rank 0 only (returns before touching the trainer)
    assert eval_hooks.after_save_model(object()) is None
    # the augmented-sample viz copy is taken on rank 0 only
    b = {
        "img": torch.zeros(2, 3, 128, 128, dtype=torch.uint8),
        "teacher_feat": torch.zeros(2, 8, 8, 8, dtype=torch.float16),
        "teacher_valid": torch.ones(2, 8, 8),
    }
    t.epoch = 0
    t.preprocess_batch(b)
    assert t.aug_viz is None
    monkeypatch.setattr(tr, "RANK", 0)
    t.preprocess_batch(
        {
            "img": torch.zeros(2, 3, 128, 128, dtype=torch.uint8),
            "teacher_feat": torch.zeros(2, 8, 8, 8, dtype=torch.float16),
            "teacher_valid": torch.ones(2, 8, 8),
        }
    )
    assert t.aug_viz is not None


# -- device refusal -------------------------------------------------------------------------------------------
def test_more_gpus_than_exist_refused(
    tmp_path, demo_data, tiny_teacher_dir, feature_cache, monkeypatch, tiny_train
) -> None:
    from dinocache.train.run import train

    from dinocache.core.config import ConfigError

    cfg = small_cfg(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache, device="0,1")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        with pytest.raises(ConfigError, match=rf"needs 2 CUDA GPUs but this machine has {n} CUDA GPU"):
            train(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"has 1 CUDA GPU \(0\.\.0\); GPU 1 does not exist"):
        train(cfg)
    assert not (tmp_path / "artifacts").exists()  # refused before anything was written


def test_cli_names_gpu_count(tmp_path, capsys, monkeypatch) -> None:
    from dinocache.train.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "c.json").write_text("{}")
    rc = main(["--config", str(tmp_path / "c.json"), "device=0,1", "batch=4", f"artifacts_root={tmp_path}"])
    assert rc == 2
    assert "this machine has 0 CUDA GPUs" in capsys.readouterr().err


def test_handoff_carries_every_context_field(tmp_path: Path) -> None:
    """The DDP handoff round trip (cloudpickle, as Ultralytics' launcher state) gives a rank the parent's
    TeacherContext field for field, multi-teacher terms included; only the loaded online teacher stays home."""
    import dataclasses
    from types import SimpleNamespace

    import cloudpickle
    from dinocache.train.context import DistillTerm, TeacherContext

    terms = tuple(
        DistillTerm(
            name=n,
            loss_name=f"d_{n}",
            layers=layers,
            channels=d,
            object_weight=1.0,
            background_weight=0.5,
            loss="mse",
            cache_path=f"/c.zarr/teachers/{n}",
            cell_px=cell,
            grid=(128 // cell, 128 // cell),
            offset=off,
            factor=cell // 16,
            mean=tuple(float(i) for i in range(d)),
            std=(1.5,) * d,
        )
        for n, layers, d, cell, off in (("dino", (19,), 3, 16, 0), ("conv", (16, 19), 2, 32, 3))
    )
    ctx = TeacherContext(
        dataset_root=tmp_path,
        terms=terms,
        packed=True,
        cache_path="/c.zarr",
        channel_mean=torch.zeros(5),
        channel_std=torch.ones(5),
        pca={"components": torch.eye(5)},
        teacher=object(),
    )
    parent = SimpleNamespace(
        ctx=ctx, dino=TrainConfig(), resume_state=None, wdir=tmp_path / "weights", save_dir=tmp_path
    )
    h = cloudpickle.loads(cloudpickle.dumps(ddp.make_handoff(parent)))
    cfg, got, state = ddp.unpack_handoff(h)
    assert to_dict(cfg) == to_dict(TrainConfig()) and state is None
    assert parent.ctx is ctx and ctx.teacher is not None  # the parent keeps its teacher
    for f in dataclasses.fields(TeacherContext):
        a, b = getattr(ctx, f.name), getattr(got, f.name)
        if f.name == "teacher":
            assert b is None  # each rank loads its own online teacher on its own GPU
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f.name
        elif f.name == "pca":
            assert torch.equal(a["components"], b["components"])
        else:
            assert a == b, f.name
    assert got.terms[1].layers == (16, 19) and got.cell_px == 16
