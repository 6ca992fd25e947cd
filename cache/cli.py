"""Inspect or check a feature cache.

    dinocache cache info PATH [--json]
    dinocache cache verify PATH --data DATA [--split train] [--dino-root DIR --layer L --imgsz N]
    dinocache cache repair PATH --data DATA [key=value ...]   (recomputing needs the teacher: it is
                                                             precompute.run.repair_main, routed by dinocache.cli)
    dinocache cache verify --config config.json [cache=PATH data=DATA dino_root=DIR ...]

`info` prints the format, the teacher fingerprint summary, N, K, grid, done count, bytes per image
(logical and on disk), codec and shard size. `verify` re-reads every chunk of the cache through its crc32c
checksum, checks that every shard file with done rows exists, that done rows hold no NaN/inf, that every
image of the dataset split has a done row whose stored sha256 matches the file, and (with --dino-root)
that the cache was made by that teacher; exit 0 with a summary line, 1 with one line per bad row (row,
image key, shard file) and the repair command.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
from dinocache.cache.errors import CacheError
from dinocache.cache.reader import FeatureCache

from dinocache.core.errors import DinocacheError

EXAMPLES = 5
SHOWN = 200  # rows listed one per line by verify


def _codec_text(codec: str) -> str:
    return {
        "zstd": "blosc zstd clevel 1 + byte shuffle",
        "lz4": "blosc lz4 clevel 1 + byte shuffle",
        "none": "none (uncompressed)",
    }.get(codec, codec)


def info_dict(fc: FeatureCache) -> dict[str, Any]:
    spec = fc.spec
    done = int(np.count_nonzero(fc.done))
    disk = fc.disk_bytes()
    t = spec.teacher
    cfg = t.get("config", {}) if isinstance(t.get("config"), dict) else {}
    return {
        "path": fc.path,
        "format": spec.format,
        "version": spec.version,
        "n": spec.n,
        "done": done,
        "k": spec.k,
        "pca": spec.pca,
        "teacher_channels": spec.teacher_channels,
        "grid": list(spec.grid),
        "imgsz": spec.imgsz,
        "dtype": spec.dtype,
        "bytes_per_image": spec.bytes_per_image,
        "disk_bytes_features": disk,
        "disk_bytes_per_done_image": (disk / done) if done else None,
        "codec": spec.codec,
        "shard_size": spec.shard_size,
        "n_shards": spec.n_shards,
        "pca_fit_images": spec.pca_fit_images,
        "flips": bool(spec.flips),
        "teacher": {
            "family": t.get("family", "dinov3_vit"),
            "model_type": t.get("model_type"),
            "hidden_size": cfg.get("hidden_size"),
            "num_hidden_layers": cfg.get("num_hidden_layers"),
            "layer": t.get("layer"),
            "patch_size": t.get("patch_size"),
            "imgsz": t.get("imgsz"),
            "weights_sha256": t.get("weights_sha256"),
        },
        "fingerprint_id": spec.fingerprint_id,
        "created_by": spec.created_by,
        "created_at": spec.created_at,
        "source": spec.source,
    }


def print_info(d: dict[str, Any]) -> None:
    t = d["teacher"]
    channels = (
        f"K={d['k']} PCA components of {d['teacher_channels']} teacher channels (fit on {d['pca_fit_images']} images)"
        if d["pca"]
        else f"K={d['k']} raw teacher channels (channels=full)"
    )
    disk = d["disk_bytes_per_done_image"]
    disk_txt = (
        f"{disk:,.0f} on disk (ratio {disk / d['bytes_per_image']:.3f})" if disk else "nothing written yet"
    )
    src = d.get("source") or {}
    rows = [
        ("cache", d["path"]),
        ("format", f"{d['format']} version {d['version']}"),
        (
            "teacher",
            f"{t['family']} ({t['model_type']}) hidden {t['hidden_size']}, {t['num_hidden_layers']} layers, "
            f"{t['patch_size']} px per cell, "
            f"layer {t['layer']}, imgsz {t['imgsz']}, weights sha256 {str(t['weights_sha256'])[:12]}",
        ),
        ("fingerprint", d["fingerprint_id"][:16]),
        ("images", f"N={d['n']}, done {d['done']}/{d['n']}"),
        ("features", f"{channels}, grid {d['grid'][0]}x{d['grid'][1]}, {d['dtype']}"),
        ("bytes/image", f"{d['bytes_per_image']:,} logical, {disk_txt}"),
        (
            "flips",
            "flipped views stored (features_flip, as large again): a horizontal flip reads the teacher's map"
            if d.get("flips")
            else "none (cache_flips=false): a horizontal flip mirrors the map",
        ),
        ("codec", _codec_text(d["codec"])),
        ("shards", f"{d['shard_size']} images per shard, {d['n_shards']} shard(s)"),
        (
            "created",
            f"{d['created_by']} at {d['created_at']} from {src.get('data', '?')} [{src.get('split', '?')}]",
        ),
    ]
    for k, v in rows:
        print(f"{k:<12} {v}")


def verify(
    fc: FeatureCache,
    data: str,
    split: str = "train",
    dino_root: str | None = None,
    layer: int | None = None,
    imgsz: int | None = None,
    device: str = "cpu",
) -> tuple[bool, list[str]]:
    """(ok, report lines). Checks rows, hashes, finiteness and (with dino_root) the teacher fingerprint."""
    from dinocache.core.data import file_sha256, image_key, list_images

    problems: dict[str, list[str]] = {}
    lines: list[str] = []

    def add(kind: str, what: str) -> None:
        problems.setdefault(kind, []).append(what)

    if dino_root is not None:
        from dinocache.cache.errors import CacheMismatch
        from dinocache.cache.reader import check_fingerprint
        from dinocache.teacher.registry import load_teacher

        teacher = load_teacher(
            dino_root,
            layer=fc.fingerprint.get("layer", -1) if layer is None else layer,
            device=device,
            family=str(fc.fingerprint.get("family", "auto")),
        )
        try:
            check_fingerprint(fc, teacher.fingerprint(fc.imgsz if imgsz is None else imgsz))
        except CacheMismatch as e:
            add("teacher fingerprint mismatch", str(e))
    from dinocache.cache import format as fmt
    from dinocache.cache.check import scan

    root, files = list_images(data, split)
    # every chunk of done/sha256/keys and every done row of features, re-read through its crc32c
    damaged, done, keys = scan(fc)
    for b in damaged:
        add("damaged row (row, key, file)", b.line())
    sha_raw, _ = fc.read_chunked(fmt.SHA256)
    from dinocache.cache.arrays import bytes_to_hex

    stored = bytes_to_hex(sha_raw)
    row_of = {k: i for i, k in enumerate(keys)}
    bad_rows = {b.row for b in damaged}
    for f in files:
        key = image_key(f, root)
        row = row_of.get(key)
        if row is None:
            add("no row in the cache", key)
            continue
        if row in bad_rows:
            continue
        where = f"row {row} {key} ({fmt.chunk_file(fc.path, fmt.FEATURES, row // fc.spec.shard_size)})"
        if not done[row]:
            add("row not done", where)
        elif file_sha256(f) != stored[row]:
            add("sha256 mismatch (image changed since it was cached)", where)
    extra = len(set(keys) - {image_key(f, root) for f in files})
    for kind, items in problems.items():
        if kind.startswith("damaged") or "mismatch (image" in kind or kind == "row not done":
            # one line per row: row, image key and the shard file, up to SHOWN of them
            lines.append(f"  {kind}: {len(items)}")
            lines += [f"    {it}" for it in items[:SHOWN]]
            if len(items) > SHOWN:
                lines.append(f"    ... and {len(items) - SHOWN} more")
        else:
            shown = ", ".join(items[:EXAMPLES]) + (" ..." if len(items) > EXAMPLES else "")
            lines.append(f"  {kind}: {len(items)}: {shown}")
    if any(k != "teacher fingerprint mismatch" and k != "no row in the cache" for k in problems):
        from dinocache.cache.errors import repair_hint

        lines.append(f"  fix: {repair_hint(fc)}")
    if extra:
        lines.append(f"  note: {extra} cache row(s) are not in the dataset split (ignored by the trainer)")
    n_bad = sum(len(v) for k, v in problems.items() if k != "teacher fingerprint mismatch")
    ok = not problems
    teacher_txt = f"; teacher fingerprint matches {dino_root}" if dino_root is not None else ""
    if ok:
        head = (
            f"verify: OK {fc.path}: {len(files)}/{len(files)} images of {data} [{split}] cached, hashes match, "
            f"every chunk passes its crc32c, no NaN/inf{teacher_txt}"
        )
    else:
        head = f"verify: FAILED {fc.path}: {n_bad} problem(s) over {len(files)} dataset images" + (
            ", teacher fingerprint differs" if "teacher fingerprint mismatch" in problems else ""
        )
    return ok, [head, *lines]


def main(argv: list[str] | None = None) -> int:
    """`dinocache cache info PATH [--json]` | `dinocache cache verify PATH --data DATA [--dino-root D --layer L --imgsz N]`"""
    ap = argparse.ArgumentParser(prog="dinocache cache", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="format, teacher, N, K, bytes per image, codec")
    pi.add_argument("path")
    pi.add_argument("--json", action="store_true", help="print one JSON object")
    pv = sub.add_parser("verify", help="check the cache against a dataset (and teacher)")
    pv.add_argument(
        "path", nargs="*", help="cache path (default: config.json's precompute.cache) and key=value overrides"
    )
    pv.add_argument(
        "--config", default=None, help="take cache, data, dino_root from its 'precompute' section"
    )
    pv.add_argument("--data", default=None, help="data.yaml of the dataset the cache was built from")
    pv.add_argument("--split", default="train")
    pv.add_argument(
        "--dino-root", default=None, help="also check the teacher fingerprint against this checkpoint"
    )
    pv.add_argument("--layer", type=int, default=None, help="teacher layer (default: the cache's)")
    pv.add_argument("--imgsz", type=int, default=None, help="image size (default: the cache's)")
    pv.add_argument("--device", default="cpu", help="device for loading the teacher")
    for p in (pi, pv):
        p.add_argument("--storage-options", default=None, help="fsspec storage options as JSON")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "verify":
            _verify_args(args)
        try:
            so = json.loads(args.storage_options) if args.storage_options else None
        except json.JSONDecodeError as e:
            # the text is not echoed: it may hold credentials
            raise CacheError(f"--storage-options: not JSON ({e})") from None
        fc = FeatureCache(args.path, so) if _exists(args.path, so) else None
        if fc is None:
            raise CacheError(f"{args.path}: no feature cache there (run `dinocache precompute`)")
        if args.cmd == "info":
            d = info_dict(fc)
            if args.json:
                print(json.dumps(d, indent=2))
            else:
                print_info(d)
            return 0
        ok, lines = verify(fc, args.data, args.split, args.dino_root, args.layer, args.imgsz, args.device)
        print("\n".join(lines), file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    except (DinocacheError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# `verify` keys that config.json's precompute section (with its shared top-level keys) may give
VERIFY_KEYS = {
    "cache": "path",
    "data": "data",
    "dino_root": "dino_root",
    "split": "split",
    "device": "device",
}


def _verify_args(args: argparse.Namespace) -> None:
    """Fill `args` from --config's precompute section, then key=value overrides, then explicit flags."""
    from dinocache.core.config import ConfigError, parse_overrides, read_section

    paths = [a for a in args.path if not _is_override(a)]
    over = parse_overrides([a for a in args.path if _is_override(a)])
    if len(paths) > 1:
        raise ConfigError(f"verify takes one cache path, got {paths}")
    for k in over:
        if k not in VERIFY_KEYS:
            import difflib

            close = difflib.get_close_matches(k, list(VERIFY_KEYS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown verify key '{k}' on the command line{hint}; keys: {', '.join(VERIFY_KEYS)}"
            )
    sec = read_section(args.config, "precompute") if args.config else {}
    explicit = {"path": paths[0] if paths else None, "data": args.data, "dino_root": args.dino_root}
    for key, attr in VERIFY_KEYS.items():
        value = explicit.get(attr) or over.get(key)
        if value is None and key in sec and (key != "device" or sec[key] != "auto"):
            value = sec[key]
        if value is not None:
            setattr(args, attr, str(value))
    if not args.path:
        raise ConfigError("verify: no cache path (give PATH, cache=PATH or --config with precompute.cache)")
    if not args.data:
        raise ConfigError("verify: no dataset (give --data, data=DATA or --config with precompute.data)")


def _is_override(a: str) -> bool:
    k, eq, _ = a.partition("=")
    return bool(eq) and k.replace("_", "").replace("-", "").isalnum() and "/" not in k


def _exists(path: str, so: dict[str, Any] | None) -> bool:
    from dinocache.cache.locations import check_reachable, exists

    check_reachable(path, so)  # an object store: endpoint, credentials and bucket, named by URL
    return exists(path, so)


if __name__ == "__main__":
    sys.exit(main())
