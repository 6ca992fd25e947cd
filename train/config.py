"""Options of `dinocache train` (section "train" of config.json)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt

from dinocache.core.config import Config, ConfigError, check_fields, distinct, require, rule

# Ultralytics augmentation arguments that move pixels: with them the cached teacher map (computed once on the
# un-augmented image) no longer lies under the pixels the student sees, so cache/online runs switch them off.
GEOMETRIC_AUGMENTATIONS: dict[str, float] = {
    "mosaic": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "copy_paste": 0.0,
    "degrees": 0.0,
    "translate": 0.0,
    "scale": 0.0,
    "shear": 0.0,
    "perspective": 0.0,
    "multi_scale": 0.0,
}

DEFAULT_DATA = "dataset/augmented/data.yaml"

# Trainer arguments we set ourselves; `extra` may not override them (it would silently break the run layout).
RESERVED_EXTRA = {"model", "data", "project", "name", "exist_ok", "resume", "task", "mode", "freeze", "rect"}


@dataclass
class TrainConfig(Config):
    # number of training epochs (Stage A + Stage B)
    epochs: Annotated[int, Field(ge=1)] = 128
    # square training image size in pixels; must equal the cache's imgsz (and be a multiple of 32)
    imgsz: Annotated[int, Field(ge=32, multiple_of=32)] = 512
    # images per batch; -1 = Ultralytics AutoBatch (about 60 % of CUDA memory; 16 on CPU), 0 < b < 1 = that
    # fraction of CUDA memory
    batch: Annotated[
        int | float,
        rule(
            lambda b: b >= 1 and b == int(b) or b == -1 or 0 < b < 1,
            "must be an integer >= 1, -1 (AutoBatch) or a CUDA memory fraction in (0, 1), got {value}",
        ),
    ] = 16
    # dataloader workers (Ultralytics forces 0 on CPU)
    workers: Annotated[int, Field(ge=0)] = 8
    # "auto" (first CUDA GPU, else CPU), "cpu", "0", "cuda:0", ...; "0,1" (or "0,1,2,3", ...) trains on
    # several GPUs with Ultralytics' DDP (batch is the total over the GPUs)
    device: Annotated[
        str,
        rule(
            lambda d: all(p.isdigit() for p in gpu_list(d)),
            "multi-GPU training takes GPU indices like 0,1; got {value!r}",
        ),
        rule(lambda d: len(set(gpu_list(d))) == len(gpu_list(d)), "lists a GPU twice: {value!r}"),
    ] = "auto"
    # Ultralytics optimizer name (SGD, Adam, AdamW, MuSGD, auto, ...)
    optimizer: str = "AdamW"
    # initial learning rate
    lr0: Annotated[float, Field(gt=0)] = 0.0012
    # final learning rate as a fraction of lr0
    lrf: Annotated[float, Field(gt=0, le=1)] = 0.01
    # optimizer weight decay
    weight_decay: NonNegativeFloat = 0.0006
    # nominal batch size for gradient accumulation (accumulate = round(nbs / batch)); tests use nbs = batch
    nbs: Annotated[int, Field(ge=1)] = 64
    # learning-rate warmup epochs of Ultralytics (not the distillation warmup)
    warmup_epochs: NonNegativeFloat = 3.0
    # mixed precision on CUDA (CPU always runs fp32)
    amp: bool = True

    # DINOv3 teacher folder (save_pretrained layout) or hub id; online mode runs it, cache mode checks its fingerprint
    dino_root: str = "dinov3"
    # teacher family: auto (from the checkpoint's config.json) or one of teacher/registry.py FAMILIES
    teacher_family: str = "auto"
    # teacher layer: -1 = last_hidden_state (final norm), i >= 0 = hidden_states[i]; must match the cache
    dino_layer: Annotated[int, Field(ge=-1)] = -1
    # epochs over which the distillation weight ramps linearly from 0 to its stage value
    dino_distill_warmup_epochs: Annotated[int, Field(ge=0)] = 5
    # student layers whose outputs are distilled (19 = stride-16 neck output of YOLO26-n)
    dino_distill_layers: Annotated[list[NonNegativeInt], Field(min_length=1), distinct("layers")] = field(
        default_factory=lambda: [19]
    )
    # D: teacher channels distilled (the first D PCA components of the cache); the student is projected to D
    dino_distill_channels: Annotated[int, Field(ge=1)] = 32
    # projector from each distilled layer to the D teacher channels: linear (1x1 conv), conv (3x3 conv) or mlp
    # (1x1 conv -> GELU -> 1x1 conv); one per layer, dropped from the exported weights
    dino_distill_projector: Literal["linear", "conv", "mlp"] = "linear"
    # per-cell distance of the distillation term: mse (per-channel standardised MSE, as PKD: each image's
    # channels standardised over its cells) or cosine (1 - cos over channels). mse by default: on the tuning
    # split the student's held-out fit beats the shuffled control by 3x cosine's (README "Training the student")
    dino_distill_loss: Literal["cosine", "mse"] = "mse"
    # validation images on which the feature fit is logged each validation (results.csv fit/cos, fit/cos_shuf,
    # fit/gap, ...: the student's projection against each image's teacher map and another image's); 0 = off
    dino_fit_images: NonNegativeInt = 32
    # weight of the mean distance over cells that overlap a ground-truth box
    dino_distill_object_weight: NonNegativeFloat = 1.15
    # weight of the mean distance over the other cells
    dino_distill_background_weight: NonNegativeFloat = 0.15

    # fraction of the epochs spent in Stage A (frozen backbone); int(epochs * ratio) epochs
    stage_a_ratio: Annotated[float, Field(ge=0, le=1)] = 0.3
    # number of leading model layers frozen in Stage A (10 = YOLO26 backbone up to SPPF); unset = 10 when
    # `model` is a pretrained .pt, 0 for a .yaml (random weights: nothing worth protecting by freezing)
    stage_a_freeze: NonNegativeInt | None = None
    # distillation weight w in Stage A
    stage_a_distill_weight: NonNegativeFloat = 0.25
    # distillation weight w in Stage B
    stage_b_distill_weight: NonNegativeFloat = 0.08

    # save teacher/student feature pictures during training (dino_viz/epoch_NNN/, train/eval_hooks.py)
    dino_viz_enabled: bool = True
    # every how many epochs to save them
    dino_viz_every_n_epochs: Annotated[int, Field(ge=1)] = 5
    # fixed training images shown in dino_viz/ (the first ones that hold objects)
    dino_viz_samples: Annotated[int, Field(ge=1)] = 4
    # log to Weights & Biases (offline unless WANDB_API_KEY is set)
    wandb_enabled: bool = True
    # W&B project name (the seed's dashboards used "tea-ai-detector"; set it to log there)
    wandb_project: str = "dinocache"
    # W&B entity (user or team); empty = the logged-in account's default
    wandb_entity: str = ""
    # W&B mode: online, offline or disabled; empty = $WANDB_MODE, else online with an API key, offline without
    wandb_mode: str = ""
    # W&B system metrics (CPU, GPU, memory, disk) beside the training scalars
    wandb_system_metrics: bool = True
    # TensorBoard event files in the run folder's tensorboard/
    tensorboard_enabled: bool = True
    # periodic geometric evaluation during training (grade, best_geo.pt, eval overlays; train/eval_hooks.py)
    eval_enabled: bool = True
    # every how many epochs to evaluate
    eval_interval_epochs: Annotated[int, Field(ge=1)] = 2
    # val images drawn per evaluation in eval/epoch_NNN/viz/val/ (the first ones, the same every time)
    eval_viz_max_samples: Annotated[int, Field(ge=1)] = 16
    # IoU threshold of the geometric grade
    eval_iou_threshold: Annotated[float, Field(ge=0, le=1)] = 0.75
    # confidence threshold of the geometric grade
    eval_conf_threshold: Annotated[float, Field(ge=0, le=1)] = 0.9

    # dataset root folder: when set (and `data` is left at its default), data = dataset_root/data.yaml; an
    # explicit `data` must then lie inside it
    dataset_root: str = ""
    # YOLO-OBB data.yaml of the (augmented) dataset the cache was computed on
    data: str = DEFAULT_DATA
    # Zarr feature cache written by `dinocache precompute`; also gives the PCA basis and stats for online mode
    cache: str = "artifacts/cache/features.zarr"
    # root of all run outputs: {artifacts_root}/{model_key}/runs/{run_id}/train/
    artifacts_root: str = "artifacts"
    # student: Ultralytics model yaml (from scratch), .pt checkpoint (fine-tune), or a Hugging Face hub
    # checkpoint: owner/name (its only .pt) or hf://owner/name/file.pt, fetched into the hub cache
    model: Annotated[
        str,
        rule(bool, "must name a model yaml or .pt"),
        rule(
            lambda m: Path(m).suffix in (".yaml", ".yml", ".pt") or hub_parts(m) is not None,
            "must be a .yaml or .pt file or a hub id (owner/name, hf://owner/name/file.pt), got {value!r}",
        ),
    ] = "yolo26n-obb.yaml"
    # run id; empty = a timestamp (YYYYmmdd-HHMMSS)
    name: Annotated[
        str,
        rule(
            lambda n: "/" not in n and "\\" not in n and n not in (".", ".."),
            "must be a plain folder name, got {value!r}",
        ),
    ] = ""
    # random seed
    seed: int = 42
    # where teacher features come from: "cache" (Zarr cache), "online" (teacher forward each step), "none"
    teacher_source: Literal["cache", "online", "none"] = "cache"
    # "warp" keeps Ultralytics' mosaic, affine/perspective and flips on: cache mode warps each cached teacher
    # map with its image (train/warp.py), online mode runs the teacher on the augmented batch; both switch
    # mixup/cutmix/copy_paste/multi_scale off, so cache and online see the same augmentation; "off" switches
    # pixel-moving augmentation off instead (flips stay and flip the map)
    distill_geometric_aug: Literal["off", "warp"] = "warp"
    # warp mode: a teacher cell is distilled when at least this share of its pixels comes from one source
    # image (not mosaic/letterbox/affine-border padding)
    distill_valid_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    # control experiment (cache mode): each training image gets ANOTHER image's cached map (a derangement of
    # the cache's keys seeded by `seed`); it must not help. `dinocache compare` mode cache-shuffled
    distill_shuffle_maps: bool = False
    # cache mode, horizontal flips: "auto" reads the teacher's map of the flipped image when the cache holds
    # flipped views (precompute cache_flips=true) and mirrors the map otherwise; "on" requires them (an error
    # names the cache that lacks them); "off" always mirrors the map (a ViT is not flip-equivariant)
    distill_cache_flips: Literal["auto", "on", "off"] = "auto"
    # continue the run `name` (or the newest run of this model) from weights/resume.pt
    resume: bool = False
    # keep weights/resume.pt (model, EMA, optimizer, RNG: ~40 MB for yolo26n) after a clean finish, to
    # continue the run later with more epochs; by default a run that finished removes it (an interrupted or
    # failed run always keeps it)
    keep_resume: bool = False
    # at start, hash every training image and refuse the run when one changed since it was cached (reads every
    # image once; by default only images whose size/mtime differ from precompute's record are hashed; shard
    # files and done flags are always checked, and every map is checked as it is read)
    verify_images: bool = False
    # other Ultralytics training arguments, e.g. {"hsv_h": 0, "fliplr": 0.5, "patience": 50}; each of them can
    # also be given as a key of its own (`patience=20`, `"close_mosaic": 0`) and lands here
    extra: dict[str, Any] = field(default_factory=dict)
    # multi-teacher distillation from one multi-teacher cache (cache/multi.py): a list of
    # {"teacher": NAME, "layers": [19], "channels": 32, "object_weight": 1.15, "background_weight": 0.15,
    #  "stage_a_weight": 0.25, "stage_b_weight": 0.08, "dino_root": DIR} (TeacherSpec); omitted keys take the
    # dino_* / stage_* values above; each term is its own loss column d_NAME. Empty = the single teacher of
    # `cache`.
    teachers: list[TeacherSpec] = field(default_factory=list)

    # every Ultralytics argument dinocache does not set itself is a key too (gathered into `extra`)
    passthrough_field = "extra"

    @classmethod
    def passthrough_keys(cls) -> set[str]:
        from ultralytics.cfg import DEFAULT_CFG_DICT

        return set(DEFAULT_CFG_DICT) - RESERVED_EXTRA

    def __post_init__(self) -> None:
        # every construction path validates: the config loader, `TrainConfig(...)` by hand, dataclasses.replace
        for key in ("dino_root", "dataset_root", "data", "cache", "artifacts_root", "model", "name"):
            if isinstance(getattr(self, key), Path):  # the seed's API passes Paths
                setattr(self, key, str(getattr(self, key)))
        if self.dataset_root and self.data in ("", DEFAULT_DATA):
            self.data = str(Path(self.dataset_root) / "data.yaml")
        check_fields(self)
        self.validate()

    def validate(self) -> None:
        """The rules that relate several fields (each field's own range is its annotation)."""
        gpus = gpu_list(self.device)
        require(
            len(gpus) < 2 or self.batch % len(gpus) == 0,
            "batch",
            f"{self.batch} must be a multiple of the {len(gpus)} GPUs of device={self.device} "
            "(batch is the total over the GPUs)",
        )
        require(bool(self.data or self.dataset_root), "data", "set data (a data.yaml) or dataset_root")
        if self.dataset_root:
            root = Path(self.dataset_root).expanduser().resolve()
            require(
                root in self.data_yaml.parents,
                "dataset_root",
                f"data {self.data!r} is not inside dataset_root {self.dataset_root!r}; set one of them",
            )
        require(
            self.teacher_source != "cache" or bool(self.cache),
            "cache",
            "teacher_source=cache needs a cache path",
        )
        require(
            not self.distill_shuffle_maps or self.teacher_source == "cache",
            "distill_shuffle_maps",
            "shuffles cached maps: needs teacher_source=cache",
        )
        require(
            self.distill_cache_flips != "on" or self.teacher_source == "cache",
            "distill_cache_flips",
            "=on reads the cache's flipped views: needs teacher_source=cache",
        )
        terms = teacher_terms(self)
        require(
            not (terms and self.distill_cache_flips == "on"),
            "distill_cache_flips",
            "=on is not supported with a `teachers` list (multi-teacher caches hold no flipped views)",
        )
        require(
            not terms or self.teacher_source == "cache",
            "teachers",
            "multi-teacher distillation reads a multi-teacher cache: set teacher_source=cache",
        )
        require(
            not (terms and self.distill_shuffle_maps),
            "distill_shuffle_maps",
            "is a single-teacher control; it is not supported with a `teachers` list",
        )
        # Ultralytics' arguments: checked against its own names and by its own check (errors name its key)
        bad = sorted(set(self.extra) & RESERVED_EXTRA)
        require(not bad, "extra", f"{bad} are set by dinocache itself; use the train options instead")
        from ultralytics.cfg import DEFAULT_CFG_DICT

        # 'augmentations' (a list of Albumentations transforms) is accepted by Ultralytics outside its defaults
        unknown = sorted(k for k in self.extra if k not in DEFAULT_CFG_DICT and k != "augmentations")
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], list(DEFAULT_CFG_DICT), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            require(False, "extra", f"{unknown} are not Ultralytics training arguments{hint}")
        check_ultralytics(self.extra)

    # -- derived values ------------------------------------------------------------------------------------
    @property
    def data_yaml(self) -> Path:
        p = Path(self.data) if self.data else Path(self.dataset_root) / "data.yaml"
        return p.expanduser().resolve()

    @property
    def model_key(self) -> str:
        """`yolo26n-obb.yaml` -> `yolo26n-obb`: the folder under artifacts_root that groups its runs."""
        return Path(self.model).stem

    @property
    def stage_a_epochs(self) -> int:
        return stage_a_epochs(self)

    @property
    def freeze_layers(self) -> int:
        """Stage A's frozen layers: stage_a_freeze, or when unset 10 for a .pt start and 0 for a .yaml one."""
        if self.stage_a_freeze is not None:
            return self.stage_a_freeze
        return 10 if self.pretrained_student else 0

    @property
    def pretrained_student(self) -> bool:
        """A .pt checkpoint or a hub checkpoint (trained weights); a .yaml starts from random weights."""
        return Path(self.model).suffix == ".pt" or hub_parts(self.model) is not None

    @property
    def close_mosaic(self) -> int:
        """Ultralytics' close_mosaic: from `extra` when given, else the last 10 % of the epochs (at most 10,
        Ultralytics' default) so that a short run keeps mosaic for most of its epochs."""
        if "close_mosaic" in self.extra:
            return int(self.extra["close_mosaic"])
        return min(10, int(self.epochs * 0.1))

    @property
    def distills(self) -> bool:
        return self.teacher_source != "none"


def teacher_name_ok(name: str) -> bool:
    """A teacher's name in a multi-teacher cache (teachers/NAME) and its loss column (d_NAME)."""
    return re.fullmatch(r"[a-z0-9_]{1,8}", name) is not None


@dataclass
class TeacherSpec:
    """One entry of TrainConfig.teachers as given; a key left out (None) takes the dino_* / stage_* value."""

    # pydantic refuses keys that are not fields (naming the closest one)
    __pydantic_config__ = {"extra": "forbid"}

    # teacher name in the multi-teacher cache (teachers/NAME); the loss column is d_NAME
    teacher: Annotated[
        str,
        rule(
            teacher_name_ok, "{value!r} must be 1-8 characters of a-z, 0-9 and _ (the cache's teachers/NAME)"
        ),
    ]
    # student layers distilled against this teacher (default: dino_distill_layers)
    layers: Annotated[list[NonNegativeInt], Field(min_length=1), distinct("layers")] | None = None
    # first D PCA channels of this teacher (default: dino_distill_channels)
    channels: Annotated[int, Field(ge=1)] | None = None
    # weight of the object cells (default: dino_distill_object_weight)
    object_weight: NonNegativeFloat | None = None
    # weight of the other cells (default: dino_distill_background_weight)
    background_weight: NonNegativeFloat | None = None
    # distillation weight in Stage A (default: stage_a_distill_weight)
    stage_a_weight: NonNegativeFloat | None = None
    # distillation weight in Stage B (default: stage_b_distill_weight)
    stage_b_weight: NonNegativeFloat | None = None
    # the teacher's folder, checked against the cache's weight-file digest; unset = not checked
    dino_root: str | None = None


TERM_KEYS = tuple(f.name for f in dataclasses.fields(TeacherSpec))


@dataclass
class TeacherTerm:
    """One distillation term of a multi-teacher run (an entry of TrainConfig.teachers, defaults filled)."""

    # teacher name in the multi-teacher cache (teachers/NAME); the loss column is d_NAME
    teacher: str
    # student layers distilled against this teacher
    layers: list[int]
    # first D PCA channels of this teacher
    channels: int
    object_weight: float
    background_weight: float
    stage_a_weight: float
    stage_b_weight: float
    # optional: the teacher's folder, checked against the cache's weight-file digest
    dino_root: str = ""

    @property
    def loss_name(self) -> str:
        return f"d_{self.teacher}"


def teacher_terms(cfg: TrainConfig) -> list[TeacherTerm]:
    """The `teachers` list as TeacherTerms (unset keys from the dino_* / stage_* values); a teacher listed
    twice is a ConfigError naming teachers[i].teacher."""
    out: list[TeacherTerm] = []

    def pick(v: Any, default: Any) -> Any:
        return default if v is None else v

    for i, e in enumerate(cfg.teachers):
        if any(o.teacher == e.teacher for o in out):
            raise ConfigError(f"teachers[{i}].teacher: '{e.teacher}' is listed twice")
        out.append(
            TeacherTerm(
                teacher=e.teacher,
                layers=list(pick(e.layers, cfg.dino_distill_layers)),
                channels=pick(e.channels, cfg.dino_distill_channels),
                object_weight=float(pick(e.object_weight, cfg.dino_distill_object_weight)),
                background_weight=float(pick(e.background_weight, cfg.dino_distill_background_weight)),
                stage_a_weight=float(pick(e.stage_a_weight, cfg.stage_a_distill_weight)),
                stage_b_weight=float(pick(e.stage_b_weight, cfg.stage_b_distill_weight)),
                dino_root=e.dino_root or "",
            )
        )
    return out


def gpu_list(device: str) -> list[str]:
    """`"0,1"` -> ["0", "1"]: the GPUs of a multi-GPU device; [] for a single device."""
    return [p.strip() for p in device.split(",")] if "," in device else []


def hub_parts(model: str) -> tuple[str, str | None] | None:
    """(repo id, file or None) when `model` names a Hugging Face hub checkpoint: `owner/name` (no file suffix,
    not an existing path) or `hf://owner/name[/path/file.pt]`; None for a local model file or yaml."""
    m = re.fullmatch(r"hf://([\w.-]+/[\w.-]+)(?:/(.+\.pt))?", model)
    if m:
        return m.group(1), m.group(2)
    if (
        re.fullmatch(r"[\w-][\w.-]*/[\w-][\w.-]*", model)
        and Path(model).suffix not in (".yaml", ".yml", ".pt")
        and not Path(model).exists()
    ):
        return model, None
    return None


def stage_a_epochs(cfg: TrainConfig) -> int:
    """Stage A length in epochs: int(epochs * stage_a_ratio), as the design defines it."""
    return int(cfg.epochs * cfg.stage_a_ratio)


def check_ultralytics(args: dict[str, Any]) -> None:
    """Ultralytics' own type/range check (`ultralytics.cfg.check_cfg`) of its arguments; errors name the key."""
    from ultralytics.cfg import check_cfg

    for k, v in args.items():
        try:
            check_cfg({k: v}, hard=True)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{k}: {e} (an Ultralytics train argument)") from None
