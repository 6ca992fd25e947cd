"""The seed's trainer API as its users type it: DinoOBBTrainer(config=..., device=...) beside the positional
form, and train(data_yaml_path=..., epochs=..., callbacks=[...]) overriding the config for that call."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from dinocache.train.trainer import add_callbacks

SEEN: list[tuple[str, int]] = []


def eval_callback(trainer) -> None:  # the seed's bare function: runs after each epoch's validation
    SEEN.append(("eval_callback", int(trainer.epoch)))


def wandb_callback(trainer) -> None:
    SEEN.append(("wandb_callback", int(trainer.epoch)))


def on_train_end(trainer) -> None:  # named after an Ultralytics event: runs at that event
    SEEN.append(("on_train_end", int(trainer.epoch)))


def test_seed_keyword_form_and_train_overrides(tmp_path: Path, demo_data: Path, cfg_for) -> None:
    from dinocache import DinoOBBTrainer

    SEEN.clear()
    other = tmp_path / "other"
    shutil.copytree(demo_data.parent, other)
    train_config = cfg_for(tmp_path, demo_data, epochs=5, name="")
    trainer = DinoOBBTrainer(config=train_config, device="cpu")
    first_dir = trainer.save_dir
    trainer.train(
        data_yaml_path=other / demo_data.name,
        epochs=1,
        callbacks=[eval_callback, wandb_callback, on_train_end],
    )
    # the call's values won over the config's; the run folder is the one the constructor made
    assert trainer.epochs == 1 and trainer.dino.epochs == 1
    assert Path(trainer.args.data) == (other / demo_data.name).resolve()
    assert trainer.save_dir == first_dir
    assert len(list(first_dir.parent.parent.iterdir())) == 1  # no second run folder
    assert (trainer.save_dir / "weights" / "last.pt").is_file()
    assert [e for n, e in SEEN if n == "eval_callback"][:1] == [0]
    assert [n for n, _ in SEEN].count("wandb_callback") >= 1
    assert [n for n, _ in SEEN].count("on_train_end") == 1


def test_positional_form_still_works_and_config_given_twice_is_refused(
    tmp_path: Path, demo_data: Path, cfg_for
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


# train/loss_dfl too when the model has a DFL head (YOLO26 has none: its loss items are box, cls, angle)
SEED_METRICS = (
    "train/loss_box",
    "train/loss_cls",
    "train/loss_angle",
    "val/precision",
    "val/recall",
    "val/map50",
)


def test_seed_metric_names_beside_ultralytics_and_logger_keys(
    tmp_path: Path, demo_data: Path, cfg_for
) -> None:
    """The seed's dashboard names reach TensorBoard and W&B next to Ultralytics' own; results.csv keeps
    Ultralytics' columns; wandb_entity / wandb_mode / tensorboard_enabled are keys of their own."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dinocache import DinoOBBTrainer

    cfg = cfg_for(
        tmp_path,
        demo_data,
        wandb_enabled=True,
        wandb_mode="offline",
        wandb_entity="my-team",
        wandb_project="tea-ai-detector",
        wandb_system_metrics=False,
        tensorboard_enabled=True,
        epochs=1,
        extra={"plots": False},  # validation on: the val/ names need Ultralytics' metrics
    )
    t = DinoOBBTrainer(config=cfg, device="cpu")
    t.train()
    ea = EventAccumulator(str(t.save_dir / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {*SEED_METRICS, "val/map50_95", "train/box_loss", "metrics/mAP50(B)"} <= tags, sorted(tags)
    a, b = ea.Scalars("val/map50_95"), ea.Scalars("metrics/mAP50-95(B)")
    assert [(e.step, e.value) for e in a] == [(e.step, e.value) for e in b]
    head = (t.save_dir / "results.csv").read_text().splitlines()[0]
    assert "train/box_loss" in head and "train/loss_box" not in head
    assert list((t.save_dir / "wandb").glob("offline-run-*"))  # wandb_mode=offline honoured


def test_wandb_system_metrics_on_unless_switched_off(tmp_path: Path, monkeypatch) -> None:
    import wandb
    from dinocache.grade.logging import RunLogger

    seen = []
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.append(kw) or object())
    RunLogger(tmp_path / "a", {"wandb_mode": "offline", "tensorboard_enabled": False})
    RunLogger(
        tmp_path / "b", {"wandb_mode": "offline", "tensorboard_enabled": False, "wandb_system_metrics": False}
    )
    RunLogger(tmp_path / "c", {"wandb_mode": "offline", "tensorboard_enabled": False, "wandb_entity": "team"})
    assert [kw["settings"].x_disable_stats for kw in seen] == [False, True, False]
    assert seen[0]["entity"] is None and seen[2]["entity"] == "team"
    assert not (tmp_path / "a" / "tensorboard").exists()  # tensorboard_enabled=false: no event files
    RunLogger(tmp_path / "d", {"wandb_enabled": False}).close()
    assert (tmp_path / "d" / "tensorboard").is_dir()


class _Lines(logging.Handler):
    """Ultralytics' LOGGER does not propagate (caplog can't see it): collect its records directly."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_records():
    import ultralytics.utils  # noqa: F401  (its import sets the level: set ours after it)

    h = _Lines()
    lg = logging.getLogger("ultralytics")
    level = lg.level
    lg.setLevel(logging.INFO)
    lg.addHandler(h)
    yield h.records
    lg.removeHandler(h)
    lg.setLevel(level)


def test_stage_a_freeze_of_a_random_student_is_one_warning(
    tmp_path: Path, demo_data: Path, log_records, cfg_for
) -> None:
    """The seed's config (stage_a_freeze: 10) with the random default student: one warning says what is
    frozen and why it protects nothing."""
    from dinocache import DinoOBBTrainer

    t = DinoOBBTrainer(config=cfg_for(tmp_path, demo_data, stage_a_freeze=10), device="cpu")
    t.train()
    warned = [
        r.getMessage() for r in log_records if r.levelno == logging.WARNING and "Stage A" in r.getMessage()
    ]
    assert len(warned) == 1, warned
    assert "layers 0-9 frozen" in warned[0] and "starts from random weights" in warned[0]
    assert "protects no pretrained features" in warned[0]


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """A hub cache laid out as huggingface_hub writes it (refs/main -> snapshots/<revision>/...)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snap = folder / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for name, src in files.items():
        shutil.copy2(src, snap / name)


def test_hub_student_offline_error_then_cached_start(
    tmp_path: Path, demo_data: Path, monkeypatch, cfg_for
) -> None:
    import huggingface_hub.constants as hc
    from dinocache.train.hub import HubModelError
    from dinocache.train.run import train

    cache = tmp_path / "hub"
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        HubModelError, match=r"best\.pt of acme/yolo-obb is not in the Hugging Face cache"
    ) as e:
        train(cfg_for(tmp_path, demo_data, model="hf://acme/yolo-obb/best.pt"))
    assert f"place best.pt at {cache}/models--acme--yolo-obb/snapshots/<revision>/best.pt" in str(e.value)
    assert "HF_HUB_OFFLINE=1" in str(e.value)
    with pytest.raises(HubModelError, match=r"acme/yolo-obb is not in the Hugging Face cache"):
        train(cfg_for(tmp_path, demo_data, model="acme/yolo-obb"))
    assert not (tmp_path / "artifacts").exists()  # refused before anything is written

    from ultralytics.nn.tasks import OBBModel

    pt = tmp_path / "yolo26n-obb-pre.pt"
    import torch

    torch.save({"model": OBBModel("yolo26n-obb.yaml", nc=5, verbose=False).half(), "train_args": {}}, pt)
    _fake_hub_cache(cache, "acme/yolo-obb", {"yolo26n-obb-pre.pt": pt})
    t = train(cfg_for(tmp_path, demo_data, model="acme/yolo-obb", epochs=1, stage_a_ratio=1.0))
    assert t.args.freeze == 10  # a hub checkpoint is pretrained: Stage A freezes the backbone
    assert Path(t.args.model).is_relative_to(cache) and t.save_dir.parent.parent.parent.name == "yolo-obb"


PROJ_START: dict[str, torch.Tensor] = {}


def _keep_proj(trainer) -> None:  # on_train_start: the projections as initialised
    from ultralytics.utils.torch_utils import unwrap_model

    PROJ_START.update(
        {k: v.detach().clone() for k, v in unwrap_model(trainer.model).distill_proj.state_dict().items()}
    )


def test_one_teacher_distilled_from_two_student_layers(
    tmp_path: Path, demo_data: Path, tiny_teacher_dir: Path, feature_cache: Path, cfg_for
) -> None:
    """The seed's `dino_distill_layers: [a, b]`: both layers are hooked, each gets its own 1x1 projection to the
    teacher's D channels, the term is their mean, and both projections learn."""
    from dinocache.train.model import DistillOBBModel
    from dinocache.train.run import train
    from ultralytics.utils.torch_utils import unwrap_model

    m = DistillOBBModel("yolo26n-obb.yaml", nc=5, verbose=False, distill_layers=[16, 19], distill_channels=8)
    assert m.distill_layers == [16, 19] and [p.in_channels for p in m.distill_proj] == [64, 128]
    m.train()
    m.predict(torch.rand(2, 3, 64, 64))
    feats = [h.pop() for h in m.distill_hooks]
    assert [f.shape[-1] for f in feats] == [8, 4]  # strides 8 and 16 at 64 px
    batch = {
        "teacher_feat": torch.randn(2, 8, 4, 4),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4, 0.0]]),
        "batch_idx": torch.tensor([0.0]),
    }
    both = m.distill_loss(feats, batch)
    p0, p1 = m.distill_proj
    m.distill_proj = torch.nn.ModuleList([p0])
    a = m.distill_loss(feats[:1], batch)
    m.distill_proj = torch.nn.ModuleList([p1])
    b = m.distill_loss(feats[1:], batch)
    assert torch.allclose(both, (a + b) / 2)

    PROJ_START.clear()
    cfg = cfg_for(
        tmp_path,
        demo_data,
        teacher_source="cache",
        cache=str(feature_cache),
        dino_root=str(tiny_teacher_dir),
        imgsz=128,
        batch=4,
        nbs=4,
        epochs=1,
        dino_distill_channels=8,
        dino_distill_warmup_epochs=0,
        dino_distill_layers=[16, 19],
    )
    t = train(cfg, callbacks={"on_train_start": _keep_proj})
    end = unwrap_model(t.model).distill_proj.state_dict()
    assert set(PROJ_START) == set(end) and len(end) == 4  # two convs: weight + bias each
    assert all(not torch.equal(PROJ_START[k], end[k]) for k in end if k.endswith("weight"))
    import csv

    rows = list(csv.DictReader(open(t.save_dir / "results.csv")))
    d = float(next(v for k, v in rows[-1].items() if k.strip() == "train/distill"))
    assert 0 < d < 10
