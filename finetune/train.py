"""LoRA fine-tuning of the DINOv3 teacher on a dense target chosen from the annotations.

    dinocache finetune-teacher --config config.json [key=value ...]      # section "finetune_teacher"

Writes `{project}/{name}/teachers/dinov3_lora/`: adapter_config.json + adapter_model.safetensors (LoRA
weights only) + head.safetensors (the dense head) + dinocache_adapter.json (base identity, objective)
for the best epoch, `best/` and `last/` (the same files; last/ also trainer_state.pt for resume),
teacher_config.yaml (resolved config), metadata.json (data hash, versions, objective, metrics) and
TensorBoard logs in logs/. Then `dinocache merge-teacher --adapter DIR --out DIR`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dinocache.finetune import FinetuneError
from pydantic import Field

from dinocache.core.config import Config, ConfigError, load, require, rule, save, to_dict
from dinocache.core.data import DataError
from dinocache.core.errors import DinocacheError

SECTION = "finetune_teacher"
# Keys that change what the saved adapter means; resuming with a different value is refused.
RESUME_FIXED = (
    "data",
    "coco_train",
    "coco_val",
    "coco_images",
    "layer",
    "imgsz",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "classes",
)
TOP_FILES = ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "dinocache_adapter.json")


@dataclass
class FinetuneConfig(Config):
    # YOLO data.yaml (OBB / detect / segment labels); leave empty to use coco_train + coco_val instead
    data: str = ""
    # COCO instances JSON for training (bbox and/or segmentation), used when `data` is empty
    coco_train: str = ""
    # COCO instances JSON for validation (same categories by name)
    coco_val: str = ""
    # folder the COCO `file_name`s are relative to; empty = each JSON's own folder
    coco_images: str = ""
    # base DINOv3: a local save_pretrained folder or a hub id (resolvable offline)
    dino_root: str = "dinov3"
    # hidden state the head reads: -1 = last (after the final norm), i = hidden_states[i]; use precompute's
    layer: int = -1
    # outputs go to {project}/{name}/teachers/dinov3_lora/
    project: str = "experiments"
    # experiment name
    name: Annotated[str, rule(lambda n: bool(n) and "/" not in n, "must be a plain folder name")] = "exp"
    # class names; empty = filled from the data (a given list must equal the data's names)
    classes: list[str] = field(default_factory=list)
    # square input size (multiple of the patch size); use the size you will precompute at
    imgsz: Annotated[int, Field(ge=16)] = 640
    # epochs to train (on resume: the new total)
    epochs: Annotated[int, Field(ge=1)] = 10
    # images per micro-batch
    batch: Annotated[int, Field(ge=1)] = 8
    # micro-batches per optimizer step (effective batch = batch * accumulate)
    accumulate: Annotated[int, Field(ge=1)] = 1
    # peak AdamW learning rate (LoRA tolerates larger rates than full fine-tuning)
    lr: Annotated[float, Field(ge=0)] = 2e-4
    # AdamW weight decay
    weight_decay: float = 0.01
    # linear warmup length in epochs, then cosine decay to 0
    warmup_epochs: Annotated[float, Field(ge=0)] = 1.0
    # max global grad norm (0 = no clipping)
    grad_clip: float = 1.0
    # LoRA rank
    lora_r: Annotated[int, Field(ge=1)] = 8
    # LoRA scaling numerator (scale = lora_alpha / lora_r)
    lora_alpha: int = 16
    # dropout on the LoRA input
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    # module names that get adapters (DINOv3 attention: q_proj k_proj v_proj o_proj)
    lora_target_modules: Annotated[list[str], rule(bool, "must name at least one module")] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    # weight of the box class-map term (when the data has boxes)
    box_weight: float = 1.0
    # weight of the mask coverage term (when the data has masks)
    mask_weight: float = 1.0
    # probability of a horizontal flip of a training image (and its targets)
    fliplr: Annotated[float, Field(ge=0, le=1)] = 0.5
    # what picks best/: val_loss (lower is better) or miou (higher is better)
    best_metric: Literal["val_loss", "miou"] = "val_loss"
    # stop after this many epochs without improvement of best_metric (0 = never)
    patience: Annotated[int, Field(ge=0)] = 5
    # smallest change that counts as an improvement
    min_delta: float = 0.0
    # auto, cpu, cuda, cuda:N
    device: str = "auto"
    # mixed precision on CUDA (bf16 where supported, else fp16); ignored on CPU
    amp: bool = True
    # DataLoader worker processes
    workers: Annotated[int, Field(ge=0)] = 0
    # seed for weights init, shuffling and flips
    seed: int = 0
    # continue from {out}/last/ (epochs = new total)
    resume: bool = False
    # allow writing into an existing run folder (its contents are replaced)
    exist_ok: bool = False
    # write TensorBoard logs to {out}/logs/
    tensorboard: bool = True

    def validate(self) -> None:
        require(
            bool(self.data) != bool(self.coco_train),
            "data",
            "set exactly one source: data=<data.yaml> or coco_train=<json> (+ coco_val)",
        )
        require(not self.coco_train or bool(self.coco_val), "coco_val", "needed with coco_train")
        require(not (self.resume and self.exist_ok), "exist_ok", "cannot be combined with resume=true")

    @property
    def out_dir(self) -> Path:
        return Path(self.project) / self.name / "teachers" / "dinov3_lora"


# ---------------------------------------------------------------- data


def read_data(cfg: FinetuneConfig) -> tuple[list, list, Any]:
    """(train records, val records, train AnnotationSummary) from the configured source."""
    from dinocache.finetune.objectives import read_coco, read_yolo_split

    if cfg.data:
        train, summary = read_yolo_split(cfg.data, "train")
        val, _ = read_yolo_split(cfg.data, "val")
    else:
        img_dir = cfg.coco_images or None
        train, summary = read_coco(cfg.coco_train, img_dir)
        val, _ = read_coco(cfg.coco_val, img_dir, classes=summary.classes)
    if not val:
        raise DataError(f"{cfg.data or cfg.coco_val}: the validation split has no images")
    return train, val, summary


def data_sha256(records: list, sources: list[str]) -> str:
    """Hash of the annotation files and the image list (names and sizes, not pixels: cheap on big sets)."""
    from dinocache.datatools.formats import label_path

    from dinocache.core.data import file_sha256

    h = hashlib.sha256()
    for s in sources:
        if Path(s).is_file() and s.endswith(".json"):
            h.update(file_sha256(s).encode())
    for rec in records:
        p = Path(rec.path)
        h.update(f"{p.name}|{p.stat().st_size if p.exists() else -1}\n".encode())
        lab = label_path(p)
        if lab.is_file():
            h.update(lab.read_bytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    import dinocache

    return {
        "dinocache": dinocache.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- run


def _check_out_dir(cfg: FinetuneConfig) -> Path:
    out = cfg.out_dir
    if cfg.resume:
        state = out / "last" / "trainer_state.pt"
        if not state.is_file():
            raise FinetuneError(f"resume=true but {state} does not exist (nothing to resume in {out})")
        saved_cfg = out / "teacher_config.yaml"
        if saved_cfg.is_file():
            saved = yaml.safe_load(saved_cfg.read_text()) or {}
            now = to_dict(cfg)
            for k in RESUME_FIXED:
                if k in saved and saved[k] != now[k] and not (k == "classes" and not now[k]):
                    raise FinetuneError(
                        f"resume: {k}={now[k]!r} differs from the run's {saved_cfg} ({saved[k]!r})"
                    )
        return out
    if out.exists() and any(out.iterdir()):
        if not cfg.exist_ok:
            raise FinetuneError(
                f"{out} already holds a run; use resume=true to continue it, exist_ok=true to replace it, "
                "or another name="
            )
        shutil.rmtree(out)
    return out


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune; returns the final metadata dict. Raises our error types on bad input."""
    import torch
    from dinocache.finetune.checkpoints import CheckpointManager
    from dinocache.finetune.dataset import DenseTargetDataset
    from dinocache.finetune.manager import NonFiniteLoss, TrainingManager, seed_everything
    from dinocache.finetune.model import DenseLoRA, base_identity, resolve_base
    from dinocache.finetune.objectives import choose_objective
    from dinocache.teacher.model import DinoV3Teacher
    from torch.utils.data import DataLoader

    from dinocache.core.device import select_device

    # --- data decides the objective (before any output is written)
    train_recs, val_recs, summary = read_data(cfg)
    objective = choose_objective(summary)
    if cfg.classes and list(cfg.classes) != summary.classes:
        raise ConfigError(f"classes: {cfg.classes} differ from the data's names {summary.classes}")
    cfg.classes = list(summary.classes)
    print(f"finetune: annotations: {summary.describe()}")
    print(f"finetune: objective chosen from the data: {objective.describe()}")

    # --- base teacher
    base_src = resolve_base(cfg.dino_root)
    teacher = DinoV3Teacher.from_pretrained(base_src, layer=cfg.layer, device="cpu")
    require(
        cfg.imgsz % teacher.patch_size == 0,
        "imgsz",
        f"{cfg.imgsz} is not a multiple of the patch size {teacher.patch_size}",
    )
    identity = base_identity(teacher.model, base_src)
    device = select_device(cfg.device)
    out = _check_out_dir(cfg)

    seed_everything(cfg.seed)
    model = DenseLoRA(
        teacher, objective, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules
    )
    model.backbone.peft_config["default"].base_model_name_or_path = base_src
    model.to(device)
    counts = model.param_counts()
    print(
        f"finetune: trainable params {counts['trainable']:,} (LoRA {counts['trainable_backbone']:,} + head "
        f"{counts['head']:,}) of {counts['total']:,} total ({100 * counts['trainable'] / counts['total']:.2f}%)"
    )

    train_ds = DenseTargetDataset(train_recs, objective, cfg.imgsz, teacher.patch_size, cfg.fliplr, cfg.seed)
    val_ds = DenseTargetDataset(val_recs, objective, cfg.imgsz, teacher.patch_size, 0.0, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(
        train_ds, cfg.batch, shuffle=True, num_workers=cfg.workers, generator=gen, drop_last=False
    )
    val_dl = DataLoader(val_ds, cfg.batch, shuffle=False, num_workers=cfg.workers)
    steps_per_epoch = math.ceil(len(train_dl) / cfg.accumulate)
    manager = TrainingManager(
        model.parameters(),
        cfg.lr,
        cfg.weight_decay,
        steps_per_epoch * cfg.epochs,
        round(cfg.warmup_epochs * steps_per_epoch),
        cfg.grad_clip,
        cfg.accumulate,
        device,
        cfg.amp,
    )
    ckpt = CheckpointManager(out, cfg.best_metric, cfg.patience, cfg.min_delta)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if cfg.resume:
        from dinocache.core.safeload import load_state

        # tensors, numbers, lists and plain dicts only (what save_ckpt writes): no code runs from the file
        state = load_state(out / "last" / "trainer_state.pt")
        model.load_adapter(out / "last")
        manager.load_state_dict(state["manager"])
        ckpt.load_state_dict(state["checkpoints"])
        history = state["history"]
        start_epoch = int(state["epoch"]) + 1
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        print(f"finetune: resuming {out} at epoch {start_epoch + 1}/{cfg.epochs}")
        if start_epoch >= cfg.epochs:
            raise FinetuneError(
                f"resume: the run already did {start_epoch} epochs; set epochs > {start_epoch}"
            )

    out.mkdir(parents=True, exist_ok=True)
    save(cfg, out / "teacher_config.yaml")
    meta: dict[str, Any] = {
        "status": "running",
        "objective": objective.to_dict(),
        "annotations": summary.to_dict(),
        "data_sha256": data_sha256(
            train_recs + val_recs, summary.sources + [cfg.coco_val] if cfg.coco_val else summary.sources
        ),
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        "base": identity,
        "params": counts,
        "versions": versions(),
        "device": str(device),
    }
    adapter_meta = {
        "base": identity,
        "objective": objective.to_dict(),
        "classes": cfg.classes,
        "layer": cfg.layer,
        "imgsz": cfg.imgsz,
        "lora_r": cfg.lora_r,
        "lora_alpha": cfg.lora_alpha,
    }

    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "logs"))

    def write_meta(status: str, message: str = "") -> None:
        meta.update(
            status=status,
            message=message,
            history=history,
            epochs_done=len(history),
            best={"metric": ckpt.metric, "value": ckpt.best, "epoch": ckpt.best_epoch + 1},
        )
        (out / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))

    def publish_top() -> None:
        """The run folder's own adapter files = best/ (what merge-teacher --adapter {out} uses)."""
        if not ckpt.best_dir.is_dir():
            return
        for f in TOP_FILES:
            tmp = out / f".{f}.tmp"
            shutil.copy2(ckpt.best_dir / f, tmp)
            os.replace(tmp, out / f)

    epoch = start_epoch
    status, message, rc_fail = "completed", "", False
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            train_ds.epoch = epoch
            tr = train_one_epoch(model, train_dl, manager, objective, cfg, writer, epoch)
            va = evaluate(model, val_dl, manager, objective, cfg)
            row = {
                "epoch": epoch + 1,
                "train_loss": tr,
                **va,
                "lr": manager.lr,
                "time_s": time.perf_counter() - t0,
            }
            history.append(row)
            if writer is not None:
                for k, v in row.items():
                    if k not in ("epoch",):
                        writer.add_scalar(f"epoch/{k}", v, epoch + 1)
                writer.flush()

            def save_ckpt(folder: Path, _epoch: int = epoch, _row: dict = row) -> None:
                model.save_adapter(folder, {**adapter_meta, "epoch": _epoch + 1, "metrics": _row})
                torch.save(
                    {
                        "epoch": _epoch,
                        "manager": manager.state_dict(),
                        "checkpoints": ckpt.state_dict(),
                        "history": history,
                        "generator": gen.get_state(),
                        "torch_rng": torch.get_rng_state(),
                    },
                    folder / "trainer_state.pt",
                )

            improved = ckpt.update(epoch, row, save_ckpt)
            print(
                f"epoch {epoch + 1}/{cfg.epochs}: train_loss {tr:.4f} val_loss {va['val_loss']:.4f} "
                f"miou {va['miou']:.3f}{' (best)' if improved else ''}",
                flush=True,
            )
            write_meta("running")
            if ckpt.should_stop:
                status = "early_stopped"
                message = (
                    f"early stopping: no {cfg.best_metric} improvement for {ckpt.bad_epochs} epochs "
                    f"(best epoch {ckpt.best_epoch + 1})"
                )
                print(f"finetune: {message}")
                break
    except NonFiniteLoss as e:
        status, rc_fail = "stopped_nonfinite", True
        if ckpt.last_epoch >= 0:
            kept = f"kept the last good checkpoint {ckpt.last_dir} (epoch {ckpt.last_epoch + 1}) and best/ (epoch {ckpt.best_epoch + 1})"
        else:
            kept = "no epoch finished, so there is no checkpoint"
        message = (
            f"loss became {e.value} in epoch {epoch + 1} (optimizer step {e.step}); training stopped; {kept}"
        )
    finally:
        if writer is not None:
            writer.close()
    publish_top()
    write_meta(status, message)
    if rc_fail:
        meta["failed"] = True
        print(f"error: {message}", file=sys.stderr)
        return meta
    print(
        f"finetune: done ({status}); best {cfg.best_metric} {ckpt.best:.4f} at epoch {ckpt.best_epoch + 1}; "
        f"adapter in {out}"
    )
    return meta


def train_one_epoch(model, loader, manager, objective, cfg: FinetuneConfig, writer, epoch: int) -> float:
    from tqdm import tqdm

    model.train()
    total, n = 0.0, 0
    dev = manager.device
    for batch in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not sys.stderr.isatty()):
        img = batch["img"].to(dev, non_blocking=True)
        box = batch["box"].to(dev) if objective.boxes else None
        mask = batch["mask"].to(dev) if objective.masks else None
        with manager.autocast():
            logits = model(img)  # (B, out_channels, g, g)
        losses = dense_loss(logits, box, mask, objective, cfg.box_weight, cfg.mask_weight)
        stepped = manager.backward(losses["loss"])
        b = img.shape[0]
        total += float(losses["loss"].detach()) * b
        n += b
        if writer is not None and stepped:
            writer.add_scalar("train/loss", float(losses["loss"].detach()), manager.steps)
            writer.add_scalar("train/lr", manager.lr, manager.steps)
    manager.step()  # a trailing partial accumulation still updates
    return total / max(1, n)


def evaluate(model, loader, manager, objective, cfg: FinetuneConfig) -> dict[str, float]:
    import torch
    from dinocache.finetune.objectives import IoUMeter

    model.eval()
    meter = IoUMeter(objective)
    sums: dict[str, float] = {"loss": 0.0, "box": 0.0, "mask": 0.0}
    n = 0
    dev = manager.device
    with torch.no_grad():
        for batch in loader:
            img = batch["img"].to(dev)
            box = batch["box"].to(dev) if objective.boxes else None
            mask = batch["mask"].to(dev) if objective.masks else None
            with manager.autocast():
                logits = model(img)
            losses = dense_loss(logits, box, mask, objective, cfg.box_weight, cfg.mask_weight)
            b = img.shape[0]
            for k in sums:
                sums[k] += float(losses[k]) * b
            n += b
            meter.update(logits, box, mask)
    out = {"val_loss": sums["loss"] / max(1, n)}
    if objective.boxes:
        out["val_box_loss"] = sums["box"] / max(1, n)
    if objective.masks:
        out["val_mask_loss"] = sums["mask"] / max(1, n)
    out.update(meter.compute())
    return out


def dense_loss(*args, **kwargs):
    # Indirection so tests can inject a non-finite loss (monkeypatch finetune.train.dense_loss).
    from dinocache.finetune.objectives import dense_loss as _dense_loss

    return _dense_loss(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """`dinocache finetune-teacher --config config.json [key=value ...]`"""
    ap = argparse.ArgumentParser(prog="dinocache finetune-teacher", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="config.json (section 'finetune_teacher')")
    ap.add_argument("overrides", nargs="*", help="key=value overrides")
    args = ap.parse_args(argv)
    try:
        cfg = load(FinetuneConfig, args.config, SECTION, args.overrides)
        meta = run(cfg)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if meta.get("failed"):
        return 1
    # the next step, said here and not by run(): an API caller (make-demo-teacher) merges the adapter
    # itself and deletes its working folder, so a hint from run() would point at nothing
    out = cfg.out_dir
    print(f"next: dinocache merge-teacher --adapter {out} --out {Path(out).parent / 'dinov3_merged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
