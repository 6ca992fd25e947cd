"""The demo's closing table (mAP50, grade, time per teacher_source) and the three files it points at."""

from __future__ import annotations

import json
from pathlib import Path

from dinocache.demo import files_to_open, run_folder, run_summary, summary_table


def fake_run(folder: Path, map50: str, grades: list[str], viz: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.csv").write_text(
        "                  epoch,  metrics/mAP50(B)\n                      1,   0.01\n                      2,   "
        + map50
        + "\n"
    )
    (folder / "eval").mkdir()
    (folder / "eval" / "grades.csv").write_text(
        "epoch,precision,recall,f1,mean_iou,centre_err,angle_err,grade\n"
        + "".join(f"{i},0,0,0,,,,{g}\n" for i, g in enumerate(grades))
    )
    (folder / "eval" / "epoch_002" / "viz" / "val").mkdir(parents=True)
    (folder / "eval" / "epoch_002" / "viz" / "val" / "000001_panel.jpg").write_bytes(b"x")
    (folder / "eval" / "epoch_002" / "viz" / "val" / "000001_gt.jpg").write_bytes(b"x")
    (folder / "results.png").write_bytes(b"x")
    if viz:
        for e in ("epoch_001", "epoch_002"):
            (folder / "dino_viz" / e).mkdir(parents=True)
            (folder / "dino_viz" / e / "000001_v0_teacher.png").write_bytes(b"x")
            (folder / "dino_viz" / e / "000001_v0_student.png").write_bytes(b"x")
    return folder


def test_table_and_files(tmp_path: Path) -> None:
    trn = {"artifacts_root": str(tmp_path / "artifacts"), "model": "yolo26n-obb.yaml"}
    none = fake_run(run_folder(trn, "demo-x-none"), "0.12", ["0", "0.05"], viz=False)
    cache = fake_run(run_folder(trn, "demo-x-cache"), "0.2", ["0.1", "0.08"], viz=True)
    assert none == tmp_path / "artifacts" / "yolo26n-obb" / "runs" / "demo-x-none" / "train"
    runs = [run_summary("none", none, 61.0), run_summary("cache", cache, 75.0)]
    assert (runs[1]["map50"], runs[1]["grade"]) == (0.2, 0.1)
    table = summary_table(runs).splitlines()
    assert table[0].split()[:4] == ["teacher_source", "mAP50", "grade", "time"]
    assert table[2].split()[:4] == ["cache", "0.200", "0.100", "75s"]
    files = files_to_open(runs)
    assert "eval/epoch_002/viz/val/000001_panel.jpg" in files
    assert "dino_viz/epoch_002/000001_v0_teacher.png" in files
    assert str(cache / "results.png") in files
    # with the overlays' index.json the demo points at the representative panel and says so
    val = none / "eval" / "epoch_002" / "viz" / "val"
    (val / "000007_panel.jpg").write_bytes(b"x")
    samples = [{"files": {"panel": f"00000{i}_panel.jpg"}, "f1": f} for i, f in ((1, 0.0), (7, 0.5))]
    (val / "index.json").write_text(json.dumps({"samples": samples, "representative": "000007_panel.jpg"}))
    files = files_to_open([runs[0]])
    assert "eval/epoch_002/viz/val/000007_panel.jpg" in files and "a typical image (F1 0.50" in files
    missing = run_summary("none", tmp_path / "nope", 1.0)  # a run that wrote nothing: nan, not a crash
    assert "nan" in summary_table([missing])
