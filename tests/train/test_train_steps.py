"""No silent non-training: the optimizer steps a run will make are computed before it starts (Ultralytics'
accumulation and warmup rule), a run of few steps warns with the fix, and each epoch line counts its steps;
a clean finish removes weights/resume.pt unless keep_resume=true."""

from __future__ import annotations

from pathlib import Path

from dinocache.train.config import TrainConfig
from dinocache.train.steps import few_steps_warning, planned_steps

from dinocache.core.config import build


def test_small_dataset_with_default_nbs_makes_one_step() -> None:
    # 8 training views, batch 4, 5 epochs, nbs 64, warmup_epochs 3: accumulate min(16, 10) = 10, and the
    # warmup's ramp lets exactly the first batch step (Ultralytics' run showed `updates: 1`)
    plan = planned_steps(n_batches=2, epochs=5, accumulate=10, warmup_iters=6)
    assert plan == [1, 0, 0, 0, 0]
    msg = few_steps_warning(plan, n_images=8, batch=4, nbs=64, accumulate=10, warmup_epochs=3)
    assert "makes 1 optimizer step(s) in 5 epoch(s)" in msg
    assert "nbs=4 (one optimizer step per batch" in msg and "warmup_epochs=0" in msg
    # the fix really fixes: one step per batch
    assert planned_steps(2, 5, 1, 0) == [2] * 5
    # a resumed run counts from its start epoch
    assert planned_steps(4, 3, 2, 0, start_epoch=1) == [2, 2]


def test_enough_steps_do_not_warn() -> None:
    # 1000 images, batch 16, nbs 64: 63 batches, a step per 4 -> ~16 per epoch, 1,500+ in 100 epochs
    plan = planned_steps(63, 100, 4, round(3 * 63))
    assert sum(plan) > 1500 and plan[-1] >= 15
    assert few_steps_warning(plan, 1000, 16, 64, 4, 3.0) == ""
    # one step per batch: a short per-epoch count is the data's size, only the total matters
    assert few_steps_warning([4] * 30, 16, 4, 4, 1, 0.0) == ""
    assert "more epochs" in few_steps_warning([4] * 5, 16, 4, 4, 1, 0.0)


def test_run_warns_and_epoch_lines_count_steps(tmp_path: Path, demo_data: Path, log_lines) -> None:
    """A real run: 16 images, batch 8, the default nbs 64 and warmup 3, 2 epochs -> 1 optimizer step."""
    from dinocache.train.run import train

    values = {
        "data": str(demo_data),
        "teacher_source": "none",
        "imgsz": 64,
        "epochs": 2,
        "batch": 8,
        "workers": 0,
        "device": "cpu",
        "artifacts_root": str(tmp_path / "artifacts"),
        "name": "run",
        "eval_enabled": False,
        "dino_viz_enabled": False,
        "wandb_enabled": False,
        "extra": {"val": False, "plots": False},
    }
    cfg = build(TrainConfig, values)
    assert cfg.nbs == 64 and cfg.warmup_epochs == 3.0  # the defaults, not set here
    trainer = train(cfg)
    assert trainer.planned_steps == [1, 0]
    warned = [m for m in log_lines if "optimizer step(s) in 2 epoch(s)" in m]
    assert len(warned) == 1 and "Fix: nbs=8" in warned[0], log_lines
    assert any("epoch 1/2: trained on 16 images, 1 optimizer step," in m for m in log_lines), log_lines
    assert any("epoch 2/2: trained on 16 images, 0 optimizer steps," in m for m in log_lines), log_lines
    # a clean finish removes weights/resume.pt (keep_resume=true keeps it) and says so
    assert not (Path(trainer.wdir) / "resume.pt").exists() and (Path(trainer.wdir) / "last.pt").exists()
    assert any("finished: removed resume.pt (keep_resume=true keeps it" in m for m in log_lines)
