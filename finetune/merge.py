"""Merge LoRA adapters into their base DINOv3 and save a plain checkpoint folder for `dino_root`.

    dinocache merge-teacher --adapter DIR --out DIR [--base DIR_OR_HUB_ID] [--overwrite]

`--adapter` is a fine-tuning run folder (its top-level files are the best epoch) or its `best/` /
`last/`. The base comes from adapter_config.json's base_model_name_or_path unless `--base` is given; it
must be the exact model the adapter was trained on (config and weights hash recorded at training time).
The output holds config.json + model.safetensors (save_pretrained) + the base's preprocessor config +
merge_info.json; it is written to a temp folder and renamed, so `out` is never half-written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from dinocache.finetune import FinetuneError

from dinocache.core.config import Config, build, rule
from dinocache.core.errors import DinocacheError
from dinocache.core.fsutil import publish_dir

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class MergeConfig(Config):
    # folder with adapter_config.json + adapter_model.safetensors (a run folder, best/ or last/)
    adapter: Annotated[str, rule(bool, "give the adapter folder (--adapter DIR)")] = ""
    # output folder for the merged DINOv3 (refused when non-empty, unless overwrite)
    out: Annotated[str, rule(bool, "give the output folder (--out DIR)")] = ""
    # base model folder or hub id; empty = adapter_config.json's base_model_name_or_path
    base: str = ""
    # replace a non-empty `out`
    overwrite: bool = False


def _read_adapter(adapter: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if not adapter.is_dir():
        raise FinetuneError(f"adapter folder {adapter} does not exist")
    missing = [f for f in PEFT_FILES if not (adapter / f).is_file()]
    if missing:
        have = sorted(p.name for p in adapter.iterdir())
        raise FinetuneError(f"{adapter} is not a LoRA adapter folder: missing {missing} (it has {have})")
    try:
        cfg = json.loads((adapter / "adapter_config.json").read_text())
    except json.JSONDecodeError as e:
        raise FinetuneError(f"{adapter / 'adapter_config.json'}:{e.lineno}: invalid JSON: {e.msg}") from None
    meta_p = adapter / "dinocache_adapter.json"
    meta = json.loads(meta_p.read_text()) if meta_p.is_file() else None
    return cfg, meta


def _check_out(out: Path, overwrite: bool, protected: list[Path]) -> None:
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"out: {out} exists and is not a folder")
    r = out.resolve()
    for p in protected:
        if p.exists() and r == p.resolve():
            raise FinetuneError(f"out: {out} is the input folder {p}; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FinetuneError(f"out: {out} exists and is not empty (pass --overwrite to replace it)")


def merge_adapter(
    adapter: str | Path, out: str | Path, base: str | None = None, overwrite: bool = False
) -> Path:
    """Base + adapter -> merged plain DINOv3 folder at `out`; returns `out`."""
    import torch
    from dinocache.finetune.model import base_identity, resolve_base
    from dinocache.teacher.model import DinoV3Teacher
    from peft import PeftModel

    adapter, out = Path(adapter), Path(out)
    acfg, meta = _read_adapter(adapter)
    src = base or acfg.get("base_model_name_or_path") or ""
    if not src:
        raise FinetuneError(
            f"{adapter / 'adapter_config.json'} names no base_model_name_or_path; pass --base DIR"
        )
    src = resolve_base(src)
    protected = [adapter] + ([Path(src)] if Path(src).exists() else [])
    _check_out(out, overwrite, protected)

    teacher = DinoV3Teacher.from_pretrained(src, device="cpu")  # TeacherNotFound names where to put it
    model = teacher.model
    have = base_identity(model, src)
    if meta is not None:
        want = meta["base"]
        for key in ("config_sha256", "weights_sha256"):
            if want.get(key) != have[key]:
                what = "config" if key == "config_sha256" else "weights"
                raise FinetuneError(
                    f"adapter {adapter} was trained on base {want.get('source')} ({what} sha256 "
                    f"{str(want.get(key))[:12]}), but the base given is {src} ({what} sha256 {have[key][:12]}): "
                    "they are different models; pass --base <the folder it was trained on>"
                )
    try:
        with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:  # shape mismatch: adapter for another architecture
        raise FinetuneError(f"adapter {adapter} does not fit base {src}: {str(e).splitlines()[0]}") from None
    merged = peft_model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)  # plain checkpoint, as from_pretrained would give
    merged_sha = base_identity(merged, str(out))["weights_sha256"]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        pre = Path(src) / "preprocessor_config.json"
        if pre.is_file():
            shutil.copy2(pre, tmp / pre.name)
        else:
            try:  # hub id: copy the cached preprocessor config, if the base has one
                from transformers import AutoImageProcessor

                AutoImageProcessor.from_pretrained(src).save_pretrained(str(tmp))
            except (OSError, ValueError):
                print(f"merge-teacher: {src} has no preprocessor config; ImageNet mean/std will be assumed")
        info = {
            "base": have,
            "adapter": str(adapter.resolve()),
            "adapter_meta": meta,
            "merged_weights_sha256": merged_sha,
            "dtype": str(torch.float32),
        }
        (tmp / "merge_info.json").write_text(json.dumps(info, indent=2, default=str))
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """`dinocache merge-teacher --adapter DIR --out DIR [--base DIR] [--overwrite]`"""
    ap = argparse.ArgumentParser(prog="dinocache merge-teacher", description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", required=True, help="adapter folder (run folder, best/ or last/)")
    ap.add_argument("--out", required=True, help="output folder for the merged DINOv3")
    ap.add_argument("--base", default="", help="base folder / hub id (default: from adapter_config.json)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = ap.parse_args(argv)

    try:
        cfg = build(MergeConfig, vars(args), "command line")
        meta_p = Path(cfg.adapter) / "dinocache_adapter.json"
        family = json.loads(meta_p.read_text()).get("family") if meta_p.is_file() else None
        if family in ("grounding_dino", "sam"):  # the task teachers of finetune-teachers
            from dinocache.finetune.task_teachers import merge_task_adapter

            out = merge_task_adapter(cfg.adapter, cfg.out, cfg.base or None, cfg.overwrite)
        else:
            out = merge_adapter(cfg.adapter, cfg.out, cfg.base or None, cfg.overwrite)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merge-teacher: merged {cfg.adapter} into {out}; use dino_root={out} for precompute and train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
