"""The seed's trainer API as its users type it: DinoOBBTrainer(config=..., device=...) beside the positional
form, and train(data_yaml_path=..., epochs=..., callbacks=[...]) overriding the config for that call."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dinocache.train.config import TrainConfig
from dinocache.train.trainer import add_callbacks

from dinocache.core.config import build

SEEN: list[tuple[str, int]] = []


def cfg_for(tmp_path: Path, demo_data: Path, **kw) -> TrainConfig:
    """A tiny CPU run without a teacher, eval, viz or W&B."""
    values = {
        "data": str(demo_data),
        "teacher_source": "none",
        "imgsz": 64,
        "epochs": 2,
        "stage_a_ratio": 0.5,
        "batch": 8,
        "nbs": 8,
        "warmup_epochs": 0,
        "workers": 0,
        "device": "cpu",
        "artifacts_root": str(tmp_path / "artifacts"),
        "name": "run",
        "eval_enabled": False,
        "dino_viz_enabled": False,
        "wandb_enabled": False,
        "extra": {"val": False, "plots": False},
        **kw,
    }
    return build(TrainConfig, values)


def eval_callback(trainer) -> None:  # the seed's bare function: runs after each epoch's validation
    SEEN.append(("eval_callback", int(trainer.epoch)))


def wandb_callback(trainer) -> None:
    SEEN.append(("wandb_callback", int(trainer.epoch)))


def on_train_end(trainer) -> None:  # named after an Ultralytics event: runs at that event
    SEEN.append(("on_train_end", int(trainer.epoch)))


def test_seed_keyword_form_and_train_overrides(tmp_path: Path, demo_data: Path) -> None:
    from dinocache import DinoOBBTrainer

    SEEN.clear()
    other = tmp_path / "other"
    shutil.copytree(demo_data.parent, other)
    train_config = cfg_for(tmp_path, demo_data, epochs=5, name="")
    trainer = DinoOBBTrainer(config=train_config, device="cpu")
    first_dir = trainer.save_dir
    trainer.train(
        data_yaml_path=other / demo_data.name,
        epochs=2,
        callbacks=[eval_callback, wandb_callback, on_train_end],
    )
    # the call's values won over the config's; the run folder is the one the constructor made
    assert trainer.epochs == 2 and trainer.dino.epochs == 2
    assert Path(trainer.args.data) == (other / demo_data.name).resolve()
    assert trainer.save_dir == first_dir
    assert len(list(first_dir.parent.parent.iterdir())) == 1  # no second run folder
    assert (trainer.save_dir / "weights" / "last.pt").is_file()
    assert [e for n, e in SEEN if n == "eval_callback"][:2] == [0, 1]
    assert [n for n, _ in SEEN].count("wandb_callback") >= 2
    assert [n for n, _ in SEEN].count("on_train_end") == 1


def test_positional_form_still_works_and_config_given_twice_is_refused(
    tmp_path: Path, demo_data: Path
) -> None:
    from dinocache import DinoOBBTrainer

    cfg = cfg_for(tmp_path, demo_data)
    with pytest.raises(TypeError, match="once"):
        DinoOBBTrainer(cfg, config=cfg)
    t = DinoOBBTrainer(cfg, device="cpu")
    assert t.dino.epochs == 2 and t.args.device == "cpu"
    with pytest.raises(TypeError, match="not TrainConfig keys"):
        t.train(epochz=3)


class _T:
    """Just enough of a trainer for add_callbacks."""

    def __init__(self) -> None:
        self.callbacks = {"on_fit_epoch_end": [], "on_train_end": [], "on_train_epoch_start": []}

    def add_callback(self, event, fn) -> None:
        self.callbacks[event].append(fn)


def test_callback_forms() -> None:
    t = _T()
    add_callbacks(t, {"on_train_end": eval_callback, "on_train_epoch_start": [wandb_callback]})
    add_callbacks(t, [("on_train_end", wandb_callback), eval_callback, on_train_end])
    assert t.callbacks["on_train_end"] == [eval_callback, wandb_callback, on_train_end]
    assert t.callbacks["on_fit_epoch_end"] == [eval_callback]
    assert t.callbacks["on_train_epoch_start"] == [wandb_callback]
    with pytest.raises(ValueError, match="on_train_end"):
        add_callbacks(t, {"on_train_ends": eval_callback})
    with pytest.raises(TypeError):
        add_callbacks(t, [42])
