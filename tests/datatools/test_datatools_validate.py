"""validate finds each planted defect at the right file:line; --fix writes a clean copy; inspect reports."""

from __future__ import annotations

import json
import shutil

from dinocache.datatools.cli import main


def _plant(root):
    lt = root / "labels" / "train"
    good = (lt / "im0.txt").read_text().splitlines()[0]
    (lt / "im0.txt").write_text(good + "\n0 0.1 0.1 0.2\n")  # line 2: field count
    (lt / "im1.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 abc 0.1 0.2\n" + good + "\n")  # line 1: not a number
    (lt / "im2.txt").write_text(
        good + "\n" + good + "\n7 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n"
    )  # 2 dup, 3 class
    (lt / "im3.txt").write_text(
        "1 0.1 0.1 1.2 0.1 1.2 0.3 0.1 0.3\n0 0.1 0.1 0.1 0.1 0.1 0.1 0.1 0.1\n"
    )  # range, degenerate
    (root / "images" / "train" / "im4.png").write_bytes(b"not an image")
    (lt / "orphan.txt").write_text(good + "\n")
    (lt / "im5.txt").unlink()
    shutil.copy(root / "images" / "train" / "im0.png", root / "images" / "val" / "leak.png")


def test_validate_reports_each_defect_with_file_and_line(yolo_data, capsys):
    root = yolo_data.parent
    assert main(["validate", str(yolo_data)]) == 0  # clean data passes
    capsys.readouterr()
    _plant(root)
    assert main(["validate", str(yolo_data)]) == 1
    out = capsys.readouterr().out.splitlines()
    expect = [
        ("labels/train/im0.txt:2: error", "fields"),
        ("labels/train/im1.txt:1: error", "not a number: 'abc'"),
        ("labels/train/im2.txt:2: warning", "duplicate of line 1"),
        ("labels/train/im2.txt:3: error", "class id 7 out of range"),
        ("labels/train/im3.txt:1: error", "out of [0, 1]"),
        ("labels/train/im3.txt:2: error", "degenerate"),
        ("images/train/im4.png: error", "cannot be decoded"),
        ("labels/train/orphan.txt: warning", "without an image"),
        ("images/train/im5.png: warning", "no label file"),
        ("images/val/leak.png: error", "same image as images/train/im0.png"),
    ]
    for where, what in expect:
        assert any(line.startswith(where) and what in line for line in out), (where, what, out)


def test_validate_fix_writes_clean_copy_and_keeps_input(yolo_data, tmp_path, capsys):
    root = yolo_data.parent
    _plant(root)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    fixed = tmp_path / "fixed"
    assert main(["validate", str(yolo_data), "--fix", str(fixed)]) == 1
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    capsys.readouterr()
    assert main(["validate", str(fixed / "data.yaml"), "--json"]) == 0
    problems = json.loads(capsys.readouterr().out)
    assert all(p["severity"] == "warning" for p in problems)
    assert not (fixed / "images" / "train" / "im4.png").exists()
    assert not (fixed / "images" / "val" / "leak.png").exists()
    # the out-of-range box was clipped into the image, not dropped
    im3 = (fixed / "labels" / "train" / "im3.txt").read_text().split()
    assert len(im3) == 9 and max(map(float, im3[1:])) <= 1.0


def test_inspect_json_and_table(yolo_data, capsys):
    assert main(["inspect", str(yolo_data), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "yolo-obb" and info["images"] == 8
    assert info["has_boxes"] and info["has_oriented_boxes"] and not info["has_masks"]
    assert sum(info["instances_per_class"].values()) == 16
    assert info["image_sizes"]["max"] == [160, 120]
    assert main(["inspect", str(yolo_data.parent)]) == 0
    assert "yolo-obb" in capsys.readouterr().out
    assert main(["inspect", "/nonexistent/data.yaml"]) == 2
