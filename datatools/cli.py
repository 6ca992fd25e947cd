"""`dinocache dataset {inspect,validate,convert,tile,split} ...`

    dinocache dataset inspect DATA [--json]
    dinocache dataset validate DATA [--json] [--fix OUT [--overwrite]]
    dinocache dataset validate --data annotations.json --split train:0.7,val:0.15,test:0.15 --stratify --seed 42
    dinocache dataset convert SRC --from dota|coco|yolo --out OUT [--names a,b,c|names.txt] [--to yolo|dota]
    dinocache dataset tile DATA --out OUT [--imgsz 512] [--overlap 0.2] [--min-visible 0.6] [--drop-empty]
    dinocache dataset split DATA --out OUT [--ratios 0.8,0.1,0.1] [--seed 0]

DATA is a YOLO-OBB dataset yaml or its folder (data.yaml or the folder's one `<name>.yaml`); inspect/validate
also take a DOTA folder or a COCO JSON. Exit codes: 0 ok, 1 validation found errors (with --fix: errors left
in the written copy), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from dinocache.core.data import DataError
from dinocache.core.errors import DinocacheError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dinocache dataset", description="dataset tools")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("inspect", help="format, images, classes, sizes, problems")
    p.add_argument("data")
    p.add_argument("--format", choices=["yolo", "dota", "coco"], default=None, help="skip detection")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("validate", help="report every problem as file:line; --fix writes a cleaned copy")
    p.add_argument("data", nargs="?", default=None)
    p.add_argument("--data", dest="data_opt", default=None, help="same as DATA (the seed's spelling)")
    p.add_argument(
        "--split",
        default=None,
        help="COCO JSON only: also write <stem>_train/_val/_test.json, e.g. train:0.7,val:0.15,test:0.15",
    )
    p.add_argument("--stratify", action="store_true", help="with --split: stratify by class presence")
    p.add_argument("--seed", type=int, default=0, help="with --split: shuffle seed")
    p.add_argument(
        "--out", default=None, help="with --split: folder of the split files (default: next to DATA)"
    )
    p.add_argument("--format", choices=["yolo", "dota", "coco"], default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--fix", metavar="OUT", default=None, help="write a cleaned YOLO-OBB copy to OUT")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("convert", help="DOTA/COCO -> YOLO-OBB")
    p.add_argument("src")
    p.add_argument("--from", dest="fmt", choices=["dota", "coco", "yolo"], required=True)
    p.add_argument("--to", choices=["yolo", "dota"], default="yolo")
    p.add_argument("--out", required=True)
    p.add_argument("--names", default=None, help="class order: a,b,c or a file with one name per line")
    p.add_argument("--skip-bad", action="store_true", help="drop bad lines instead of stopping")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("tile", help="cut large images into imgsz tiles")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--imgsz", type=int, default=512)
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--min-visible", type=float, default=0.6)
    p.add_argument("--drop-empty", action="store_true", help="skip tiles without boxes")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("split", help="stratified, seeded train/val/test split")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--ratios", default="0.8,0.1,0.1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    """`dinocache dataset {inspect,validate,convert,tile,split} ...`"""
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "inspect":
            from .inspection import format_table, inspect

            info = inspect(args.data, args.format)
            print(json.dumps(info, indent=2) if args.json else format_table(info))
            return 0
        if args.cmd == "validate":
            from .validate import fix, validate

            args.data = args.data or args.data_opt
            if not args.data:
                raise DataError("validate: give DATA (or --data annotations.json)")
            if args.split is not None and not str(args.data).endswith(".json"):
                raise DataError(
                    f"--split: only for a COCO JSON (got {args.data}); YOLO datasets: `dataset split`"
                )

            col, dups = validate(args.data, args.format)
            if args.json:
                print(json.dumps([p.to_dict() for p in col.problems], indent=2))
            else:
                for p in col.problems:
                    print(p)
                n_err = col.n_errors
                print(
                    f"{len(col.items)} images, {n_err} errors, {len(col.problems) - n_err} warnings",
                    file=sys.stderr,
                )
                if col.clipped:
                    print(col.clipped_line(), file=sys.stderr)
            if args.fix:
                out = fix(col, dups, args.fix, args.overwrite)
                # the exit code says whether the copy (what the user trains on next) is clean
                clean, _ = validate(out)
                print(
                    f"wrote cleaned copy to {out}: {clean.n_errors} errors"
                    + (f"; use {out / 'data.yaml'}" if not clean.n_errors else ""),
                    file=sys.stderr,
                )
                for p in clean.problems if clean.n_errors else []:
                    print(p, file=sys.stderr)
                return 1 if clean.n_errors else 0
            if args.split is not None:
                if col.n_errors:
                    print("not splitting: fix the errors above first", file=sys.stderr)
                    return 1
                from .coco_split import parse_split_spec, split_coco, split_table

                written = split_coco(
                    args.data, parse_split_spec(args.split), args.seed, args.stratify, args.out
                )
                print(split_table(written), file=sys.stderr)
            return 1 if col.n_errors else 0
        if args.cmd == "convert":
            from .convert import convert, parse_names

            convert(
                args.src, args.out, args.fmt, args.to, parse_names(args.names), args.skip_bad, args.overwrite
            )
            return 0
        if args.cmd == "tile":
            from .tile import tile

            tile(
                args.data,
                args.out,
                args.imgsz,
                args.overlap,
                args.min_visible,
                args.drop_empty,
                args.overwrite,
            )
            return 0
        if args.cmd == "split":
            from .split import parse_ratios, split

            split(args.data, args.out, parse_ratios(args.ratios), args.seed, args.overwrite)
            return 0
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
