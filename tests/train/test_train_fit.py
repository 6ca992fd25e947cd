"""The detector run logs the feature fit (train/fit.py HeldOutFit) with each validation: fit/cos, fit/cos_shuf,
fit/gap, ... columns in results.csv, on the validation images; dino_fit_images=0 turns it off."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from dinocache.train.config import TrainConfig
from dinocache.train.fit import TRAIN_FIT_KEYS

from dinocache.core.config import build


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="") as f:
        return [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]


def _run(tiny_train, tmp_path: Path, demo_data: Path, teacher: Path, cache: Path, callbacks=None, **kw):
    from dinocache.train.run import train

    values = tiny_train(
        tmp_path,
        data=str(demo_data),
        dino_root=str(teacher),
        cache=str(cache),
        epochs=2,
        dino_distill_warmup_epochs=0,
        eval_enabled=False,
        dino_viz_enabled=False,
        wandb_enabled=False,
        name="run",
        extra={"plots": False, "mosaic": 0.0},
    )
    values.update(kw)
    return train(build(TrainConfig, values), callbacks=callbacks)


def test_cache_run_logs_the_fit_each_epoch(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache):
    # the cache holds the training split only: the validation images' maps come from the teacher, run once
    trainer = _run(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache)
    rows = _rows(Path(trainer.save_dir))
    assert len(rows) == 2
    for r in rows:
        for k in TRAIN_FIT_KEYS:
            assert k in r
        cos, shuf, gap = (float(r[k]) for k in ("fit/cos", "fit/cos_shuf", "fit/gap"))
        assert all(math.isfinite(x) and -1.0 <= x <= 1.0 for x in (cos, shuf))
        assert math.isclose(gap, cos - shuf, abs_tol=2e-5)  # results.csv keeps 5 significant digits
        assert math.isfinite(float(r["fit/cos_obj"]))  # the validation images have labels: objects apart
    # the maps were gathered once and the teacher released: the cache-mode run holds no teacher afterwards
    assert trainer._teacher is None
    assert trainer._fit._batches and all("fit_teacher" in b for b in trainer._fit._batches)


def test_fit_columns_stay_aligned_when_the_first_epoch_skips_validation(
    tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache
):
    """`dinocache compare val_every=N` validates only some epochs: results.csv's header then comes from a row
    without validation, and the validated rows must put each value under its own column."""

    def validate_last_only(trainer) -> None:  # on_train_epoch_end, as compare's val_every does it
        trainer.args.val = trainer.epoch + 1 == trainer.epochs

    trainer = _run(
        tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache,
        callbacks={"on_train_epoch_end": [validate_last_only]},
    )  # fmt: skip
    first, last = _rows(Path(trainer.save_dir))
    assert float(first["fit/cos"]) == 0.0  # before the first validation, as Ultralytics' metrics
    cos, shuf, gap = (float(last[k]) for k in ("fit/cos", "fit/cos_shuf", "fit/gap"))
    assert -1.0 <= cos <= 1.0 and -1.0 <= shuf <= 1.0 and math.isclose(gap, cos - shuf, abs_tol=2e-5)
    assert float(last["val/box_loss"]) > 0 and float(last["metrics/mAP50(B)"]) >= 0


def test_fit_logging_off(tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache):
    trainer = _run(
        tiny_train, tmp_path, demo_data, tiny_teacher_dir, feature_cache, epochs=1, dino_fit_images=0
    )
    assert trainer._fit is None
    assert not any(k.startswith("fit/") for k in _rows(Path(trainer.save_dir))[0])


def test_fit_images_must_not_be_negative(demo_data):
    import pytest

    from dinocache.core.config import ConfigError

    with pytest.raises(ConfigError, match="dino_fit_images"):
        build(TrainConfig, {"data": str(demo_data), "dino_fit_images": -1})
