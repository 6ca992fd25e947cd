"""Everything before the trainer exists: the checks that refuse a bad run before its first step (cache,
teacher files, images, student model), the run folder and its lock, resume, and `prepare`, which adds the
Ultralytics arguments and augmentation policy (train/overrides.py). `run.train()` and
`DinoOBBTrainer(TrainConfig(...))` both start with `prepare`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dinocache.train.config import TrainConfig
from dinocache.train.context import DINO_ARGS_FILE, RESUME_FILE, DistillTerm, TeacherContext, TrainError
from dinocache.train.overrides import apply_augmentation_policy, ultralytics_overrides
from ultralytics.utils import LOGGER, colorstr

from dinocache.core.config import ConfigError, build, to_dict
from dinocache.core.data import image_key, image_keys, list_split_images
from dinocache.core.device import ultralytics_device

# the command that works for each state of the cache: precompute builds a missing cache and finishes an
# interrupted one, and refuses an existing cache made with other settings unless --overwrite
FIX = "run `just precompute` (dinocache precompute --config config.json) to build it"
REBUILD = (
    "rebuild it with `just precompute --overwrite` (dinocache precompute --config config.json --overwrite "
    "deletes and recomputes it)"
)


def runs_root(cfg: TrainConfig) -> Path:
    return Path(cfg.artifacts_root).expanduser().resolve() / cfg.model_key / "runs"


def run_dir(cfg: TrainConfig, run_id: str) -> Path:
    """artifacts/{model_key}/runs/{run_id}/train"""
    return runs_root(cfg) / run_id / "train"


def _open_cache(path: str) -> Any:
    from dinocache import cache

    try:
        return cache.open(path)
    except cache.CacheError as e:
        # nothing there yet: precompute builds it; something unusable there: precompute must replace it
        missing = "://" not in str(path) and not Path(path).expanduser().exists()
        raise TrainError(f"cache: cannot use {path}: {e}; {FIX if missing else REBUILD}") from None
    except FileNotFoundError:
        raise TrainError(f"cache: {path} does not exist; {FIX}") from None


def check_cache(cfg: TrainConfig, fc: Any, keys: list[str], teacher: Any = None) -> None:
    """Refuse a cache made for another teacher/layer/imgsz, too few channels, or missing training images."""
    from dinocache import cache

    where = f"cache {cfg.cache}"
    if int(fc.imgsz) != cfg.imgsz:
        raise TrainError(
            f"{where} was computed at imgsz={fc.imgsz} but imgsz={cfg.imgsz}; {REBUILD} or set imgsz"
        )
    if cfg.dino_distill_channels > int(fc.k):
        raise TrainError(
            f"dino_distill_channels={cfg.dino_distill_channels} but {where} stores only {fc.k} channels; "
            f"lower dino_distill_channels or {REBUILD} with more channels"
        )
    if cfg.distill_cache_flips == "on" and not getattr(fc, "flips", False):
        raise TrainError(
            f"distill_cache_flips=on but {where} holds no flipped views (it was made without cache_flips=true); "
            f"{REBUILD} with cache_flips=true, or set distill_cache_flips=auto/off"
        )
    stored = fc.fingerprint or {}
    if "layer" in stored and int(stored["layer"]) != cfg.dino_layer:
        raise TrainError(
            f"{where} holds teacher layer {stored['layer']} but dino_layer={cfg.dino_layer}; {REBUILD} or set dino_layer"
        )
    if teacher is not None:  # online mode with a cache: the loaded teacher must be the cache's
        try:
            cache.check_fingerprint(fc, teacher.fingerprint(cfg.imgsz))
        except cache.CacheMismatch as e:
            raise TrainError(f"{where} does not match the teacher {cfg.dino_root}: {e}; {REBUILD}") from None
    else:
        check_teacher_files(cfg, fc)
    known = {k: i for i, k in enumerate(fc.keys)}
    done = np.asarray(fc.done, dtype=bool)
    missing = [k for k in keys if k not in known or not done[known[k]]]
    if missing:
        first = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise TrainError(
            f"{where} lacks teacher features for {len(missing)} of {len(keys)} training images "
            f"(first: {first}); `just precompute` finishes an interrupted cache; for a cache of other images "
            f"{REBUILD}"
        )
    check_cache_files(cfg, fc, keys, known, done)


def check_cache_files(cfg: TrainConfig, fc: Any, keys: list[str], known: dict[str, int], done: Any) -> None:
    """Cheap start-of-run checks of what the per-read checks would only find mid-epoch: a shard file gone while
    `done` says 1 (one folder listing) and, with verify_images=true, images edited since they were cached."""
    from dinocache.cache.check import missing_shard_files, repair_hint

    where = f"cache {cfg.cache}"
    used = {known[k] for k in keys}
    from dinocache.train.dataset import uses_cache_flips

    views = [False, True] if uses_cache_flips(cfg.distill_cache_flips, fc) else [False]
    gone = [
        (f, [r for r in rows if r in used]) for v in views for _, f, rows in missing_shard_files(fc, done, v)
    ]
    gone = [(f, rows) for f, rows in gone if rows]
    if gone:
        f, rows = gone[0]
        names = ", ".join(fc.keys[r] for r in rows[:5])
        raise TrainError(
            f"{where}: shard file {f} is missing although `done` says its {len(rows)} row(s) are computed "
            f"(images {names}){f' and {len(gone) - 1} more shard file(s)' if len(gone) > 1 else ''}; "
            f"{repair_hint(fc, cfg.data)}"
        )
    if cfg.verify_images:
        from dinocache.core.data import file_sha256

        root, files = list_split_images(cfg.data_yaml, "train")
        stored = fc.sha256()
        changed = [k for f in files if file_sha256(f) != stored[known[(k := image_key(f, root))]]]
        if changed:
            raise TrainError(
                f"{where}: {len(changed)} training image(s) changed since they were cached "
                f"(first: {', '.join(changed[:5])}); {repair_hint(fc, cfg.data)}"
            )
    else:
        check_images_fresh(cfg, fc, known)


def check_images_fresh(cfg: TrainConfig, fc: Any, known: dict[str, int]) -> None:
    """Default check that the cached maps belong to these images: one stat per image against precompute's
    size+mtime record, hashing only the images whose record differs (cache/freshness.py)."""
    from dinocache.cache.check import repair_hint
    from dinocache.cache.freshness import read_record, stale_images

    where = f"cache {cfg.cache}"
    record = read_record(fc.path, fc.storage_options)
    if record is None:
        LOGGER.warning(
            f"{colorstr('dinocache:')} {where} holds no size/mtime record of its images (made by an older "
            "precompute, or its folder was read-only): images changed since are not detected; rerun "
            "`dinocache precompute` on it to add the record, or set verify_images=true to hash every image"
        )
        return
    root, files = list_split_images(cfg.data_yaml, "train")
    keys = [image_key(f, root) for f in files]
    stored = fc.sha256()
    stale, hashed = stale_images(files, keys, [stored[known[k]] for k in keys], record)
    if stale:
        raise TrainError(
            f"{where}: {len(stale)} of {len(keys)} training image(s) are not the images their maps were "
            f"computed from (size/mtime and sha256 differ; first: {', '.join(stale[:5])}), so the targets "
            f"would be stale. If you edited or re-augmented them, {repair_hint(fc, cfg.data)}; if this is another "
            "dataset, precompute a cache of its own (cache=...)"
        )
    if hashed:
        LOGGER.info(
            f"{colorstr('dinocache:')} {hashed} image(s) had another mtime than the cache's record; hashed: "
            "same bytes (rerun `dinocache precompute` on the cache to refresh the record)"
        )


def model_layers(model: str) -> int:
    """Number of layers of the student `model` (an Ultralytics model yaml, a .pt checkpoint or a hub id)."""
    from dinocache.train.hub import resolve_student

    model = resolve_student(model)
    if Path(model).suffix == ".pt":
        from dinocache.core.safeload import load_ultralytics_checkpoint

        if not Path(model).is_file():
            raise TrainError(
                f"model: {model} does not exist (a pretrained .pt or an Ultralytics model .yaml)"
            )
        # restricted load first: the trainer's own load of this file then only meets vetted model classes
        ckpt = load_ultralytics_checkpoint(model)
        net = ckpt.get("ema") or ckpt.get("model")
        if net is None:
            raise TrainError(f"model: {model} holds no model (keys: {', '.join(map(str, ckpt)) or 'none'})")
        return len(net.model)
    from ultralytics.nn.tasks import yaml_model_load

    try:
        d = yaml_model_load(model)
    except FileNotFoundError:
        raise TrainError(f"model: {model} is neither a file nor an Ultralytics model yaml") from None
    return len(d["backbone"]) + len(d["head"])


def check_teacher_files(cfg: TrainConfig, fc: Any) -> None:
    """Cache mode: dino_root's weight files must be byte-identical to those the cache was made with.

    File-level digest only (streamed sha256, size+mtime sidecar): no model code is imported, nothing is built.
    """
    from dinocache.teacher.digest import DigestError, compare, digest, locate

    where = f"cache {cfg.cache}"
    if not cfg.dino_root:  # a multi-teacher term without dino_root: nothing to compare against
        return
    folder = locate(cfg.dino_root)
    if folder is None:
        LOGGER.warning(
            f"{colorstr('dinocache:')} teacher {cfg.dino_root} not found: checked the cache's imgsz and layer only"
        )
        return
    try:
        now = digest(folder)
    except DigestError as e:
        raise TrainError(f"dino_root: {e}; point dino_root at the teacher the cache was made with") from None
    lines = compare(fc.spec.teacher_files, now)
    if lines:
        shown = "\n  ".join(f"{folder / ln}" for ln in lines)
        raise TrainError(
            f"{where} was made with other teacher weights than {folder}:\n  {shown}\n"
            f"point dino_root at the teacher the cache was made with, or {REBUILD}"
        )


def preflight(cfg: TrainConfig, labels: bool = True) -> TeacherContext:
    """Resolve the dataset, cache and teacher for `cfg`, refusing before anything is written. `labels=False`
    (pretraining, which reads no label file) skips the label-row check."""
    n_layers = model_layers(cfg.model)
    if cfg.freeze_layers > n_layers:
        raise TrainError(
            f"stage_a_freeze={cfg.freeze_layers} but {cfg.model} has only {n_layers} layers (0-{n_layers - 1}); "
            "10 freezes the YOLO26 backbone"
        )
    root, files = list_split_images(cfg.data_yaml, "train")
    from dinocache.train.label_rows import check_label_rows

    if labels:
        check_label_rows(cfg.data_yaml)  # rows Ultralytics would drop: refused now, not noticed at the end
    if cfg.teacher_source == "none":
        return TeacherContext(dataset_root=root)
    teacher = None
    if cfg.teacher_source == "online":
        # cache mode never builds the teacher (nor imports transformers' model code): check_teacher_files
        from dinocache.teacher.registry import load_teacher

        teacher = load_teacher(cfg.dino_root, layer=cfg.dino_layer, device="cpu", family=cfg.teacher_family)
        try:
            teacher.check_imgsz(cfg.imgsz)  # the check precompute makes: online accepts no other sizes
        except ConfigError as e:
            raise TrainError(f"{e} (teacher {cfg.dino_root}, teacher_source=online)") from None
    cache_path = cfg.cache
    use_cache = cfg.teacher_source == "cache" or (
        bool(cache_path) and ("://" in cache_path or Path(cache_path).exists())
    )
    if cfg.teachers:
        return preflight_multi(cfg, root, image_keys(files, root))
    term = DistillTerm(
        layers=tuple(cfg.dino_distill_layers),
        channels=cfg.dino_distill_channels,
        object_weight=cfg.dino_distill_object_weight,
        background_weight=cfg.dino_distill_background_weight,
        loss=cfg.dino_distill_loss,
    )
    online = teacher if cfg.teacher_source == "online" else None
    if not use_cache:
        LOGGER.info(
            f"{colorstr('dinocache:')} no cache at {cache_path!r}: online targets are the first "
            f"{cfg.dino_distill_channels} raw teacher channels, not PCA components"
        )
        if teacher is not None and cfg.dino_distill_channels > teacher.channels:
            raise TrainError(
                f"dino_distill_channels={cfg.dino_distill_channels} exceeds the teacher's {teacher.channels} channels"
            )
        return TeacherContext(dataset_root=root, terms=(term,), teacher=online)
    fc = _open_cache(cache_path)
    check_cache(cfg, fc, image_keys(files, root), teacher)
    mean = np.asarray(fc.channel_mean, dtype=np.float32)
    std = np.asarray(fc.channel_std, dtype=np.float32)
    term = dataclasses.replace(term, **_cache_fields(fc, cache_path, cfg.dino_distill_channels))
    return TeacherContext(
        dataset_root=root,
        terms=(term,),
        cache_path=cache_path,
        channel_mean=torch.as_tensor(mean),
        channel_std=torch.as_tensor(std),
        pca=fc.pca,
        teacher=online,
    )


def _cache_fields(fc: Any, path: str, channels: int) -> dict[str, Any]:
    """A DistillTerm's fields read from its cache `fc` at `path`: store, cell, grid, its D channels' stats."""
    return {
        "cache_path": str(path),
        "cell_px": int(fc.spec.patch_size),
        "grid": tuple(int(g) for g in fc.grid),
        "mean": tuple(np.asarray(fc.channel_mean, np.float32)[:channels].tolist()),
        "std": tuple(np.asarray(fc.channel_std, np.float32)[:channels].tolist()),
    }


def preflight_multi(cfg: TrainConfig, root: Path, keys: list[str]) -> TeacherContext:
    """Multi-teacher run: each listed teacher must be in the cache, at imgsz, with its channels and every
    training row done (refusals name the teacher); cell sizes must nest so one packed map carries them all."""

    from dinocache.cache import multi
    from dinocache.train.config import teacher_terms

    from dinocache import cache

    terms: list[DistillTerm] = []
    listed = teacher_terms(cfg)
    opened = []
    for t in listed:  # every name first: a run naming a teacher the cache lacks fails before any other check
        try:
            opened.append(multi.open_teacher(cfg.cache, t.teacher))
        except cache.CacheError as e:
            raise TrainError(f"teachers: {e}") from None
        except FileNotFoundError:
            raise TrainError(f"cache: {cfg.cache} does not exist; {FIX}") from None
    for i, (t, fc) in enumerate(zip(listed, opened)):
        if t.channels > int(fc.k):
            raise TrainError(
                f"teachers[{i}].channels={t.channels} but teacher '{t.teacher}' of cache {cfg.cache} stores only "
                f"{fc.k} channels; lower it or precompute that teacher with more channels"
            )
        sub = dataclasses.replace(
            cfg,
            cache=multi.teacher_path(cfg.cache, t.teacher),
            dino_distill_channels=t.channels,
            dino_layer=int((fc.fingerprint or {}).get("layer", -1)),
            dino_root=t.dino_root,
            teachers=[],
        )
        check_cache(sub, fc, keys)
        terms.append(
            DistillTerm(
                name=t.teacher,
                loss_name=t.loss_name,
                layers=tuple(t.layers),
                channels=t.channels,
                object_weight=t.object_weight,
                background_weight=t.background_weight,
                loss=cfg.dino_distill_loss,
                **_cache_fields(fc, sub.cache, t.channels),
            )
        )
    fine = min(t.cell_px for t in terms)
    offset = 0
    for i, t in enumerate(terms):
        if t.cell_px % fine or t.grid[0] * t.cell_px != cfg.imgsz:
            raise TrainError(
                f"teachers: teacher '{t.name}' has {t.cell_px}-px cells, the finest teacher {fine}-px ones; "
                "a multi-teacher run needs each cell size to be a multiple of the finest (powers of two: 4, 8, 16, 32)"
            )
        terms[i] = dataclasses.replace(t, factor=t.cell_px // fine, offset=offset)
        offset += t.channels
    names = ", ".join(f"{t.name} ({t.channels} ch, {t.grid[0]}x{t.grid[1]})" for t in terms)
    LOGGER.info(f"{colorstr('dinocache:')} distilling from {len(terms)} teachers of {cfg.cache}: {names}")
    # the packed map is standardised per teacher by the lookup: identity stats here
    return TeacherContext(
        dataset_root=root,
        terms=tuple(terms),
        packed=True,
        cache_path=cfg.cache,
        channel_mean=torch.zeros(offset),
        channel_std=torch.ones(offset),
    )


# what a resumed run takes from this call; every other option is the saved run's
RESUME_TAKES = ("resume", "name", "device", "workers")


def resume_ignores(cfg: TrainConfig, given: list[str]) -> list[str]:
    """`key=value (the run has saved)` for each key in `given` (set on the command line) that a resume would
    not apply because the saved run has another value: refused by the CLI rather than silently dropped."""
    import yaml

    try:
        d = _resume_dir(cfg)
        saved_cfg = build(
            TrainConfig, yaml.safe_load((d / DINO_ARGS_FILE).read_text()), str(d / DINO_ARGS_FILE)
        )
    except (TrainError, OSError, ConfigError, yaml.YAMLError):
        return []  # find_resume reports what is wrong with the run
    now, saved = to_dict(cfg), to_dict(saved_cfg)
    return [
        f"{k}={now[k]!r} (the run has {saved[k]!r})"
        for k in given
        if k not in RESUME_TAKES and k in now and now[k] != saved[k]
    ]


def _resume_dir(cfg: TrainConfig) -> Path:
    if cfg.name:
        d = run_dir(cfg, cfg.name)
        if not (d / "weights" / RESUME_FILE).exists():
            raise TrainError(f"resume: {d / 'weights' / RESUME_FILE} does not exist (run '{cfg.name}')")
        return d
    cands = sorted(runs_root(cfg).glob(f"*/train/weights/{RESUME_FILE}"), key=lambda p: p.stat().st_mtime)
    if not cands:
        raise TrainError(f"resume: no run with weights/{RESUME_FILE} under {runs_root(cfg)}")
    return cands[-1].parent.parent


def find_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict, Path]:
    """(saved config with this call's device/workers, resume state, run folder) of the run to continue."""
    d = _resume_dir(cfg)
    import yaml

    saved = yaml.safe_load((d / DINO_ARGS_FILE).read_text())
    saved.update(resume=True, name=d.parent.name, device=cfg.device, workers=cfg.workers)
    new = build(TrainConfig, saved, str(d / DINO_ARGS_FILE))
    # tensors, numbers and plain dicts only: loads with weights_only=True
    from dinocache.core.safeload import load_state

    state = load_state(d / "weights" / RESUME_FILE)
    return new, state, d


# A run folder's lock file (in runs/{run_id}/, beside train/): one training per run folder.
RUN_LOCK = ".lock"
_HELD: dict[Path, Any] = {}


def _holds_run(save_dir: Path) -> bool:
    return (save_dir / "results.csv").exists() or (save_dir / "weights" / "last.pt").exists()


def hold_run(save_dir: Path) -> None:
    """Lock the run folder for this process, or TrainError when another training holds it."""
    from dinocache.core.locks import Busy, hold

    if save_dir in _HELD:
        return
    try:
        _HELD[save_dir] = hold(
            save_dir.parent / RUN_LOCK,
            f"run folder {save_dir}",
            "another training writes there; wait for it to end or pass another name=",
        )
    except Busy as e:
        raise TrainError(str(e)) from None


def release_run(save_dir: Path, tidy: bool = False) -> None:
    from dinocache.core.locks import release

    release(_HELD.pop(save_dir, None), tidy)


def claim_run(cfg: TrainConfig) -> tuple[TrainConfig, Path]:
    """(cfg with its run name, run folder) of a new run, locked. Without a name: the start time, with -2, -3...
    when that folder is taken (two runs started in the same second get two folders)."""
    from dinocache.core.locks import try_lock

    if cfg.name:
        save_dir = run_dir(cfg, cfg.name)
        hold_run(save_dir)
        if _holds_run(save_dir):
            release_run(save_dir, tidy=True)
            raise TrainError(f"run folder {save_dir} already holds a run; pass resume=true or another name")
        return cfg, save_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 10_000):
        run_id = stamp if i == 1 else f"{stamp}-{i}"
        save_dir = run_dir(cfg, run_id)
        if save_dir.parent.exists() and any(p.name != RUN_LOCK for p in save_dir.parent.iterdir()):
            continue
        lock = try_lock(save_dir.parent / RUN_LOCK)
        if lock is None:
            continue
        if _holds_run(save_dir):  # written between the listing and the lock
            lock.release()
            continue
        _HELD[save_dir] = lock
        return dataclasses.replace(cfg, name=run_id), save_dir
    raise TrainError(f"no free run folder for {stamp} under {runs_root(cfg)}")  # pragma: no cover


def prepare(
    cfg: TrainConfig, device: str | None = None
) -> tuple[TrainConfig, dict[str, Any], TeacherContext, dict | None]:
    """Everything before the trainer exists: the run folder (new or resumed), the preflight checks, the
    Ultralytics arguments with the augmentation policy. Returns (cfg, overrides, ctx, resume state).
    `DinoOBBTrainer(TrainConfig(...), device=...)` and `train()` both start here."""
    if device is not None:
        cfg = dataclasses.replace(cfg, device=str(device))  # re-validated by __post_init__
    state = None
    ultralytics_device(cfg.device)  # device=0,1 with fewer GPUs: refused by count before anything else
    if cfg.resume:
        cfg, state, save_dir = find_resume(cfg)
        hold_run(save_dir)
    else:
        cfg, save_dir = claim_run(cfg)
    try:
        device = ultralytics_device(cfg.device)  # before anything is loaded: no GPU is a clear error
        ctx = preflight(cfg)
    except BaseException:
        release_run(save_dir, tidy=True)  # refused before anything was written: leave nothing behind
        raise
    ov = ultralytics_overrides(cfg, save_dir, device)
    from dinocache.train.hub import resolve_student

    ov["model"] = resolve_student(cfg.model)  # a hub id -> its file in the hub cache (fetched by preflight)
    apply_augmentation_policy(cfg, ov)
    return cfg, ov, ctx, state
