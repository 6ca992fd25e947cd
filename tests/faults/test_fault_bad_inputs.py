"""Bad-input catalogue per command (validate, augment, convert, split, tile, verify, train, finetune-teacher,
merge-teacher): each case must end with a clear error naming the file/line/key, never a traceback or a
silent exit 0. Damage to caches: test_fault_cache_damage.py; precompute: test_fault_precompute.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest
import yaml

from tests.faults.conftest import no_run_folder

Case = Callable[
    [Path, Path, Path], tuple[list[str], list[str]]
]  # (data.yaml, cache, tmp) -> (argv, must name)


def _img(data: Path, i: int) -> Path:
    return data.parent / "images" / "train" / f"{i:06d}.png"


def _lab(data: Path, i: int) -> Path:
    return data.parent / "labels" / "train" / f"{i:06d}.txt"


def truncated_jpeg(data: Path) -> Path:
    src = _img(data, 3)
    jpg = src.with_suffix(".jpg")
    cv2.imwrite(str(jpg), cv2.imread(str(src)))
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    src.unlink()
    return jpg


def set_line(data: Path, i: int, line: str) -> None:
    lines = _lab(data, i).read_text().splitlines()
    _lab(data, i).write_text("\n".join([line, *lines[1:]]) + "\n")


def drop_key(data: Path, key: str) -> None:
    d = yaml.safe_load(data.read_text())
    d.pop(key)
    data.write_text(yaml.safe_dump(d))


# -- dataset validate: exit 1 with file:line, or 2 for an unreadable input --------------------------------------
def v_truncated(data, store, tmp):
    truncated_jpeg(data)
    return [str(data)], ["images/train/000003.jpg", "cannot be decoded"]


def v_seven_fields(data, store, tmp):
    set_line(data, 2, "0 0.1 0.1 0.5 0.1 0.5 0.5")
    return [str(data)], ["labels/train/000002.txt:1", "7 fields"]


def v_no_train(data, store, tmp):
    drop_key(data, "train")
    return [str(data)], ["'train'"]


def v_no_names(data, store, tmp):
    drop_key(data, "names")
    return [str(data)], ["names"]


def v_not_number(data, store, tmp):
    set_line(data, 1, "0 0.1 0.1 0.5 abc 0.5 0.5 0.1 0.5")
    return [str(data)], ["labels/train/000001.txt:1", "abc"]


def v_class_range(data, store, tmp):
    set_line(data, 1, "9 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5")
    return [str(data)], ["labels/train/000001.txt:1", "class id 9"]


def v_far_outside(data, store, tmp):
    set_line(data, 1, "0 0.1 0.1 1.5 0.1 1.5 0.5 0.1 0.5")
    return [str(data)], ["labels/train/000001.txt:1", "outside"]


def v_zero_area(data, store, tmp):
    set_line(data, 1, "0 0.1 0.1 0.1 0.1 0.1 0.1 0.1 0.1")
    return [str(data)], ["labels/train/000001.txt:1", "zero area"]


def v_nan(data, store, tmp):
    set_line(data, 1, "0 nan 0.1 0.5 0.1 0.5 0.5 0.1 0.5")
    return [str(data)], ["labels/train/000001.txt:1", "non-finite"]


def v_leak(data, store, tmp):
    val = sorted((data.parent / "images" / "val").glob("*.png"))[0]
    val.write_bytes(_img(data, 0).read_bytes())
    return [str(data)], ["leaks between splits"]


def v_missing_yaml(data, store, tmp):
    return [str(tmp / "nope" / "data.yaml")], ["nope"]


def v_bad_yaml(data, store, tmp):
    data.write_text("train: [unclosed\n")
    return [str(data)], ["data.yaml"]


def v_undecodable(data, store, tmp):
    _img(data, 4).write_bytes(b"not an image at all")
    return [str(data)], ["images/train/000004.png"]


def latin1_yaml(data: Path) -> Path:
    """data.yaml re-saved as Latin-1 with a class name that is not ASCII (a Windows editor's default)."""
    d = yaml.safe_load(data.read_text())
    d["names"] = (
        {**d["names"], 0: "caf\u00e9"} if isinstance(d["names"], dict) else ["caf\u00e9", *d["names"][1:]]
    )
    data.write_bytes(yaml.safe_dump(d, allow_unicode=True).encode("latin-1"))
    return data


VALIDATE: dict[str, Case] = {
    "Latin-1 data.yaml": lambda d, s, t: ([str(latin1_yaml(d))], ["data.yaml", "UTF-8"]),
    "truncated JPEG": v_truncated,
    "7-field label line (3 corners)": v_seven_fields,
    "data.yaml without train": v_no_train,
    "data.yaml without names": v_no_names,
    "non-number in a label": v_not_number,
    "class id out of range": v_class_range,
    "corner far outside [0, 1]": v_far_outside,
    "zero-area box": v_zero_area,
    "NaN coordinate": v_nan,
    "same image in train and val": v_leak,
    "missing data.yaml": v_missing_yaml,
    "invalid YAML": v_bad_yaml,
    "undecodable image": v_undecodable,
}


@pytest.mark.parametrize("name", list(VALIDATE))
def test_validate(name: str, work, tmp_path, faults) -> None:
    from dinocache.datatools.cli import main

    data, store = work
    argv, must = VALIDATE[name](data, store, tmp_path)
    faults.expect_clear("dataset validate", name, main, ["validate", *argv], must)


# -- augment ---------------------------------------------------------------------------------------------------
def a_cfg(tmp: Path, data: Path, **kw) -> list[str]:
    p = tmp / "aug.json"
    p.write_text(json.dumps({"augment": {"data": str(data), "out": str(tmp / "aug"), **kw}}))
    return ["--config", str(p)]


AUGMENT: dict[str, Case] = {
    "truncated JPEG": lambda d, s, t: (truncated_jpeg(d) and a_cfg(t, d), ["000003.jpg"]),
    "7-field label line": lambda d, s, t: (
        set_line(d, 2, "0 0.1 0.1 0.5 0.1 0.5 0.5") or a_cfg(t, d),
        ["000002.txt"],
    ),
    "missing data.yaml": lambda d, s, t: (a_cfg(t, t / "nope.yaml"), ["nope.yaml"]),
    "unknown key": lambda d, s, t: (a_cfg(t, d, viewz=2), ["viewz"]),
    "unknown characteristic": lambda d, s, t: (a_cfg(t, d, characteristics=["shiny_gold"]), ["shiny_gold"]),
    "Latin-1 data.yaml": lambda d, s, t: (a_cfg(t, latin1_yaml(d)), ["data.yaml", "UTF-8"]),
    "--config is a folder": lambda d, s, t: (["--config", str(t)], [str(t), "folder"]),
}


@pytest.mark.parametrize("name", list(AUGMENT))
def test_augment(name: str, work, tmp_path, faults) -> None:
    from dinocache.datatools.augment import main

    data, store = work
    argv, must = AUGMENT[name](data, store, tmp_path)
    faults.expect_clear("augment", name, main, argv, must)
    assert not (tmp_path / "aug" / "data.yaml").exists()  # nothing half-written


# -- convert / split / tile -------------------------------------------------------------------------------------
def coco_bad_json(d, s, t):
    (t / "train.json").write_text('{"images": [')
    return ["convert", str(t / "train.json"), "--from", "coco", "--out", str(t / "o")], ["train.json"]


def coco_bad_category(d, s, t):
    img = _img(d, 0)
    doc = {
        "images": [{"id": 1, "file_name": img.name, "width": 128, "height": 128}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10]}],
        "categories": [{"id": 1, "name": "a"}],
    }
    j = img.parent / "train.json"  # file_name is relative to the JSON's folder
    j.write_text(json.dumps(doc))
    return ["convert", str(j), "--from", "coco", "--out", str(t / "o")], ["train.json", "7"]


def dota_bad_line(d, s, t):
    root = t / "dota"
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), cv2.imread(str(_img(d, 0))))
    (root / "labelTxt" / "a.txt").write_text("1 1 50 1 50 50 plane 0\n")  # 7 numbers
    return ["convert", str(root), "--from", "dota", "--out", str(t / "o")], ["a.txt"]


CONVERT: dict[str, Case] = {
    "missing source": lambda d, s, t: (
        ["convert", str(t / "nope"), "--from", "dota", "--out", str(t / "o")],
        ["nope"],
    ),
    "COCO JSON not JSON": coco_bad_json,
    "COCO unknown category id": coco_bad_category,
    "DOTA line with 7 numbers": dota_bad_line,
    "out exists": lambda d, s, t: (
        ["convert", str(d.parent), "--from", "yolo", "--out", str(d.parent)],
        [str(d.parent.name)],
    ),
}
SPLIT: dict[str, Case] = {
    "ratios not summing to 1": lambda d, s, t: (
        ["split", str(d), "--out", str(t / "o"), "--ratios", "0.5,0.2,0.1"],
        ["ratios"],
    ),
    "ratios not numbers": lambda d, s, t: (
        ["split", str(d), "--out", str(t / "o"), "--ratios", "a,b,c"],
        ["ratios"],
    ),
    "missing data": lambda d, s, t: (["split", str(t / "nope.yaml"), "--out", str(t / "o")], ["nope.yaml"]),
    "Latin-1 data.yaml": lambda d, s, t: (
        ["split", str(latin1_yaml(d)), "--out", str(t / "o")],
        ["data.yaml", "UTF-8"],
    ),
}
TILE: dict[str, Case] = {
    "imgsz 0": lambda d, s, t: (["tile", str(d), "--out", str(t / "o"), "--imgsz", "0"], ["imgsz"]),
    "overlap 1": lambda d, s, t: (["tile", str(d), "--out", str(t / "o"), "--overlap", "1"], ["overlap"]),
    "min-visible 2": lambda d, s, t: (["tile", str(d), "--out", str(t / "o"), "--min-visible", "2"], ["min"]),
    "missing data": lambda d, s, t: (["tile", str(t / "nope.yaml"), "--out", str(t / "o")], ["nope.yaml"]),
}


@pytest.mark.parametrize(
    "cmd,name",
    [("convert", k) for k in CONVERT] + [("split", k) for k in SPLIT] + [("tile", k) for k in TILE],
)
def test_dataset_tools(cmd: str, name: str, work, tmp_path, faults) -> None:
    from dinocache.datatools.cli import main

    data, store = work
    argv, must = {"convert": CONVERT, "split": SPLIT, "tile": TILE}[cmd][name](data, store, tmp_path)
    faults.expect_clear(f"dataset {cmd}", name, main, argv, must)


# -- cache verify / info ------------------------------------------------------------------------------------------
VERIFY: dict[str, Case] = {
    "no cache there": lambda d, s, t: (["verify", str(t / "nope.zarr"), "--data", str(d)], ["nope.zarr"]),
    "cache path is a plain folder": lambda d, s, t: (
        ["verify", str(d.parent), "--data", str(d)],
        [d.parent.name],
    ),
    "missing data.yaml": lambda d, s, t: (["verify", str(s), "--data", str(t / "nope.yaml")], ["nope.yaml"]),
    "unknown split": lambda d, s, t: (["verify", str(s), "--data", str(d), "--split", "tset"], ["tset"]),
    "missing teacher": lambda d, s, t: (
        ["verify", str(s), "--data", str(d), "--dino-root", str(t / "noteacher")],
        ["noteacher"],
    ),
    "bad storage options": lambda d, s, t: (["info", str(s), "--storage-options", "{nope"], ["storage"]),
}


@pytest.mark.parametrize("name", list(VERIFY))
def test_verify_bad_inputs(name: str, work, tmp_path, faults) -> None:
    from dinocache.cache.cli import main

    data, store = work
    argv, must = VERIFY[name](data, store, tmp_path)
    faults.expect_clear("cache verify", name, main, argv, must)


# -- train (all refused before the first step) -------------------------------------------------------------------
def t_cfg(tmp: Path, data: Path, store: Path, teacher: Path, **kw) -> list[str]:
    sec = {
        "data": str(data),
        "dino_root": str(teacher),
        "cache": str(store),
        "imgsz": 128,
        "epochs": 1,
        "batch": 4,
        "workers": 0,
        "device": "cpu",
        "dino_distill_channels": 8,
        "artifacts_root": str(tmp / "artifacts"),
        "name": "x",
        **kw,
    }
    p = tmp / "config.json"
    p.write_text(json.dumps({"train": sec}))
    return ["--config", str(p)]


TRAIN = {
    "device=cuda without a GPU": (["device=cuda"], ["device"]),
    "device=cuda:3": (["device=cuda:3"], ["device"]),
    "negative epochs": (["epochs=-1"], ["epochs"]),
    "imgsz not a multiple of 32": (["imgsz=100"], ["imgsz"]),
    "other imgsz than the cache": (["imgsz=160"], ["imgsz=128"]),
    "stage_a_ratio out of range (command line)": (["stage_a_ratio=2"], ["stage_a_ratio", "command line"]),
    "unknown key": (["epohcs=2"], ["epohcs"]),
    "missing cache": (["cache=/nonexistent/c.zarr"], ["c.zarr"]),
    "missing data.yaml": (["data=/nonexistent/data.yaml"], ["data.yaml"]),
    "too many distill channels": (["dino_distill_channels=64"], ["dino_distill_channels"]),
    "resume with nothing to resume": (["resume=true"], ["resume"]),
    "bad model file": (["model=nope.pt"], ["nope.pt"]),
    "lr0 zero": (["lr0=0"], ["lr0"]),
    "not a number": (["batch=four"], ["batch"]),
}


@pytest.mark.parametrize("name", list(TRAIN))
def test_train_bad_inputs(name: str, work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.train.cli import main

    data, store = work
    extra, must = TRAIN[name]
    argv = [*t_cfg(tmp_path, data, store, tiny_teacher_dir), *extra]
    r = faults.expect_clear("train", name, main, argv, must, intact=no_run_folder(tmp_path))
    assert r.rc == 2
    assert not list((tmp_path / "artifacts").rglob("train")), "a refused run left a run folder"


def _trian(data: Path, store: Path, tmp: Path, teacher: Path) -> list[str]:
    argv = t_cfg(tmp, data, store, teacher)
    p = Path(argv[1])
    p.write_text(p.read_text().replace('"train"', '"trian"'))
    return argv


TRAIN_FILES = {
    "--config is a folder": (lambda d, s, t, tch: ["--config", str(t)], ["folder"]),
    "misspelled section (trian)": (_trian, ["trian", "did you mean 'train'"]),
    '"batch": true in the file': (lambda d, s, t, tch: t_cfg(t, d, s, tch, batch=True), ["batch", "number"]),
}


@pytest.mark.parametrize("name", list(TRAIN_FILES))
def test_train_bad_config_files(name: str, work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.train.cli import main

    data, store = work
    make, must = TRAIN_FILES[name]
    argv = make(data, store, tmp_path, tiny_teacher_dir)
    r = faults.expect_clear("train", name, main, argv, must, intact=no_run_folder(tmp_path))
    assert r.rc == 2
    assert not list((tmp_path / "artifacts").rglob("train")), "a refused run left a run folder"


def test_range_error_names_the_command_line(work, tmp_path, tiny_teacher_dir, capsys) -> None:
    """A value given as key=value is reported as the command line's, one from the file as the file's."""
    from dinocache.train.cli import main

    data, store = work
    cfg = t_cfg(tmp_path, data, store, tiny_teacher_dir)
    assert main([*cfg, "stage_a_ratio=2"]) == 2
    err = capsys.readouterr().err
    assert "command line" in err and "config.json[train]" not in err
    cfg = t_cfg(tmp_path, data, store, tiny_teacher_dir, stage_a_ratio=2)
    assert main(cfg) == 2
    assert "config.json[train]" in capsys.readouterr().err


# -- finetune-teacher / merge-teacher -------------------------------------------------------------------------------
def f_cfg(tmp: Path, teacher: Path, **kw) -> list[str]:
    p = tmp / "ft.json"
    p.write_text(
        json.dumps({"finetune_teacher": {"dino_root": str(teacher), "project": str(tmp / "exp"), **kw}})
    )
    return ["--config", str(p), "device=cpu", "epochs=1", "imgsz=128"]


FINETUNE = {
    "no data given": (lambda d, t, tmp: f_cfg(tmp, t), ["data"]),
    "missing data.yaml": (lambda d, t, tmp: f_cfg(tmp, t, data=str(tmp / "nope.yaml")), ["nope.yaml"]),
    "missing teacher": (lambda d, t, tmp: f_cfg(tmp, tmp / "noteacher", data=str(d)), ["noteacher"]),
    "negative lr": (lambda d, t, tmp: f_cfg(tmp, t, data=str(d), lr=-1), ["lr"]),
    "unknown key": (lambda d, t, tmp: f_cfg(tmp, t, data=str(d), lora_rank=4), ["lora_rank"]),
    "unknown class": (lambda d, t, tmp: f_cfg(tmp, t, data=str(d), classes=["zebra"]), ["zebra"]),
}


@pytest.mark.parametrize("name", list(FINETUNE))
def test_finetune_bad_inputs(name: str, work, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.finetune.train import main

    data, store = work
    make, must = FINETUNE[name]
    faults.expect_clear("finetune-teacher", name, main, make(data, tiny_teacher_dir, tmp_path), must)


MERGE = {
    "missing adapter": lambda t, tmp: (
        ["--adapter", str(tmp / "noadapter"), "--out", str(tmp / "m")],
        ["noadapter"],
    ),
    "adapter is a plain folder": lambda t, tmp: (["--adapter", str(t), "--out", str(tmp / "m")], [t.name]),
    "out not empty": lambda t, tmp: (["--adapter", str(t), "--out", str(t.parent)], [t.parent.name]),
}


@pytest.mark.parametrize("name", list(MERGE))
def test_merge_bad_inputs(name: str, tmp_path, tiny_teacher_dir, faults) -> None:
    from dinocache.finetune.merge import main

    argv, must = MERGE[name](tiny_teacher_dir, tmp_path)
    faults.expect_clear("merge-teacher", name, main, argv, must)
