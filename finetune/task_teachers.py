"""The seed's data-driven teacher fine-tuning: the annotations pick the teachers, each trained with LoRA.

    dinocache finetune-teachers --config config.json [key=value ...]      # section "finetune_teachers"
    dinocache finetune-teachers coco_train=train.json coco_val=val.json grounding_dino_root=gd sam_root=sam
    dinocache finetune-teachers --data train.json --val val.json --output experiments/exp1 --epochs 50

Unset epochs/batch/lr/LoRA keys come per teacher from configs/defaults/teacher_<family>_lora.yaml; training
images are augmented by the registry's pipeline (boxes and masks move with them); `resume=true` continues
from last/ (adapters + trainer_state.pt). The guide's Python API over this module: finetune/api.py.

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

Why one file of ~900 lines: it is one job end to end (options, the teacher choice from the annotations, the
two transformers task adapters, the per-teacher training loop, its resume state, the merge and the command
line) with no part used elsewhere; the next split would be the two task classes (`GroundingDinoTask`,
`SamTask`) into a module of their own.
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
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from dinocache.finetune import FinetuneError
from pydantic import Field

from dinocache.core.config import Config, ConfigError, load, rule, to_dict
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
class TaskFinetuneConfig(Config):
    # COCO instances JSON for training (bbox and/or segmentation)
    coco_train: Annotated[str, rule(bool, "give the training COCO JSON")] = ""
    # COCO instances JSON for validation (same categories by name)
    coco_val: Annotated[str, rule(bool, "give the validation COCO JSON")] = ""
    # folder the COCO file_names are relative to; empty = each JSON's own folder
    coco_images: str = ""
    # which teachers: [auto] (boxes -> grounding_dino, masks -> sam) or names from grounding_dino, sam, dinov3
    teachers: Annotated[
        list[str],
        rule(
            lambda ts: all(t in KNOWN for t in ts),
            lambda ts: f"{[t for t in ts if t not in KNOWN]} are not among {list(KNOWN)}",
        ),
        rule(bool, "name at least one teacher (or auto)"),
    ] = field(default_factory=lambda: ["auto"])
    # Grounding DINO checkpoint folder (save_pretrained layout with its processor) or hub id
    grounding_dino_root: str = "grounding_dino"
    # SAM checkpoint folder (save_pretrained layout with its processor) or hub id
    sam_root: str = "sam"
    # DINOv3 folder for the dense LoRA (when dinov3 is listed)
    dino_root: str = "dinov3"
    # outputs go to {project}/{name}/
    project: str = "experiments"
    # experiment name
    name: Annotated[str, rule(lambda n: bool(n) and "/" not in n, "must be a plain folder name")] = "exp"
    # square input side of the DINOv3 dense run (when dinov3 is listed)
    imgsz: Annotated[int, rule(lambda v: v >= 64 and v % 32 == 0, "must be a multiple of 32, >= 64")] = 640
    # Grounding DINO's shortest input edge; its longest edge is at most shortest * 1333 / 800, aspect kept, as
    # its image processor does. 0 = the checkpoint processor's own size (800 / 1333 for the released model)
    gd_shortest_edge: Annotated[
        int, rule(lambda v: v == 0 or v >= 32, "must be 0 (the processor's size) or >= 32")
    ] = 0
    # The next keys, left unset, come per teacher from configs/defaults/teacher_<family>_lora.yaml
    # (Grounding DINO 50 epochs, SAM 100, batch 8); a value given here applies to every teacher.
    # epochs per teacher
    epochs: Annotated[int, Field(ge=1)] | None = None
    # images per optimizer step
    batch: Annotated[int, Field(ge=1)] | None = None
    # peak AdamW learning rate
    lr: float | None = None
    # AdamW weight decay
    weight_decay: float | None = None
    # max global grad norm (0 = no clipping)
    grad_clip: float | None = None
    # LoRA rank
    lora_r: Annotated[int, Field(ge=1)] | None = None
    # LoRA scaling numerator
    lora_alpha: int | None = None
    # dropout on the LoRA input
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    # where adapters go: encoder+decoder (default: changes the features the student distils) or decoder (the seed)
    lora_targets: Literal["encoder+decoder", "decoder"] = "encoder+decoder"
    # stop after this many epochs without a lower val loss (0 = never)
    patience: Annotated[int, Field(ge=0)] | None = None
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
    # continue each teacher from teachers/<teacher>_lora/last/ (adapters, optimizer, scheduler, scaler, RNG,
    # epoch); a teacher that finished is kept as it is
    resume: bool = False
    # augment training images (masks and boxes move with them) with the registry's pipeline for the data's
    # characteristics (datatools/registry.py): the ones given plus those read from the data (small/large objects)
    augment: bool = True
    # object characteristics for the augmentation registry, e.g. [changes_shape, reflective_surface]
    characteristics: list[str] = field(default_factory=list)
    # scene settings for the registry, e.g. {lighting: variable, camera: fixed}
    environment: dict[str, str] = field(default_factory=dict)
    # augmentation intensity: low, medium or high
    augment_intensity: Literal["low", "medium", "high"] = "medium"

    @property
    def root(self) -> Path:
        return Path(self.project) / self.name


# the keys configs/defaults/teacher_<family>_lora.yaml fills when they are left unset
PER_TEACHER = (
    "epochs",
    "batch",
    "lr",
    "weight_decay",
    "grad_clip",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "patience",
)


def for_teacher(cfg: TaskFinetuneConfig, family: str) -> TaskFinetuneConfig:
    """`cfg` with every unset per-teacher key taken from the teacher's defaults file."""
    import dataclasses

    from dinocache.finetune.defaults import defaults_file, teacher_defaults

    d = teacher_defaults(family)
    unknown = sorted(set(d) - set(PER_TEACHER))
    if unknown:
        raise ConfigError(f"{defaults_file(f'teacher_{family}_lora.yaml')}: unknown key(s) {unknown}")
    filled = {k: d[k] for k in PER_TEACHER if getattr(cfg, k) is None and k in d}
    missing = [k for k in PER_TEACHER if getattr(cfg, k) is None and k not in d]
    if missing:
        raise ConfigError(f"{family}: {missing} are unset and its defaults file has no value for them")
    return dataclasses.replace(cfg, **filled)


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


def _read_bgr(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"{path}: cannot be read as an image")
    return bgr


def _mask_pixels(m: Any, w: int, h: int) -> np.ndarray:
    """A mask instance (bool array of the image, or normalised polygon points) -> (h, w) uint8."""
    import cv2

    if isinstance(m, np.ndarray) and m.dtype == bool:
        return m.astype(np.uint8)
    g = np.zeros((h, w), np.uint8)
    cv2.fillPoly(g, [(m * np.array([w, h])).round().astype(np.int32)], 1)
    return g


def _pixel_box(g: np.ndarray) -> np.ndarray | None:
    """Pixel xyxy (edge coordinates) of a mask's extent; None for an empty mask."""
    ys, xs = np.nonzero(g)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


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
        # its own aspect-preserving input (shortest edge 800, longest 1333 for the released processor);
        # gd_shortest_edge scales both (tiny test models)
        size = dict(getattr(ip, "size", None) or {})
        short, long = int(size.get("shortest_edge", 800)), int(size.get("longest_edge", 1333))
        if self.cfg.gd_shortest_edge:
            short, long = self.cfg.gd_shortest_edge, round(self.cfg.gd_shortest_edge * long / short)
        from dinocache.finetune.preprocess import MultiModelPreprocessor

        self.pre = MultiModelPreprocessor(
            ["grounding_dino"],
            {
                "grounding_dino": {
                    "shortest_edge": short,
                    "longest_edge": long,
                    "image_mean": self.mean,
                    "image_std": self.std,
                }
            },
        )
        self.input_size = (short, long)
        # the class names as the prompt: "a . b . c ." (lower case, the tokenizer's phrase separator ".")
        self.prompt = " . ".join(c.lower().replace(".", " ") for c in self.classes) + " ."
        self.text = self.processor.tokenizer([self.prompt], return_tensors="pt")
        return base

    def loss(self, model: Any, recs: list[Any], aug: Any = None, rng: Any = None) -> Any:
        import torch

        imgs, labels = [], []
        for rec in recs:
            bgr = _read_bgr(rec.path)
            h, w = bgr.shape[:2]
            boxes, _ = _boxes_and_masks(rec)
            xyxy = np.array([b for _, b in boxes], np.float32).reshape(-1, 4) * [w, h, w, h]  # pixels
            cls = [c for c, _ in boxes]
            if aug is not None:  # the image and its boxes moved by one draw of the pipeline
                o = aug(image=bgr, bboxes=xyxy, rng=rng)
                bgr, xyxy, cls = o["image"], o["bboxes"], [cls[i] for i in o["keep"]]
            imgs.append(np.ascontiguousarray(bgr[..., ::-1]))
            labels.append((xyxy, cls))
        x, meta = self.pre.preprocess_batch(imgs)["grounding_dino"]  # (B, 3, H, W), padded bottom-right
        hh, ww = meta["batch_size"]
        targets = []
        for (xyxy, cls), (sx, sy) in zip(labels, meta["scale"]):
            # boxes normalised to the padded batch canvas, as the processor's pad(update_bboxes=True) does
            b = xyxy * np.array([sx, sy, sx, sy], np.float32) / np.array([ww, hh, ww, hh], np.float32)
            cxcywh = np.stack(
                [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1
            )
            targets.append(
                {
                    "class_labels": torch.tensor(cls, dtype=torch.long, device=self.device),
                    "boxes": torch.from_numpy(cxcywh.astype(np.float32)).to(self.device),
                }
            )
        n = len(recs)
        ids = self.text["input_ids"].expand(n, -1).to(self.device)
        att = self.text["attention_mask"].expand(n, -1).to(self.device)
        out = model(
            pixel_values=x.to(self.device),
            pixel_mask=meta["pixel_mask"].to(self.device),
            input_ids=ids,
            attention_mask=att,
            labels=targets,
        )
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
        from dinocache.finetune.preprocess import MultiModelPreprocessor

        # SamProcessor's input: longest side to image_size (1024), padded bottom-right to a square
        self.pre = MultiModelPreprocessor(
            ["sam"],
            {
                "sam": {
                    "longest_edge": self.side,
                    "pad_size": self.side,
                    "image_mean": self.mean,
                    "image_std": self.std,
                }
            },
        )
        self.input_size = (self.side, self.side)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.prompt = ""
        return base

    def loss(self, model: Any, recs: list[Any], aug: Any = None, rng: Any = None) -> Any:
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
            bgr = _read_bgr(rec.path)
            h, w = bgr.shape[:2]
            full = [_mask_pixels(m, w, h) for _, m in masks]  # (h, w) uint8 per instance
            if aug is not None:  # the image and its masks moved by one draw of the pipeline
                o = aug(image=bgr, masks=full, rng=rng)
                bgr, full = o["image"], o["masks"]
            x, meta = self.pre.preprocess(np.ascontiguousarray(bgr[..., ::-1]))["sam"]  # (3, S, S)
            x = x[None].to(self.device)
            nh, nw = meta["content_size"]
            sx, sy = meta["scale"]
            boxes, gts = [], []
            for g0 in full:
                box = _pixel_box(g0)
                if box is None:  # moved out of the image
                    continue
                boxes.append(box * np.array([sx, sy, sx, sy], np.float32))
                g = np.zeros((self.side, self.side), np.uint8)  # the mask on the padded input canvas
                g[:nh, :nw] = cv2.resize(g0, (nw, nh), interpolation=cv2.INTER_NEAREST)
                gts.append(g)
            if not boxes:
                continue
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


STATE_FILE = "trainer_state.pt"  # in last/ (and best/): what a resumed run needs beside the adapters


def data_characteristics(recs: list[Any]) -> list[str]:
    """Characteristics the registry knows, read from the data: small_objects when the median instance box
    covers under 1 % of its image, large_objects when over 25 %."""
    areas = [
        float((b[2] - b[0]) * (b[3] - b[1])) for r in recs for _, b in _boxes_and_masks(r)[0] if len(b) == 4
    ]
    if not areas:
        return []
    med = float(np.median(areas))
    return ["small_objects"] if med < 0.01 else ["large_objects"] if med > 0.25 else []


def augmentation(cfg: TaskFinetuneConfig, recs: list[Any]) -> tuple[Any, str]:
    """The registry's pipeline for the given + the data's characteristics; (None, why) when off."""
    if not cfg.augment:
        return None, "augmentation off (augment=false)"
    from dinocache.datatools.pipeline import get_augmentation_registry

    found = data_characteristics(recs)
    chars = list(dict.fromkeys([*cfg.characteristics, *found]))
    pipe = get_augmentation_registry().get_pipeline(chars, cfg.environment, cfg.augment_intensity)
    why = f" (read from the data: {found})" if found else ""
    return pipe, pipe.describe() + why


def _rng_state(gens: dict[str, np.random.Generator]) -> dict[str, Any]:
    import random

    import torch

    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        **{k: g.bit_generator.state for k, g in gens.items()},
    }


def _set_rng_state(state: dict[str, Any], gens: dict[str, np.random.Generator]) -> None:
    import random

    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    for k, g in gens.items():
        g.bit_generator.state = state[k]


def train_one(
    cfg: TaskFinetuneConfig, family: str, train: list, val: list, classes: list[str], device: Any, log: Any
) -> dict[str, Any]:
    """LoRA fine-tune one task teacher; returns its metrics. Writes teachers/<family>_lora/.

    Per-teacher defaults (configs/defaults/teacher_<family>_lora.yaml) fill the keys left unset. With
    `resume=true` it continues from last/ (adapters + trainer_state.pt: optimizer, scheduler, scaler, RNG,
    epoch, early-stopping counters), so a killed run ends as the uninterrupted one would."""
    import torch
    from dinocache.finetune.checkpoints import CheckpointManager
    from dinocache.finetune.manager import NonFiniteLoss, TrainingManager, seed_everything

    cfg = for_teacher(cfg, family)
    seed_everything(cfg.seed)
    out = cfg.root / "teachers" / f"{family}_lora"
    state_file = out / "last" / STATE_FILE
    resuming = cfg.resume and state_file.is_file()
    if cfg.resume and not resuming and out.exists() and any(out.iterdir()):
        raise FinetuneError(f"resume: {state_file} does not exist, so {out} cannot be continued")
    if not resuming and out.exists() and any(out.iterdir()):
        if not cfg.exist_ok:
            raise FinetuneError(
                f"{out} already holds a run; pass exist_ok=true to replace it, resume=true to continue it, "
                "or another name="
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
    aug, aug_log = augmentation(cfg, usable)
    print(f"finetune-teachers: {family}: {aug_log}", file=sys.stderr)
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
        "input_size": list(getattr(task, "input_size", ())) or None,
        "augmentation": aug.to_dict() if aug is not None else None,
        "settings": {k: getattr(cfg, k) for k in PER_TEACHER},
    }
    gens = {"order": np.random.default_rng(cfg.seed), "aug": np.random.default_rng([cfg.seed, 1])}
    if family == "sam":
        gens["prompts"] = task.rng
    history: list[dict[str, Any]] = []
    progress = {"epoch": -1}

    def save(folder: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.save_pretrained(str(folder))  # adapter_config.json + adapter_model.safetensors
        (folder / "dinocache_adapter.json").write_text(json.dumps(meta, indent=2, default=str))
        # tensors, numbers, strings and plain containers only: loads with torch.load(weights_only=True)
        torch.save(
            {
                "epoch": progress["epoch"],
                "manager": mgr.state_dict(),
                "checkpoint": ck.state_dict(),
                "history": history,
                "rng": _rng_state(gens),
            },
            folder / STATE_FILE,
        )

    start = 0
    if resuming:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = torch.load(state_file, map_location="cpu", weights_only=True)
        set_peft_model_state_dict(model, load_file(str(out / "last" / "adapter_model.safetensors")))
        mgr.load_state_dict(state["manager"])
        ck.load_state_dict(state["checkpoint"])
        history[:] = state["history"]
        _set_rng_state(state["rng"], gens)
        start = int(state["epoch"]) + 1
        print(
            f"finetune-teachers: {family}: resuming from {out / 'last'} after epoch {start}/{cfg.epochs}",
            file=sys.stderr,
        )
    for epoch in range(start, cfg.epochs):
        if ck.should_stop:
            break
        model.train()
        order = gens["order"].permutation(len(usable))
        losses = []
        t0 = time.perf_counter()
        for b0 in range(0, len(order), cfg.batch):
            recs = [usable[i] for i in order[b0 : b0 + cfg.batch]]
            with mgr.autocast():
                loss = task.loss(model, recs, aug, gens["aug"])
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
        history.append({"epoch": epoch + 1, **metrics, "seconds": time.perf_counter() - t0})
        progress["epoch"] = epoch
        improved = ck.update(epoch, metrics, save)
        log(family, epoch, {**metrics, "lr": mgr.lr})
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
        "epochs": cfg.epochs,
        "batch": cfg.batch,
        "augmentation": meta["augmentation"],
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
    resolved = {
        **to_dict(cfg),
        "chosen_teachers": teachers,
        "classes": summary.classes,
        # each task teacher's settings after its configs/defaults file filled the unset keys
        "per_teacher": {
            t: {k: getattr(for_teacher(cfg, t), k) for k in PER_TEACHER} for t in teachers if t in TASKS
        },
    }
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

                given = {k: getattr(cfg, k) for k in ("epochs", "batch") if getattr(cfg, k) is not None}
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
                        **given,  # unset: the DINOv3 run's own defaults
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


# the guide's CLI flags -> (argparse dest, the key=value they stand for)
FLAGS = {
    "--data": ("coco_train", "coco_train=PATH"),
    "--val": ("coco_val", "coco_val=PATH"),
    "--images": ("coco_images", "coco_images=DIR"),
    "--output": ("output", "project=PARENT name=NAME (the experiment folder)"),
    "--batch-size": ("batch", "batch=N"),
    "--epochs": ("epochs", "epochs=N"),
    "--lora-r": ("lora_r", "lora_r=N"),
    "--lr": ("lr", "lr=X"),
    "--seed": ("seed", "seed=N"),
    "--device": ("device", "device=D"),
}


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The guide's flags as key=value overrides; a flag and its key=value both given is refused."""
    out: list[str] = []
    for dest, _ in FLAGS.values():
        v = getattr(args, dest)
        if v is None:
            continue
        if dest == "output":
            o = Path(v)
            out += [f"project={o.parent}", f"name={o.name}"]
        else:
            out.append(f"{dest}={v}")
    given = {o.split("=", 1)[0] for o in args.overrides}
    twice = sorted({o.split("=", 1)[0] for o in out} & given)
    if twice:
        raise ConfigError(f"{twice} given both as a flag and as key=value; give each once")
    return out


def main(argv: list[str] | None = None) -> int:
    """`dinocache finetune-teachers --config config.json [key=value ...]`"""
    ap = argparse.ArgumentParser(prog="dinocache finetune-teachers", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help=f"config.json (section '{SECTION}')")
    # the guide's flags, each an alias of a key=value override
    for flag, (key, text) in FLAGS.items():
        ap.add_argument(flag, dest=key, default=None, metavar=key.upper(), help=f"= {text}")
    ap.add_argument("overrides", nargs="*", help="key=value overrides")
    args = ap.parse_args(argv)
    try:
        overrides = flag_overrides(args) + list(args.overrides)
        cfg = load(TaskFinetuneConfig, args.config, SECTION, overrides)
        meta = run(cfg)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for fam, r in meta["teachers"].items():
        print(f"finetune-teachers: {fam}: {r['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
