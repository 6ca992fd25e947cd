"""Options of `dinocache train` (section "train" of config.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dinocache.core.config import Config, ConfigError, require

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
    epochs: int = 128
    # square training image size in pixels; must equal the cache's imgsz (and be a multiple of 32)
    imgsz: int = 512
    # images per batch; -1 = Ultralytics AutoBatch (about 60 % of CUDA memory; 16 on CPU), 0 < b < 1 = that
    # fraction of CUDA memory
    batch: int | float = 16
    # dataloader workers (Ultralytics forces 0 on CPU)
    workers: int = 8
    # "auto" (first CUDA GPU, else CPU), "cpu", "0", "cuda:0", ...; "0,1" (or "0,1,2,3", ...) trains on
    # several GPUs with Ultralytics' DDP (batch is the total over the GPUs)
    device: str = "auto"
    # Ultralytics optimizer name (SGD, Adam, AdamW, MuSGD, auto, ...)
    optimizer: str = "AdamW"
    # initial learning rate
    lr0: float = 0.0012
    # final learning rate as a fraction of lr0
    lrf: float = 0.01
    # optimizer weight decay
    weight_decay: float = 0.0006
    # nominal batch size for gradient accumulation (accumulate = round(nbs / batch)); tests use nbs = batch
    nbs: int = 64
    # learning-rate warmup epochs of Ultralytics (not the distillation warmup)
    warmup_epochs: float = 3.0
    # mixed precision on CUDA (CPU always runs fp32)
    amp: bool = True

    # DINOv3 teacher folder (save_pretrained layout) or hub id; online mode runs it, cache mode checks its fingerprint
    dino_root: str = "dinov3"
    # teacher family: auto (from the checkpoint's config.json) or one of teacher/registry.py FAMILIES
    teacher_family: str = "auto"
    # teacher layer: -1 = last_hidden_state (final norm), i >= 0 = hidden_states[i]; must match the cache
    dino_layer: int = -1
    # epochs over which the distillation weight ramps linearly from 0 to its stage value
    dino_distill_warmup_epochs: int = 5
    # student layers whose outputs are distilled (19 = stride-16 neck output of YOLO26-n)
    dino_distill_layers: list[int] = field(default_factory=lambda: [19])
    # D: teacher channels distilled (the first D PCA components of the cache); the student is projected to D
    dino_distill_channels: int = 32
    # projector from each distilled layer to the D teacher channels: linear (1x1 conv), conv (3x3 conv) or mlp
    # (1x1 conv -> GELU -> 1x1 conv); one per layer, dropped from the exported weights
    dino_distill_projector: Literal["linear", "conv", "mlp"] = "linear"
    # per-cell distance of the distillation term: mse (per-channel standardised MSE, as PKD: each image's
    # channels standardised over its cells) or cosine (1 - cos over channels). mse by default: on the tuning
    # split the student's held-out fit beats the shuffled control by 3x cosine's (README "Training the student")
    dino_distill_loss: Literal["cosine", "mse"] = "mse"
    # validation images on which the feature fit is logged each validation (results.csv fit/cos, fit/cos_shuf,
    # fit/gap, ...: the student's projection against each image's teacher map and another image's); 0 = off
    dino_fit_images: int = 32
    # weight of the mean distance over cells that overlap a ground-truth box
    dino_distill_object_weight: float = 1.15
    # weight of the mean distance over the other cells
    dino_distill_background_weight: float = 0.15

    # fraction of the epochs spent in Stage A (frozen backbone); int(epochs * ratio) epochs
    stage_a_ratio: float = 0.3
    # number of leading model layers frozen in Stage A (10 = YOLO26 backbone up to SPPF); unset = 10 when
    # `model` is a pretrained .pt, 0 for a .yaml (random weights: nothing worth protecting by freezing)
    stage_a_freeze: int | None = None
    # distillation weight w in Stage A
    stage_a_distill_weight: float = 0.25
    # distillation weight w in Stage B
    stage_b_distill_weight: float = 0.08

    # save teacher/student feature pictures during training (implemented by the eval/viz issue)
    dino_viz_enabled: bool = True
    # every how many epochs to save them
    dino_viz_every_n_epochs: int = 5
    # fixed training images shown in dino_viz/ (the first ones that hold objects)
    dino_viz_samples: int = 4
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
    # periodic geometric evaluation during training (implemented by the eval issue)
    eval_enabled: bool = True
    # every how many epochs to evaluate
    eval_interval_epochs: int = 2
    # val images drawn per evaluation in eval/epoch_NNN/viz/val/ (the first ones, the same every time)
    eval_viz_max_samples: int = 16
    # IoU threshold of the geometric grade
    eval_iou_threshold: float = 0.75
    # confidence threshold of the geometric grade
    eval_conf_threshold: float = 0.9

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
    model: str = "yolo26n-obb.yaml"
    # run id; empty = a timestamp (YYYYmmdd-HHMMSS)
    name: str = ""
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
    distill_valid_threshold: float = 0.5
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
    #  "stage_a_weight": 0.25, "stage_b_weight": 0.08, "dino_root": DIR}; omitted keys take the dino_* /
    # stage_* values above; each term is its own loss column d_NAME. Empty = the single teacher of `cache`.
    teachers: list[dict[str, Any]] = field(default_factory=list)

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
        self.validate()

    def validate(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(
            self.imgsz >= 32 and self.imgsz % 32 == 0, "imgsz", f"must be a multiple of 32, got {self.imgsz}"
        )
        require(
            self.batch >= 1 and self.batch == int(self.batch) or self.batch == -1 or 0 < self.batch < 1,
            "batch",
            f"must be an integer >= 1, -1 (AutoBatch) or a CUDA memory fraction in (0, 1), got {self.batch}",
        )
        require(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        require(self.dino_fit_images >= 0, "dino_fit_images", f"must be >= 0, got {self.dino_fit_images}")
        if "," in self.device:
            parts = [p.strip() for p in self.device.split(",")]
            require(
                all(p.isdigit() for p in parts),
                "device",
                f"multi-GPU training takes GPU indices like 0,1; got {self.device!r}",
            )
            require(len(set(parts)) == len(parts), "device", f"lists a GPU twice: {self.device!r}")
            require(
                self.batch % len(parts) == 0,
                "batch",
                f"{self.batch} must be a multiple of the {len(parts)} GPUs of device={self.device} "
                "(batch is the total over the GPUs)",
            )
        require(self.lr0 > 0, "lr0", f"must be > 0, got {self.lr0}")
        require(0 < self.lrf <= 1, "lrf", f"must be in (0, 1], got {self.lrf}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.nbs >= 1, "nbs", f"must be >= 1, got {self.nbs}")
        require(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        require(self.dino_layer >= -1, "dino_layer", f"must be -1 or a layer index, got {self.dino_layer}")
        require(
            self.dino_distill_warmup_epochs >= 0,
            "dino_distill_warmup_epochs",
            f"must be >= 0, got {self.dino_distill_warmup_epochs}",
        )
        require(len(self.dino_distill_layers) >= 1, "dino_distill_layers", "needs at least one layer index")
        require(
            all(i >= 0 for i in self.dino_distill_layers),
            "dino_distill_layers",
            f"layer indices must be >= 0, got {self.dino_distill_layers}",
        )
        require(
            len(set(self.dino_distill_layers)) == len(self.dino_distill_layers),
            "dino_distill_layers",
            f"duplicate layers in {self.dino_distill_layers}",
        )
        require(self.dino_distill_channels >= 1, "dino_distill_channels", "must be >= 1")
        for key in (
            "dino_distill_object_weight",
            "dino_distill_background_weight",
            "stage_a_distill_weight",
            "stage_b_distill_weight",
        ):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        require(0 <= self.stage_a_ratio <= 1, "stage_a_ratio", f"must be in [0, 1], got {self.stage_a_ratio}")
        require(
            0 < self.distill_valid_threshold <= 1,
            "distill_valid_threshold",
            f"must be in (0, 1], got {self.distill_valid_threshold}",
        )
        require(
            self.stage_a_freeze is None or self.stage_a_freeze >= 0,
            "stage_a_freeze",
            f"must be >= 0, got {self.stage_a_freeze}",
        )
        require(self.dino_viz_every_n_epochs >= 1, "dino_viz_every_n_epochs", "must be >= 1")
        require(self.eval_interval_epochs >= 1, "eval_interval_epochs", "must be >= 1")
        require(self.dino_viz_samples >= 1, "dino_viz_samples", "must be >= 1")
        require(self.eval_viz_max_samples >= 1, "eval_viz_max_samples", "must be >= 1")
        require(0 <= self.eval_iou_threshold <= 1, "eval_iou_threshold", "must be in [0, 1]")
        require(0 <= self.eval_conf_threshold <= 1, "eval_conf_threshold", "must be in [0, 1]")
        require(bool(self.data or self.dataset_root), "data", "set data (a data.yaml) or dataset_root")
        if self.dataset_root:
            root = Path(self.dataset_root).expanduser().resolve()
            require(
                root in self.data_yaml.parents,
                "dataset_root",
                f"data {self.data!r} is not inside dataset_root {self.dataset_root!r}; set one of them",
            )
        require(bool(self.model), "model", "must name a model yaml or .pt")
        require(
            Path(self.model).suffix in (".yaml", ".yml", ".pt") or hub_parts(self.model) is not None,
            "model",
            f"must be a .yaml or .pt file or a hub id (owner/name, hf://owner/name/file.pt), got {self.model!r}",
        )
        require(
            self.teacher_source != "cache" or bool(self.cache),
            "cache",
            "teacher_source=cache needs a cache path",
        )
        require(
            "/" not in self.name and "\\" not in self.name and self.name not in (".", ".."),
            "name",
            f"must be a plain folder name, got {self.name!r}",
        )
        require(
            not self.distill_shuffle_maps or self.teacher_source == "cache",
            "distill_shuffle_maps",
            "shuffles cached maps: needs teacher_source=cache",
        )
        require(
            self.distill_cache_flips in ("auto", "on", "off"),
            "distill_cache_flips",
            f"must be auto, on or off, got {self.distill_cache_flips!r}",
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


TERM_KEYS = (
    "teacher",
    "layers",
    "channels",
    "object_weight",
    "background_weight",
    "stage_a_weight",
    "stage_b_weight",
    "dino_root",
)


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
    """The `teachers` list as TeacherTerms; a bad entry is a ConfigError naming teachers[i].key."""
    import re

    out: list[TeacherTerm] = []
    if not isinstance(cfg.teachers, list):
        raise ConfigError(f"teachers: must be a list of {{teacher: NAME, ...}} entries, got {cfg.teachers!r}")
    for i, e in enumerate(cfg.teachers):
        where = f"teachers[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{where}: must be a mapping like {{teacher: dino, channels: 32}}, got {e!r}")
        unknown = sorted(set(e) - set(TERM_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {list(TERM_KEYS)}")
        name = str(e.get("teacher", ""))
        if not re.match(r"^[a-z0-9_]{1,8}$", name):
            raise ConfigError(
                f"{where}.teacher: {name!r} must be 1-8 characters of a-z, 0-9 and _ (the cache's teachers/NAME)"
            )
        try:
            t = TeacherTerm(
                teacher=name,
                layers=[int(v) for v in e.get("layers", cfg.dino_distill_layers)],
                channels=int(e.get("channels", cfg.dino_distill_channels)),
                object_weight=float(e.get("object_weight", cfg.dino_distill_object_weight)),
                background_weight=float(e.get("background_weight", cfg.dino_distill_background_weight)),
                stage_a_weight=float(e.get("stage_a_weight", cfg.stage_a_distill_weight)),
                stage_b_weight=float(e.get("stage_b_weight", cfg.stage_b_distill_weight)),
                dino_root=str(e.get("dino_root", "")),
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None
        if not t.layers or any(v < 0 for v in t.layers) or len(set(t.layers)) != len(t.layers):
            raise ConfigError(f"{where}.layers: need distinct layer indices >= 0, got {t.layers}")
        if t.channels < 1:
            raise ConfigError(f"{where}.channels: must be >= 1, got {t.channels}")
        for k in ("object_weight", "background_weight", "stage_a_weight", "stage_b_weight"):
            if getattr(t, k) < 0:
                raise ConfigError(f"{where}.{k}: must be >= 0, got {getattr(t, k)}")
        if any(o.teacher == name for o in out):
            raise ConfigError(f"{where}.teacher: '{name}' is listed twice")
        out.append(t)
    return out


def hub_parts(model: str) -> tuple[str, str | None] | None:
    """(repo id, file or None) when `model` names a Hugging Face hub checkpoint: `owner/name` (no file suffix,
    not an existing path) or `hf://owner/name[/path/file.pt]`; None for a local model file or yaml."""
    import re

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
