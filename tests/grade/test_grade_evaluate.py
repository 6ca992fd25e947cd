"""Evaluation on a split with a random YOLO26-n OBB, grades.csv / best_geo tracking, the grade CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from dinocache.grade.cli import main
from dinocache.grade.evaluate import EvalTracker, evaluate, load_split, read_obb_labels

from dinocache.core.data import DataError

IMGSZ = 128


@pytest.fixture(scope="module")
def random_model():
    from ultralytics.nn.tasks import OBBModel

    torch.manual_seed(0)
    return OBBModel("yolo26n-obb.yaml", nc=5, verbose=False)


@pytest.fixture(scope="module")
def weights(random_model, tmp_path_factory) -> Path:
    """A checkpoint in Ultralytics' layout (model + train_args) of the random model."""
    from copy import deepcopy

    p = tmp_path_factory.mktemp("w") / "random.pt"
    torch.save({"model": deepcopy(random_model).half(), "train_args": {"imgsz": IMGSZ, "task": "obb"}}, p)
    return p


def copy_data(demo_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(demo_data.parent, root)
    return root / "data.yaml"


def n_label_lines(data_yaml: Path) -> int:
    return sum(
        len([ln for ln in p.read_text().splitlines() if ln.strip()])
        for p in (data_yaml.parent / "labels" / "val").glob("*.txt")
    )


def test_labels_missing_file_and_malformed(tmp_path):
    assert len(read_obb_labels(tmp_path / "nope.txt", (10, 10))) == 0
    bad = tmp_path / "bad.txt"
    bad.write_text("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n0 0.5 0.5\n")
    with pytest.raises(DataError, match=r"bad.txt:2: 3 fields; expected 9"):
        read_obb_labels(bad, (10, 10))
    bad.write_text("x 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n")
    with pytest.raises(DataError, match=r"bad.txt:1: not a number"):
        read_obb_labels(bad, (10, 10))
    ok = tmp_path / "ok.txt"
    ok.write_text("2 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n\n")
    b = read_obb_labels(ok, (100, 200))  # (h, w): x scales by 200, y by 100
    assert b.cls.tolist() == [2]
    assert b.poly[0, 1].tolist() == pytest.approx([100.0, 10.0])


def test_load_split_and_missing_label(demo_data, tmp_path):
    data = copy_data(demo_data, tmp_path)
    samples = load_split(data, "val")
    assert len(samples) == 4 and sum(len(s.gt) for s in samples) == n_label_lines(data)
    assert samples[0].shape == (IMGSZ, IMGSZ)
    victim = next(s for s in samples if len(s.gt))
    victim.label.unlink()  # an image without a label file has no objects
    again = {s.stem: s for s in load_split(data, "val")}
    assert len(again[victim.stem].gt) == 0


def test_empty_val_split_is_a_clear_error(weights, demo_data, tmp_path, capsys):
    data = copy_data(demo_data, tmp_path)
    for p in (data.parent / "images" / "val").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="val"):
        load_split(data, "val")
    assert main(["--weights", str(weights), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "val" in err


def test_evaluate_in_memory_model(random_model, demo_data):
    before = {k: v.clone() for k, v in random_model.state_dict().items()}
    training = random_model.training
    res = evaluate(random_model, demo_data, IMGSZ, conf_thr=0.9, iou_thr=0.75, device="cpu")
    # a random model predicts nothing with conf >= 0.9: grade 0, no crash
    m = res.metrics
    assert m["grade"] == 0.0 and m["pred"] == 0 and m["gt"] == n_label_lines(demo_data)
    assert m["mean_iou"] is None
    # the model the trainer passes in is left untouched (the predictor fuses a copy)
    assert random_model.training == training
    assert all(torch.equal(before[k], v) for k, v in random_model.state_dict().items())
    # at conf 0 it predicts plenty; counts stay consistent
    res0 = evaluate(
        random_model, demo_data, IMGSZ, conf_thr=0.0, iou_thr=0.75, device="cpu", samples=res.samples
    )
    m0 = res0.metrics
    assert m0["pred"] > 0 and m0["tp"] + m0["fp"] == m0["pred"] and m0["tp"] + m0["fn"] == m0["gt"]
    assert len(res0.per_image) == len(res0.preds) == 4


def test_tracker_follows_best_grade(tmp_path):
    saved = []
    t = EvalTracker(tmp_path)
    grades = [0.0, 0.5, 0.3, 0.5, 0.7, 0.1]
    flags = [
        t.update(e + 1, {"grade": g, "f1": g, "mean_iou": None}, lambda p, e=e: saved.append((e + 1, p)))
        for e, g in enumerate(grades)
    ]
    assert flags == [True, True, False, True, True, False]  # ties count as better, like Ultralytics' best.pt
    assert [e for e, _ in saved] == [1, 2, 4, 5]
    assert saved[0][1] == tmp_path / "weights" / "best_geo.pt"
    assert (t.best_grade, t.best_epoch) == (0.7, 5)
    with open(tmp_path / "eval" / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "epoch",
        "precision",
        "recall",
        "f1",
        "mean_iou",
        "centre_err",
        "angle_err",
        "grade",
    ]
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5", "6"] and rows[0]["mean_iou"] == ""
    # a new tracker (resume) restores the best; re-evaluating epoch 5 drops rows 5 and 6
    t2 = EvalTracker(tmp_path)
    assert (t2.best_grade, t2.best_epoch) == (0.7, 5)
    assert t2.update(5, {"grade": 0.2}) is False
    assert (t2.best_grade, t2.best_epoch) == (0.5, 4)
    assert len(t2.rows) == 5


def test_cli_grade_json(weights, demo_data, tmp_path, capsys):
    rc = main(
        [
            "--weights",
            str(weights),
            "--data",
            str(demo_data),
            "--device",
            "cpu",
            "--json",
            "--viz",
            str(tmp_path / "viz"),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["imgsz"] == IMGSZ  # taken from the checkpoint's train_args
    assert out["grade"] == 0.0 and out["images"] == 4 and out["gt"] == n_label_lines(demo_data)
    assert (tmp_path / "viz" / "index.json").exists()
    # same numbers as the periodic evaluation of the same weights
    res = evaluate(weights, demo_data, IMGSZ, 0.9, 0.75, "cpu")
    assert {k: out[k] for k in res.metrics} == json.loads(json.dumps(res.metrics))


def test_cli_human_output(weights, demo_data, capsys):
    assert (
        main(["--weights", str(weights), "--data", str(demo_data), "--device", "cpu", "--conf", "0.0"]) == 0
    )
    assert "grade (F1)" in capsys.readouterr().out


def test_cli_bad_input(weights, demo_data, tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "missing.pt"), "--data", str(demo_data)]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert main(["--weights", str(weights), "--data", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    assert main(["--weights", str(weights), "--data", str(demo_data), "--iou", "0"]) == 2
    assert "iou" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert main(["--weights", str(junk), "--data", str(demo_data)]) == 2
    assert "junk.pt" in capsys.readouterr().err


def test_cli_grade_json_is_json_alone_with_ultralytics_verbose(weights, demo_data, tmp_path):
    """With Ultralytics' INFO lines on (YOLO_VERBOSE=True, a user's default), stdout of `grade --json` is one
    JSON document; the log lines go to stderr."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "YOLO_VERBOSE": "True"}
    cmd = [sys.executable, "-m", "dinocache", "grade", "--weights", str(weights), "--data", str(demo_data)]
    r = subprocess.run(
        [*cmd, "--device", "cpu", "--json", "--viz", str(tmp_path / "viz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # nothing but JSON
    assert out["images"] == 4 and "Fast image access" not in r.stdout + r.stderr
