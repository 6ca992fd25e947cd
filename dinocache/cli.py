"""The `dinocache` command: one entry with subcommands, like `yolo train` or `lightly-train pretrain`.

    dinocache demo-data dataset          # synthetic OBB dataset
    dinocache make-tiny-teacher dinov3   # tiny random DINOv3 saved with save_pretrained
    dinocache make-demo-teacher [OUT]    # small DINOv3 trained on demo data (shipped; prints its folder)
    dinocache precompute --config config.json [key=value ...]
    dinocache cache info PATH | dinocache cache verify PATH --data DATA | dinocache cache repair PATH --data DATA
    dinocache train --config config.json [key=value ...]
    dinocache pretrain --config config.json [key=value ...]
    dinocache compare --config config.json [modes=none,cache,online] [seeds=3] [epochs=N]

Each subcommand lives in its own package as `main(argv) -> int`; imports are lazy so `--help` is fast.
"""

from __future__ import annotations

import importlib
import os
import sys

# subcommand -> (module, help line). Modules expose `main(argv: list[str] | None) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("dinocache.demo", "run the whole pipeline on generated data and a tiny teacher"),
    "demo-data": ("dinocache.datatools.demo_data", "write a synthetic YOLO-OBB dataset"),
    "make-tiny-teacher": ("dinocache.teacher.tiny", "save a tiny random DINOv3 with save_pretrained"),
    "make-demo-teacher": (
        "dinocache.finetune.demo_teacher",
        "build (once, cached) a tiny DINOv3 fine-tuned on demo data: a teacher that knows",
    ),
    "precompute": ("dinocache.precompute.run", "run the teacher once per image into the Zarr cache"),
    "cache": ("dinocache.cache.cli", "inspect, verify or repair a feature cache (info, verify, repair)"),
    "train": ("dinocache.train.cli", "train the OBB student with cached/online/no distillation"),
    "check-dataset": (
        "dinocache.train.check_dataset",
        "validate the training data once (remembered by hash)",
    ),
    "pretrain": (
        "dinocache.train.pretrain",
        "distil cached teacher maps of unlabeled images into a student's backbone and neck",
    ),
    "compare": ("dinocache.compare", "A/B of distillation over seeds: none / cache / online (+ controls)"),
    "grade": ("dinocache.grade.cli", "geometric grade of a checkpoint on a val split"),
    "finetune-teacher": ("dinocache.finetune.train", "LoRA fine-tune the DINOv3 teacher"),
    "finetune-teachers": (
        "dinocache.finetune.task_teachers",
        "data-driven LoRA fine-tuning: boxes -> Grounding DINO, masks -> SAM",
    ),
    "merge-teacher": ("dinocache.finetune.merge", "merge LoRA adapters into a plain teacher folder"),
    "dataset": ("dinocache.datatools.cli", "inspect, validate, convert, tile, split datasets"),
    "augment": ("dinocache.datatools.augment", "offline characteristic-based augmentation"),
    "warp-check": ("dinocache.train.warp_check", "teacher equivariance gap per augmentation"),
}


def _usage() -> str:
    lines = ["usage: dinocache COMMAND [args...]", "", "commands:"]
    for name, (_, doc) in COMMANDS.items():
        lines.append(f"  {name:<18} {doc}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`dinocache COMMAND ...`"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from dinocache import __version__

        print(__version__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"dinocache: unknown command '{cmd}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")  # never let Ultralytics pip-install on our behalf
    from dinocache.core.logs import plain_output, quiet_ultralytics

    plain_output()
    quiet_ultralytics()
    if cmd == "cache" and rest[:1] == ["repair"]:
        # recomputing rows needs the teacher: precompute's floor, above the cache package
        from dinocache.precompute.run import repair_main

        return int(repair_main(rest[1:]) or 0)
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
