"""Config plumbing: every Ultralytics train argument is a key, shared top-level keys, YAML values from the
command line (also through `just`), and each bad input named by key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dinocache.core.config import ConfigError, build, load, read_section

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Small:
    # an int
    n: int = 1
    # a path-like string
    name: str = "x"
    # a list
    layers: list[int] = field(default_factory=lambda: [19])
    # an optional number
    limit: float | None = None
    # a mapping
    opts: dict = field(default_factory=dict)


def test_values_from_strings_are_yaml_checked_by_type() -> None:
    c = build(Small, {}, cli={"n": "3", "name": "2024", "layers": "16,19", "limit": "none", "opts": "{a: 1}"})
    assert (c.n, c.name, c.layers, c.limit, c.opts) == (3, "2024", [16, 19], None, {"a": 1})
    assert build(Small, {}, cli={"layers": "[1, 2]"}).layers == [1, 2]
    with pytest.raises(ConfigError, match="n: .*integer"):
        build(Small, {}, cli={"n": "1.5"})
    with pytest.raises(ConfigError, match="n: expected a number"):
        build(Small, {"n": True})


def test_dict_override_with_a_syntax_error_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"opts: cannot parse '\{a: 1' as a YAML value"):
        build(Small, {}, cli={"opts": "{a: 1"})


def test_shared_top_level_keys_are_inherited_unless_overridden(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text(
        json.dumps({"imgsz": 320, "data": "d.yaml", "cache": "c.zarr", "train": {"imgsz": 64}, "augment": {}})
    )
    assert read_section(p, "train") == {"imgsz": 64, "data": "d.yaml", "cache": "c.zarr"}
    assert read_section(p, "augment", fields=["imgsz"]) == {
        "imgsz": 320
    }  # keys the section's class lacks: left out
    p.write_text(json.dumps({"imgz": 320, "train": {}}))
    with pytest.raises(ConfigError, match="unknown top-level key 'imgz' \\(did you mean 'imgsz'\\?\\)"):
        read_section(p, "train")


# -- TrainConfig: Ultralytics' arguments -------------------------------------------------------------------
def test_every_ultralytics_train_argument_is_a_key(tmp_path: Path) -> None:
    from dinocache.train.config import TrainConfig

    p = tmp_path / "config.json"
    p.write_text(json.dumps({"imgsz": 128, "train": {"patience": 5, "extra": {"hsv_h": 0.0}}}))
    over = ["patience=20", "close_mosaic=0", "batch=-1", "cos_lr=true", "degrees=5.5", "extra={fliplr: 0.0}"]
    cfg = load(TrainConfig, p, "train", over)
    assert cfg.imgsz == 128 and cfg.batch == -1  # shared key; AutoBatch
    assert cfg.extra == {
        "hsv_h": 0.0,
        "fliplr": 0.0,
        "patience": 20,
        "close_mosaic": 0,
        "cos_lr": True,
        "degrees": 5.5,
    }
    assert cfg.close_mosaic == 0


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("patience=abc", "patience: 'patience=abc' is of invalid type str"),
        ("fliplr=2", "fliplr: .*between 0.0 and 1.0"),
        ("cos_lr=maybe", "cos_lr: "),
        ("patiense=3", "unknown config key 'patiense' .*did you mean 'patience'"),
        ("dino_distil_channels=3", "did you mean 'dino_distill_channels'"),
        ("extra={close_mosaic: 0", "extra: cannot parse"),
        ("extra={mosiac: 0}", "extra: .*did you mean 'mosaic'"),
        ("batch=0", "batch: must be"),
        ("freeze=3", "unknown config key 'freeze'"),  # set by dinocache (stage_a_freeze)
    ],
)
def test_bad_ultralytics_keys_named(override: str, match: str) -> None:
    from dinocache.train.config import TrainConfig

    with pytest.raises(ConfigError, match=match):
        load(TrainConfig, None, "train", [override])


def test_close_mosaic_default_keeps_mosaic_for_most_of_a_short_run() -> None:
    from dinocache.train.config import TrainConfig

    assert [TrainConfig(epochs=e).close_mosaic for e in (6, 30, 128)] == [0, 3, 10]
    assert TrainConfig(epochs=30, extra={"close_mosaic": 7}).close_mosaic == 7


@pytest.mark.skipif(shutil.which("just", path=str(Path(sys.executable).parent)) is None, reason="no just")
def test_just_passes_a_dict_value_as_one_argument(tmp_path: Path) -> None:
    """`just train 'extra={close_mosaic: 0}'` reaches dinocache as one key=value (the shell no longer splits
    it); the bad `patience=abc` after it proves the dict was parsed first."""
    just = shutil.which("just", path=str(Path(sys.executable).parent))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"train": {"data": str(tmp_path / "d.yaml")}}))
    r = subprocess.run(
        [
            just,
            "--justfile",
            str(REPO / "justfile"),
            "config=" + str(cfg),
            "train",
            "extra={close_mosaic: 0}",
            "patience=abc",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "patience: 'patience=abc'" in r.stderr and "extra" not in r.stderr.split("patience")[0]


@dataclass
class Numbers:
    # a number that may be a fraction (Ultralytics' batch: 16 or 0.7 of the GPU)
    batch: int | float = 16
    # an optional count
    limit: int | None = None


@pytest.mark.parametrize("key", ["batch", "limit"])
def test_bool_refused_for_a_number_field_of_any_union(key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}: expected a number, got True"):
        build(Numbers, {key: True})
    with pytest.raises(ConfigError, match=f"{key}: .*'true'"):
        build(Numbers, {}, cli={key: "true"})


def test_train_batch_true_refused(tmp_path: Path) -> None:
    from dinocache.train.config import TrainConfig

    p = tmp_path / "config.json"
    p.write_text(json.dumps({"train": {"batch": True}}))
    with pytest.raises(ConfigError, match="batch: expected a number"):
        load(TrainConfig, p, "train")


def test_misspelled_section_refused_with_the_closest_name(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"trian": {"epochs": 3}, "_comment": {"ignored": 1}}))
    with pytest.raises(ConfigError, match=r"unknown section 'trian' \(did you mean 'train'\?\)"):
        read_section(p, "train")
    p.write_text(json.dumps({"train": {"epochs": 3}, "_comment": {"ignored": 1}}))
    assert read_section(p, "train") == {"epochs": 3}


def test_config_folder_and_non_utf8_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder"):
        read_section(tmp_path, "train")
    p = tmp_path / "config.json"
    p.write_bytes('{"train": {"name": "caf\u00e9"}}'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{p}: not UTF-8"):
        read_section(p, "train")


def test_storage_options_typo_never_echoed() -> None:
    from dinocache.precompute.run import PrecomputeConfig

    for text in ('{"secret": "hunter2-xyz", oops', '"hunter2-xyz"'):
        with pytest.raises(ConfigError, match="storage_options") as e:
            build(PrecomputeConfig, {}, cli={"storage_options": text})
        assert "hunter2" not in str(e.value)
