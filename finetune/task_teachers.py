"""The seed's data-driven teacher fine-tuning: the annotations pick the teachers, each trained with LoRA.

    dinocache finetune-teachers --config config.json [key=value ...]      # section "finetune_teachers"
    dinocache finetune-teachers coco_train=train.json coco_val=val.json grounding_dino_root=gd sam_root=sam

boxes -> Grounding DINO (transformers GroundingDinoForObjectDetection with its own detection loss: the class
names joined as the text prompt "a . b . c ."), instance masks -> SAM (transformers SamModel: box prompts from
the annotations, its mask decoder's masks against the instance masks, BCE + dice), both when both exist
(`teachers=[auto]`); `dinov3` in the list also runs the DINOv3 dense LoRA (finetune/train.py). Boxes-only
data with `sam` named explicitly is refused: SAM's mask decoder needs mask targets, and box-filled rectangles
as "masks" would teach it to draw rectangles (documented in docs/teachers.md).

LoRA (peft) on the decoder and, by default, on the image encoder too (`lora_targets=encoder+decoder`): the
student distils the *encoder's* features, which a decoder-only adapter (the seed's choice,
`lora_targets=decoder`) leaves unchanged. AMP on CUDA, grad clipping, best/ + last/, early stopping
(finetune/manager.py, finetune/checkpoints.py). Layout (the seed's):

    {project}/{name}/teachers/grounding_dino_lora/   adapter_config.json, adapter_model.safetensors,
                                                     dinocache_adapter.json (family, base, prompt), best/, last/
    {project}/{name}/teachers/sam_lora/              the same
    {project}/{name}/teacher_config.yaml, metadata.json, logs/{grounding_dino,sam}/ (TensorBoard)

Then `dinocache merge-teacher --adapter .../grounding_dino_lora --out gd_merged` gives a plain checkpoint
folder that precompute takes as dino_root (family read from its config.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from dinocache.finetune import FinetuneError

from dinocache.core.config import load, require, to_dict
from dinocache.core.data import DataError
from dinocache.core.errors import DinocacheError

SECTION = "finetune_teachers"
KNOWN = ("auto", "grounding_dino", "sam", "dinov3")
# peft target regexes (re.fullmatch on module names) per family and part
LORA_TARGETS = {
    "grounding_dino": {
        "decoder": r"model\.decoder\.layers\.\d+\..*\.(query|key|value|out_proj)",
        "encoder": r"model\.backbone\.conv_encoder\.model\..*\.(q_proj|k_proj|v_proj|o_proj)",
    },
    "sam": {
        "decoder": r"mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|out_proj)",
        "encoder": r"vision_encoder\.layers\.\d+\.attn\.(qkv|proj)",
    },
}
MAX_PROMPTS = 16  # box prompts per image for SAM (the rest are sampled away)


@dataclass
class TaskFinetuneConfig:
    # COCO instances JSON for training (bbox and/or segmentation)
    coco_train: str = ""
    # COCO instances JSON for validation (same categories by name)
    coco_val: str = ""
    # folder the COCO file_names are relative to; empty = each JSON's own folder
    coco_images: str = ""
    # which teachers: [auto] (boxes -> grounding_dino, masks -> sam) or names from grounding_dino, sam, dinov3
    teachers: list[str] = field(default_factory=lambda: ["auto"])
    # Grounding DINO checkpoint folder (save_pretrained layout with its processor) or hub id
    grounding_dino_root: str = "grounding_dino"
    # SAM checkpoint folder (save_pretrained layout with its processor) or hub id
    sam_root: str = "sam"
    # DINOv3 folder for the dense LoRA (when dinov3 is listed)
    dino_root: str = "dinov3"
    # outputs go to {project}/{name}/
    project: str = "experiments"
    # experiment name
    name: str = "exp"
    # square input side of Grounding DINO (SAM always uses its own image_size, 1024 for the released one)
    imgsz: int = 640
    # epochs per teacher
    epochs: int = 10
    # images per optimizer step
    batch: int = 4
    # peak AdamW learning rate
    lr: float = 1e-4
    # AdamW weight decay
    weight_decay: float = 0.01
    # max global grad norm (0 = no clipping)
    grad_clip: float = 1.0
    # LoRA rank
    lora_r: int = 16
    # LoRA scaling numerator
    lora_alpha: int = 32
    # dropout on the LoRA input
    lora_dropout: float = 0.05
    # where adapters go: encoder+decoder (default: changes the features the student distils) or decoder (the seed)
    lora_targets: str = "encoder+decoder"
    # stop after this many epochs without a lower val loss (0 = never)
    patience: int = 5
    # auto, cpu, cuda, cuda:N
    device: str = "auto"
    # mixed precision on CUDA (bf16 where supported, else fp16); ignored on CPU
    amp: bool = True
    # seed for init, shuffling and prompt sampling
    seed: int = 0
    # replace an existing {project}/{name}/teachers/<teacher>_lora
    exist_ok: bool = False
    # TensorBoard logs in {project}/{name}/logs/
    tensorboard: bool = True

    def validate(self) -> None:
        require(bool(self.coco_train), "coco_train", "give the training COCO JSON")
        require(bool(self.coco_val), "coco_val", "give the validation COCO JSON")
        bad = [t for t in self.teachers if t not in KNOWN]
        require(not bad, "teachers", f"{bad} are not among {list(KNOWN)}")
        require(bool(self.teachers), "teachers", "name at least one teacher (or auto)")
        require(self.imgsz >= 64 and self.imgsz % 32 == 0, "imgsz", "must be a multiple of 32, >= 64")
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.batch >= 1, "batch", "must be >= 1")
        require(self.lora_r >= 1, "lora_r", "must be >= 1")
        require(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        require(
            self.lora_targets in ("encoder+decoder", "decoder"),
            "lora_targets",
            f"must be encoder+decoder or decoder, got {self.lora_targets!r}",
        )
        require(self.patience >= 0, "patience", "must be >= 0")
        require(bool(self.name) and "/" not in self.name, "name", "must be a plain folder name")

    @property
    def root(self) -> Path:
        return Path(self.project) / self.name


def choose_teachers(cfg: TaskFinetuneConfig, summary: Any) -> list[str]:
    """The data decides: boxes -> grounding_dino, masks -> sam. Named teachers the data cannot supervise are
    refused with the reason."""
    want: list[str] = []
    for t in cfg.teachers:
        if t == "auto":
            want += [
                x
                for x, ok in (
                    ("grounding_dino", summary.has_boxes or summary.has_masks),
                    ("sam", summary.has_masks),
                )
                if ok
            ]
        else:
            want.append(t)
    want = list(dict.fromkeys(want))
    if "sam" in want and not summary.has_masks:
        raise FinetuneError(
            f"teachers: sam needs instance masks (COCO 'segmentation' polygons or RLE) to supervise its mask "
            f"decoder, but {cfg.coco_train} has none ({summary.describe()}); boxes alone would teach it to "
            "draw rectangles. Use grounding_dino for box-only data (teachers=[auto] picks it)"
        )
    if "grounding_dino" in want and not (summary.has_boxes or summary.has_masks):
        raise FinetuneError(
            f"teachers: grounding_dino needs boxes; {cfg.coco_train} has {summary.describe()}"
        )
    if not want:
        raise FinetuneError(
            f"teachers=[auto]: {cfg.coco_train} has neither boxes nor masks ({summary.describe()})"
        )
    return want


# ---------------------------------------------------------------- samples


def _boxes_and_masks(rec: Any) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, Any]]]:
    """(class, xyxy in [0, 1]) per box instance (masks give their box when an image has no box instance)
    and (class, polygon points or bool mask) per mask instance."""
    from dinocache.finetune.objectives import BOX_KINDS

    boxes, masks = [], []
    for ins in rec.instances:
        if ins.kind in BOX_KINDS:
            p = ins.points
            boxes.append((ins.cls, np.array([*p.min(0), *p.max(0)], np.float32)))
        elif ins.points is not None:
            masks.append((ins.cls, ins.points))
        elif ins.mask is not None:
            masks.append((ins.cls, ins.mask))
    if not boxes:
        for c, m in masks:
            boxes.append((c, _mask_box(m)))
    return boxes, masks


def _mask_box(m: Any) -> np.ndarray:
    if isinstance(m, np.ndarray) and m.dtype == bool:
        ys, xs = np.nonzero(m)
        h, w = m.shape
        return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h], np.float32)
    return np.array([*m.min(0), *m.max(0)], np.float32)


def _load_square(path: Path, side: int) -> tuple[np.ndarray, float, tuple[int, int], tuple[int, int]]:
    """RGB uint8 letterboxed to side x side, scale r, (left, top) pad, original (w, h)."""
    import cv2
    from dinocache.finetune.dataset import letterbox

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"{path}: cannot be read as an image")
    img, r, pad = letterbox(bgr, side)
    return np.ascontiguousarray(img[..., ::-1]), r, pad, (bgr.shape[1], bgr.shape[0])


def _to_canvas(xyxy: np.ndarray, r: float, pad: tuple[int, int], wh: tuple[int, int]) -> np.ndarray:
    """Normalised xyxy of the original image -> pixel xyxy on the letterboxed canvas."""
    w, h = wh
    return np.array(
        [
            xyxy[0] * w * r + pad[0],
            xyxy[1] * h * r + pad[1],
            xyxy[2] * w * r + pad[0],
            xyxy[3] * h * r + pad[1],
        ]
    )


def _pixels(imgs: list[np.ndarray], mean: Any, std: Any, device: Any) -> Any:
    import torch

    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div(255)  # (B, 3, S, S) in [0, 1]
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).to(device)


# ---------------------------------------------------------------- the two task teachers


class _Task:
    """One LoRA-wrapped task model with its loss on a list of records."""

    family = "?"

    def __init__(self, cfg: TaskFinetuneConfig, root: str, classes: list[str], device: Any) -> None:
        self.cfg, self.root, self.classes, self.device = cfg, root, classes, device

    def wrap(self, model: Any) -> Any:
        from peft import LoraConfig, get_peft_model

        parts = ["decoder"] if self.cfg.lora_targets == "decoder" else ["encoder", "decoder"]
        target = "|".join(f"({LORA_TARGETS[self.family][p]})" for p in parts)
        for p in model.parameters():
            p.requires_grad_(False)
        lcfg = LoraConfig(
            r=self.cfg.lora_r,
            lora_alpha=self.cfg.lora_alpha,
            lora_dropout=self.cfg.lora_dropout,
            target_modules=target,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, lcfg)


def _expose_embeddings(model: Any) -> None:
    """peft asks for the input embeddings (tied-weight check), which GroundingDinoModel does not expose: they
    are its text backbone's word embeddings."""
    emb = model.model.text_backbone.embeddings.word_embeddings
    model.model.get_input_embeddings = lambda: emb


class GroundingDinoTask(_Task):
    family = "grounding_dino"

    def load(self) -> Any:
        from dinocache.teacher.registry import detect_family
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        if detect_family(self.root) != "grounding_dino":
            raise FinetuneError(f"grounding_dino_root: {self.root} is not a Grounding DINO checkpoint")
        from dinocache.teacher.base import quiet_progress

        with quiet_progress():
            self.processor = AutoProcessor.from_pretrained(self.root)
            base = GroundingDinoForObjectDetection.from_pretrained(self.root)
        _expose_embeddings(base)
        ip = self.processor.image_processor
        self.mean, self.std = list(ip.image_mean), list(ip.image_std)
        # the class names as the prompt: "a . b . c ." (lower case, the tokenizer's phrase separator ".")
        self.prompt = " . ".join(c.lower().replace(".", " ") for c in self.classes) + " ."
        self.text = self.processor.tokenizer([self.prompt], return_tensors="pt")
        return base

    def loss(self, model: Any, recs: list[Any]) -> Any:
        import torch

        s = self.cfg.imgsz
        imgs, labels = [], []
        for rec in recs:
            img, r, pad, wh = _load_square(rec.path, s)
            boxes, _ = _boxes_and_masks(rec)
            xyxy = np.array([_to_canvas(b, r, pad, wh) for _, b in boxes], np.float32).reshape(-1, 4) / s
            cxcywh = (
                np.stack(
                    [
                        (xyxy[:, 0] + xyxy[:, 2]) / 2,
                        (xyxy[:, 1] + xyxy[:, 3]) / 2,
                        xyxy[:, 2] - xyxy[:, 0],
                        xyxy[:, 3] - xyxy[:, 1],
                    ],
                    1,
                )
                if len(xyxy)
                else np.zeros((0, 4), np.float32)
            )
            imgs.append(img)
            labels.append(
                {
                    "class_labels": torch.tensor([c for c, _ in boxes], dtype=torch.long, device=self.device),
                    "boxes": torch.from_numpy(cxcywh.astype(np.float32)).to(self.device),
                }
            )
        x = _pixels(imgs, self.mean, self.std, self.device)
        n = len(recs)
        ids = self.text["input_ids"].expand(n, -1).to(self.device)
        att = self.text["attention_mask"].expand(n, -1).to(self.device)
        out = model(pixel_values=x, input_ids=ids, attention_mask=att, labels=labels)
        return out.loss


class SamTask(_Task):
    family = "sam"

    def load(self) -> Any:
        from dinocache.teacher.registry import detect_family
        from transformers import AutoImageProcessor, SamModel

        if detect_family(self.root) != "sam":
            raise FinetuneError(f"sam_root: {self.root} is not a SAM checkpoint")
        from dinocache.teacher.base import quiet_progress

        with quiet_progress():
            base = SamModel.from_pretrained(self.root)
            ip = AutoImageProcessor.from_pretrained(self.root)
        self.mean, self.std = list(ip.image_mean), list(ip.image_std)
        self.side = int(base.config.vision_config.image_size)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.prompt = ""
        return base

    def loss(self, model: Any, recs: list[Any]) -> Any:
        import cv2
        import torch
        import torch.nn.functional as F

        total = []
        for rec in recs:
            _, masks = _boxes_and_masks(rec)
            if not masks:
                continue
            if len(masks) > MAX_PROMPTS:
                masks = [masks[i] for i in sorted(self.rng.choice(len(masks), MAX_PROMPTS, replace=False))]
            img, r, pad, wh = _load_square(rec.path, self.side)
            x = _pixels([img], self.mean, self.std, self.device)
            boxes, gts = [], []
            for _, m in masks:
                boxes.append(_to_canvas(_mask_box(m), r, pad, wh))
                g = np.zeros((self.side, self.side), np.uint8)
                if isinstance(m, np.ndarray) and m.dtype == bool:
                    sub = cv2.resize(
                        m.astype(np.uint8),
                        (round(wh[0] * r), round(wh[1] * r)),
                        interpolation=cv2.INTER_NEAREST,
                    )
                    g[pad[1] : pad[1] + sub.shape[0], pad[0] : pad[0] + sub.shape[1]] = sub
                else:
                    pts = m * np.array(wh) * r + np.array(pad)
                    cv2.fillPoly(g, [pts.round().astype(np.int32)], 1)
                gts.append(g)
            out = model(
                pixel_values=x,
                input_boxes=torch.from_numpy(np.asarray([boxes], np.float32)).to(self.device),
                multimask_output=False,
            )
            logits = out.pred_masks[0, :, 0]  # (N, 256, 256) low-res mask logits
            gt = torch.from_numpy(np.stack(gts)).float()[:, None].to(self.device)
            gt = F.interpolate(gt, size=logits.shape[-2:], mode="area")[:, 0]  # (N, 256, 256) soft coverage
            bce = F.binary_cross_entropy_with_logits(logits.float(), gt)
            p = logits.float().sigmoid()
            dice = 1 - (2 * (p * gt).sum((1, 2)) + 1) / (p.sum((1, 2)) + gt.sum((1, 2)) + 1)
            total.append(bce + dice.mean())
        if not total:
            return None
        return torch.stack(total).mean()


TASKS = {"grounding_dino": GroundingDinoTask, "sam": SamTask}


def _root_of(cfg: TaskFinetuneConfig, family: str) -> str:
    return cfg.grounding_dino_root if family == "grounding_dino" else cfg.sam_root


def _base_identity(root: str) -> dict[str, Any]:
    from dinocache.teacher.digest import digest, locate

    folder = locate(root)
    return {"source": root, "files": digest(folder) if folder is not None else None}


def train_one(
    cfg: TaskFinetuneConfig, family: str, train: list, val: list, classes: list[str], device: Any, log: Any
) -> dict[str, Any]:
    """LoRA fine-tune one task teacher; returns its metrics. Writes teachers/<family>_lora/."""
    import torch
    from dinocache.finetune.checkpoints import CheckpointManager
    from dinocache.finetune.manager import NonFiniteLoss, TrainingManager, seed_everything

    seed_everything(cfg.seed)
    out = cfg.root / "teachers" / f"{family}_lora"
    if out.exists() and any(out.iterdir()):
        if not cfg.exist_ok:
            raise FinetuneError(
                f"{out} already holds a run; pass exist_ok=true to replace it, or another name="
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    task = TASKS[family](cfg, _root_of(cfg, family), classes, device)
    model = task.wrap(task.load()).to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    usable = [r for r in train if (_boxes_and_masks(r)[1] if family == "sam" else _boxes_and_masks(r)[0])]
    if not usable:
        raise FinetuneError(f"{family}: no training image of {cfg.coco_train} has what it needs")
    steps = math.ceil(len(usable) / cfg.batch) * cfg.epochs
    mgr = TrainingManager(
        model.parameters(), cfg.lr, cfg.weight_decay, steps, 0, cfg.grad_clip, 1, device, cfg.amp
    )
    ck = CheckpointManager(out, "val_loss", cfg.patience)
    meta = {
        "family": family,
        "base": _base_identity(task.root),
        "classes": classes,
        "prompt": task.prompt,
        "lora_targets": cfg.lora_targets,
    }

    def save(folder: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.save_pretrained(str(folder))  # adapter_config.json + adapter_model.safetensors
        (folder / "dinocache_adapter.json").write_text(json.dumps(meta, indent=2, default=str))

    rng = np.random.default_rng(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(usable))
        losses = []
        t0 = time.perf_counter()
        for b0 in range(0, len(order), cfg.batch):
            recs = [usable[i] for i in order[b0 : b0 + cfg.batch]]
            with mgr.autocast():
                loss = task.loss(model, recs)
            if loss is None:
                continue
            try:
                mgr.backward(loss)
            except NonFiniteLoss as e:
                raise FinetuneError(
                    f"{family}: non-finite loss {e.value} at step {e.step}; lower lr"
                ) from None
            losses.append(float(loss.detach()))
        model.eval()
        vals = []
        with torch.no_grad():
            for b0 in range(0, len(val), cfg.batch):
                with mgr.autocast():
                    v = task.loss(model, val[b0 : b0 + cfg.batch])
                if v is not None:
                    vals.append(float(v))
        val_loss = float(np.mean(vals)) if vals else float(np.mean(losses))
        metrics = {"train_loss": float(np.mean(losses)) if losses else float("nan"), "val_loss": val_loss}
        improved = ck.update(epoch, metrics, save)
        history.append({"epoch": epoch + 1, **metrics, "seconds": time.perf_counter() - t0})
        log(family, epoch, metrics)
        print(
            f"finetune-teachers: {family} epoch {epoch + 1}/{cfg.epochs} train {metrics['train_loss']:.4f} "
            f"val {val_loss:.4f}{' (best)' if improved else ''}",
            file=sys.stderr,
        )
        if ck.should_stop:
            print(
                f"finetune-teachers: {family}: early stop after {cfg.patience} epochs without improvement",
                file=sys.stderr,
            )
            break
    for f in ck.best_dir.iterdir():  # the run folder's top level is the best epoch, like the DINOv3 run
        shutil.copy2(f, out / f.name)
    return {
        "out": str(out),
        "best_epoch": ck.best_epoch + 1,
        "best_val_loss": ck.best,
        "trainable_params": trainable,
        "total_params": total,
        "history": history,
    }


def run(cfg: TaskFinetuneConfig) -> dict[str, Any]:
    from dinocache.finetune.objectives import read_coco

    from dinocache.core.device import select_device

    img_dir = cfg.coco_images or None
    train, summary = read_coco(cfg.coco_train, img_dir)
    val, _ = read_coco(cfg.coco_val, img_dir, classes=summary.classes)
    if not val:
        raise DataError(f"{cfg.coco_val}: the validation split has no images")
    teachers = choose_teachers(cfg, summary)
    print(f"finetune-teachers: {summary.describe()} -> teachers {teachers}", file=sys.stderr)
    device = select_device(cfg.device)
    cfg.root.mkdir(parents=True, exist_ok=True)
    resolved = {**to_dict(cfg), "chosen_teachers": teachers, "classes": summary.classes}
    (cfg.root / "teacher_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    writers: dict[str, Any] = {}

    def log(family: str, epoch: int, metrics: dict[str, float]) -> None:
        if not cfg.tensorboard:
            return
        if family not in writers:
            from torch.utils.tensorboard import SummaryWriter

            writers[family] = SummaryWriter(str(cfg.root / "logs" / family))
        for k, v in metrics.items():
            writers[family].add_scalar(k, v, epoch + 1)

    results: dict[str, Any] = {}
    try:
        for family in teachers:
            if family == "dinov3":
                from dinocache.finetune.train import FinetuneConfig
                from dinocache.finetune.train import run as dense_run

                from dinocache.core.config import build

                dcfg = build(
                    FinetuneConfig,
                    {
                        "coco_train": cfg.coco_train,
                        "coco_val": cfg.coco_val,
                        "coco_images": cfg.coco_images,
                        "dino_root": cfg.dino_root,
                        "project": cfg.project,
                        "name": cfg.name,
                        "imgsz": cfg.imgsz,
                        "epochs": cfg.epochs,
                        "batch": cfg.batch,
                        "device": cfg.device,
                        "seed": cfg.seed,
                        "exist_ok": cfg.exist_ok,
                        "tensorboard": cfg.tensorboard,
                    },
                    "finetune_teachers",
                )
                results["dinov3"] = {"out": str(dcfg.out_dir), "metadata": dense_run(dcfg)}
                continue
            results[family] = train_one(cfg, family, train, val, summary.classes, device, log)
    finally:
        for w in writers.values():
            w.close()
    import peft
    import torch
    import transformers

    h = hashlib.sha256(Path(cfg.coco_train).read_bytes() + Path(cfg.coco_val).read_bytes()).hexdigest()
    meta = {
        "data": {"train": cfg.coco_train, "val": cfg.coco_val, "sha256": h, "summary": summary.to_dict()},
        "teachers": results,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (cfg.root / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    return meta


def merge_task_adapter(
    adapter: str | Path, out: str | Path, base: str | None = None, overwrite: bool = False
) -> Path:
    """Grounding DINO / SAM base + LoRA adapter -> a plain checkpoint folder (model + processor files) that
    the teacher registry loads like any other (precompute dino_root=out)."""
    import tempfile

    from peft import PeftModel
    from transformers import GroundingDinoForObjectDetection, SamModel

    from dinocache.core.fsutil import publish_dir

    adapter, out = Path(adapter), Path(out)
    meta = json.loads((adapter / "dinocache_adapter.json").read_text())
    family = meta["family"]
    src = base or meta["base"]["source"]
    want = (meta["base"].get("files") or {}).get("id")
    have = _base_identity(src)["files"]
    if want and have and have.get("id") != want:
        raise FinetuneError(
            f"adapter {adapter} was trained on other weights than {src}; pass --base <that folder>"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FinetuneError(f"out: {out} exists and is not empty (pass --overwrite to replace it)")
    from dinocache.teacher.base import quiet_progress

    cls = GroundingDinoForObjectDetection if family == "grounding_dino" else SamModel
    with quiet_progress():
        model = cls.from_pretrained(src)
    if family == "grounding_dino":
        _expose_embeddings(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        merged = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        for f in Path(src).iterdir() if Path(src).is_dir() else []:
            # the processor: image preprocessing (+ tokenizer for Grounding DINO's prompts)
            if f.is_file() and (
                f.name.startswith(("preprocessor", "processor", "tokenizer", "special_tokens"))
                or f.name == "vocab.txt"
            ):
                shutil.copy2(f, tmp / f.name)
        (tmp / "merge_info.json").write_text(
            json.dumps({"adapter": str(adapter.resolve()), "adapter_meta": meta}, indent=2, default=str)
        )
        if out.exists():
            shutil.rmtree(out)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """`dinocache finetune-teachers --config config.json [key=value ...]`"""
    ap = argparse.ArgumentParser(prog="dinocache finetune-teachers", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help=f"config.json (section '{SECTION}')")
    ap.add_argument("overrides", nargs="*", help="key=value overrides")
    args = ap.parse_args(argv)
    try:
        cfg = load(TaskFinetuneConfig, args.config, SECTION, args.overrides)
        meta = run(cfg)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for fam, r in meta["teachers"].items():
        print(f"finetune-teachers: {fam}: {r['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
