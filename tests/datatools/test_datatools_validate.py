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
        ("labels/train/im3.txt:1: error", "Ultralytics refuses it too"),  # box 1.1 wide: not a border cut
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
    assert main(["validate", str(yolo_data), "--fix", str(fixed)]) == 0  # the copy is clean
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


def _publish(root, name: str = "aerial8.yaml"):
    """A published Ultralytics-layout dataset: `<name>.yaml` (no data.yaml), some corners cut by the tile
    border up to 7 % outside [0, 1] (as in published aerial sets that Ultralytics trains as downloaded)."""
    (root / "data.yaml").rename(root / name)
    lt = root / "labels" / "train"
    (lt / "im0.txt").write_text(
        "0 -0.03 0.2 0.3 0.2 0.3 0.4 -0.03 0.4\n1 0.5 0.5 1.07 0.5 1.07 0.7 0.5 0.7\n"
        "0 0.4 -0.07 0.6 -0.05 0.6 0.2 0.4 0.2\n"
    )
    return root / name


def test_published_dataset_accepted_with_clipped_corners(yolo_data, tmp_path, capsys):
    from dinocache.datatools.augment import AugmentConfig, run

    root = yolo_data.parent
    _publish(root)
    for arg in (root, root / "aerial8.yaml"):  # the folder (its one dataset yaml) or the yaml itself
        assert main(["inspect", str(arg)]) == 0
        assert "clipped     3 label line(s)" in capsys.readouterr().out
    assert main(["validate", str(root)]) == 0  # warnings only
    cap = capsys.readouterr()
    assert "labels/train/im0.txt:1: warning: corner outside [0, 1] (min -0.03" in cap.out
    assert "labels/train/im0.txt:2: warning" in cap.out and "labels/train/im0.txt:3: warning" in cap.out
    assert "3 label line(s) have corners outside the image (up to 7.0%): clipped" in cap.err
    logs: list[str] = []
    out = run(AugmentConfig(data=str(root), out=str(tmp_path / "aug"), imgsz=64, views=1), log=logs.append)
    assert out.exists() and any("3 label line(s)" in m for m in logs)
    vals = [
        float(v)
        for f in (tmp_path / "aug" / "labels").rglob("*.txt")
        for ln in f.read_text().splitlines()
        for v in ln.split()[1:]
    ]
    assert vals and 0.0 <= min(vals) and max(vals) <= 1.0


def test_two_dataset_yamls_refused_naming_both(yolo_data, capsys):
    root = yolo_data.parent
    _publish(root)
    shutil.copy(root / "aerial8.yaml", root / "other.yaml")
    (root / "notes.yaml").write_text("author: someone\n")  # not a dataset file: ignored
    for cmd in ("inspect", "validate"):
        assert main([cmd, str(root)]) == 2
        err = capsys.readouterr().err
        assert "2 dataset files: aerial8.yaml, other.yaml" in err and "notes.yaml" not in err
    assert main(["inspect", str(root / "other.yaml")]) == 0  # naming the yaml itself resolves it


def test_fix_exit_code_follows_the_copy(yolo_data, tmp_path, capsys):
    """validate --fix exits 0 once the copy it wrote is clean, even though the input had errors."""
    root = yolo_data.parent
    lt = root / "labels" / "train"
    # the box's centre at x = -0.15: Ultralytics refuses it, an error
    (lt / "im1.txt").write_text("0 -0.6 0.1 0.3 0.1 0.3 0.3 -0.6 0.3\n")
    assert main(["validate", str(root)]) == 1
    assert "labels/train/im1.txt:1: error: box of the corners outside the image (centre -0.15" in (
        capsys.readouterr().out
    )
    assert main(["validate", str(root), "--fix", str(tmp_path / "fixed")]) == 0
    assert "0 errors" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "fixed")]) == 0


def test_light_resolver_matches_ultralytics(yolo_data):
    """`dataset inspect/validate` read the yaml without importing Ultralytics; its answer equals
    check_det_dataset's and get_img_files', and the label rule equals img2label_paths."""
    import subprocess
    import sys

    code = f"""
import sys
from pathlib import Path
from dinocache.core.data import load_data_yaml, split_images
from dinocache.datatools.formats import label_path
p = {str(yolo_data)!r}
a = load_data_yaml(p); fa = split_images(a, "train")
assert "ultralytics" not in sys.modules and "torch" not in sys.modules
from ultralytics.data.utils import img2label_paths
b = load_data_yaml(p); fb = split_images(b, "train")
keys = ("path", "train", "val", "names", "nc", "channels", "yaml_file")
assert {{k: str(a[k]) for k in keys}} == {{k: str(b[k]) for k in keys}}, (a, b)
assert fa == fb and len(fa) == 6
assert [str(label_path(f)) for f in fa] == img2label_paths([str(f) for f in fa])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_acceptance_is_ultralytics_own_check(yolo_data) -> None:
    """Every line Ultralytics' verify_image_label accepts is accepted here (clipped where outside), every line
    it refuses is an error: the same rule, checked against Ultralytics' own function."""
    import numpy as np
    from dinocache.datatools.formats import ultralytics_refuses
    from ultralytics.data.utils import verify_image_label

    root = yolo_data.parent
    image = next((root / "images" / "train").iterdir())
    label = root / "lab.txt"
    rng = np.random.default_rng(0)
    seen = {True: 0, False: 0}
    for _ in range(300):
        c = rng.uniform(-0.05, 1.05, 2)
        half = rng.uniform(0.01, 0.6, 2)
        xy = np.array(
            [c - half, [c[0] + half[0], c[1] - half[1]], c + half, [c[0] - half[0], c[1] + half[1]]]
        )
        xy = xy.astype(np.float32)  # Ultralytics reads float32
        label.write_text("0 " + " ".join(f"{v:.6f}" for v in xy.ravel()) + "\n")
        theirs = verify_image_label((str(image), str(label), "", False, 1, 0, 0, False))[1] is not None
        xy = np.array([float(f"{v:.6f}") for v in xy.ravel()], dtype=np.float32).reshape(4, 2)
        ours = not ultralytics_refuses(xy)
        assert ours == theirs, (xy.tolist(), ultralytics_refuses(xy))
        seen[theirs] += 1
    assert min(seen.values()) > 30  # both outcomes were tried
