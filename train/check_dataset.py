"""`dinocache check-dataset --config config.json [key=value ...]`: validate the training data once.

`just train` depends on it (the seed's `train: check-dataset`). It resolves the dataset exactly as
`dinocache train` would (the `train` section plus overrides: `data=`, `dataset_root=`), then runs
`dinocache dataset validate` on it. A clean result is remembered by the dataset's fingerprint (sha256 over
data.yaml and the path, size and mtime of every image and label file under the dataset's folder: a stat per
file, no image decoded), in `$DINOCACHE_HOME/dataset-checks/` (default ~/.cache/dinocache), so the next run
on unchanged data answers at once. Exit codes: 0 valid, 1 validation errors (listed as file:line), 2 bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from dinocache.core.errors import DinocacheError

SECTION = "train"
VERSION = 1  # bump when the validation rules change: earlier stamps no longer count


def home() -> Path:
    return Path(os.environ.get("DINOCACHE_HOME") or Path.home() / ".cache" / "dinocache").expanduser()


def fingerprint(data_yaml: Path) -> str:
    """sha256 of data.yaml's bytes and (relative path, size, mtime_ns) of every file under its folder."""
    root = data_yaml.parent
    h = hashlib.sha256(f"v{VERSION}\n".encode())
    h.update(data_yaml.read_bytes())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath, name)
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def stamp_path(data_yaml: Path) -> Path:
    key = hashlib.sha256(str(data_yaml.resolve()).encode()).hexdigest()[:16]
    return home() / "dataset-checks" / f"{key}.json"


def check(data_yaml: Path, force: bool = False) -> int:
    """0 when the dataset validates (or validated before with the same fingerprint), 1 on errors."""
    from dinocache.datatools.validate import validate

    fp = fingerprint(data_yaml)
    stamp = stamp_path(data_yaml)
    if not force and stamp.is_file():
        try:
            seen = json.loads(stamp.read_text())
        except (OSError, ValueError):
            seen = {}
        if seen.get("fingerprint") == fp:
            print(
                f"check-dataset: {data_yaml} unchanged since it validated at {seen.get('checked_at')} "
                f"({seen.get('images')} images): ok",
                file=sys.stderr,
            )
            return 0
    t0 = time.perf_counter()
    col, _ = validate(data_yaml)
    for p in col.problems:
        print(p)
    n_err = col.n_errors
    print(
        f"check-dataset: {data_yaml}: {len(col.items)} images, {n_err} errors, {len(col.problems) - n_err} "
        f"warnings ({time.perf_counter() - t0:.1f}s)",
        file=sys.stderr,
    )
    if n_err:
        print(
            "check-dataset: fix the errors above (`dinocache dataset validate DATA --fix OUT`)",
            file=sys.stderr,
        )
        return 1
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "data": str(data_yaml),
                "fingerprint": fp,
                "images": len(col.items),
                "warnings": len(col.problems),
                "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
    )
    tmp.replace(stamp)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`dinocache check-dataset --config config.json [key=value ...]`"""
    ap = argparse.ArgumentParser(prog="dinocache check-dataset", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help=f"config.json (section '{SECTION}')")
    ap.add_argument("--force", action="store_true", help="validate again even when the data is unchanged")
    ap.add_argument(
        "--before-train",
        action="store_true",
        help="as `just train`'s first step: a config that names no dataset is left to `dinocache train` to report",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides of the train section (data=, dataset_root=; others ignored)",
    )
    args = ap.parse_args(argv)
    from dinocache.train.config import TrainConfig

    from dinocache.core.config import load

    try:
        # `just train ARGS` hands its overrides over as one joined string (a just dependency's argument):
        # split it again before each `key=`; only the data keys matter here
        import re

        parts = [q for o in args.overrides for q in re.split(r"\s+(?=[A-Za-z_][\w.]*=)", o.strip()) if q]
        keep = [o for o in parts if o.split("=", 1)[0] in ("data", "dataset_root")]
        cfg = load(TrainConfig, args.config, SECTION, keep)
        data_yaml = cfg.data_yaml
        if not data_yaml.is_file():
            from dinocache.core.data import DataError

            raise DataError(f"data: {data_yaml} does not exist (set data= or dataset_root=)")
    except DinocacheError as e:
        if args.before_train:
            # the config or its data path is wrong: `dinocache train`, next, refuses it with the full message
            print(f"check-dataset: skipped ({e})", file=sys.stderr)
            return 0
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return check(data_yaml, args.force)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
