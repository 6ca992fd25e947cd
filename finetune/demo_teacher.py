"""A knowledgeable small DINOv3 teacher, made with the project's own tools, shipped and rebuildable.

    dinocache make-demo-teacher [OUT] [--imgsz 128] [--n-train 8000] [--epochs 30] [--seed 0] [--rebuild]

Real DINOv3 weights can't be downloaded everywhere, and a random teacher teaches nothing. This makes one whose
patch features encode the demo's object classes:

1. `demo-data` with its own seed (`data_seed`, default 1000: never the students' seeds 0..99, nor the probe's
   2000) -> `n_train` + `n_val` labelled images at `imgsz`, objects 0.16-0.6 of the side;
2. a random DINOv3 ConvNeXt of the shape below (transformers' `DINOv3ConvNextModel`, saved like
   `make-tiny-teacher --family dinov3_convnext` saves one) with three stages (strides 4/8/16), so its last
   stage -- what precompute reads by default (`dino_layer=-1`, after the final norm) -- has one cell per 16
   image pixels, the grid of a patch-16 ViT (8x8 at 128 px);
3. training of every weight (finetune's `TrainingManager`: AdamW, warmup and cosine, clipping) on the
   per-patch class map (finetune's `DenseTargetDataset` targets) through a 1x1 head that is dropped
   afterwards, so what it needed must be linearly readable from the features themselves. The features are
   the registry teacher's own (`load_teacher` of the saved random folder, the function precompute calls), so
   what is trained is exactly what is cached. The class-map cross-entropy weights each class by
   (1 / its patch share) ** `class_balance`: ~80 % of the patches are background. Each image is flipped
   and transposed at random (the 8 symmetries of the square: the demo's shapes are drawn at every angle);
4. `save_pretrained` -> a plain DINOv3 folder (config.json + model.safetensors + preprocessor_config.json).

Why a ConvNeXt rather than a ViT: a patch's class is the class of the rotated box around it, so the inside
of every shape and the background inside an ellipse's, cross's, triangle's or L's box carry that class and
the class comes only from the outline in the neighbouring patches, which convolutions learn quickly.
Measured on one CPU thread with 8,000 images and the 8 symmetries: this ConvNeXt reaches 0.60 val balanced
class accuracy after 10 epochs and 0.82 after 16 of a 30-epoch run, while a DINOv3 ViT from scratch (hidden
128, 4 blocks, patch 16) trained the same way reaches 0.42 after 10 epochs. What the build needs most is
optimisation steps: the default runs 15,000 (30 epochs of 8,000 images, batch 16). The probe figures are in
BENCHMARKS.md (`signal.teacher_probe`).

The default build is shipped in the repository (`finetune/demo_teacher_weights/`, ~1 MB): with the default
settings and no `--rebuild`, the shipped folder is returned (copied to OUT when OUT is given). Other settings
are built and cached: with no OUT in `$DINOCACHE_HOME/teachers/demo-<key>` (default `~/.cache/dinocache`),
key = hash of the settings; a later call with the same settings returns it at once. `--rebuild` builds the
default again (tests/finetune/test_finetune_demo_teacher.py checks, slow, that a rebuild reaches the shipped
probe figures). Every step is seeded; on one CPU thread the same settings give the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from dinocache.core.config import Config, ConfigError, build, require, rule
from dinocache.core.errors import DinocacheError
from dinocache.core.fsutil import publish_dir

INFO_FILE = "demo_teacher.json"
# settings that do not change the weights (not in the key)
NOT_WEIGHTS = ("out", "rebuild", "probe_images")
# the default build, shipped with the package (rebuilt by `dinocache make-demo-teacher --rebuild`)
SHIPPED = Path(__file__).resolve().parent / "demo_teacher_weights"


@dataclass
class DemoTeacherConfig(Config):
    # output folder; empty = the shipped folder (default settings) or $DINOCACHE_HOME/teachers/demo-<key>
    out: str = ""
    # square image size the teacher is trained at (use the size you precompute at; a multiple of the stride)
    imgsz: int = 128
    # generated labelled training images
    n_train: Annotated[int, Field(ge=8)] = 8000
    # generated validation images (the fine-tuning's mIoU and balanced patch accuracy)
    n_val: Annotated[int, Field(ge=1)] = 200
    # demo-data seed of the teacher's images (the students' data use other seeds)
    data_seed: Annotated[
        int, rule(lambda v: v >= 100, "must be >= 100 (0..99 are the students' data seeds)")
    ] = 1000
    # object long side as a fraction of imgsz (demo-data's min_size/max_size); at 128 px twice demo-data's
    # defaults, so objects span as many 16-px patches as the default demo's do at 256 px
    min_size: float = 0.16
    max_size: float = 0.6
    # seed of the random initial weights, the shuffling and the flips
    seed: int = 0
    # channels of the ConvNeXt stages (DINOv3ConvNextConfig.hidden_sizes); stage i has stride 4 * 2**i, so
    # three stages end at stride 16 (the last stage is the teacher's map); the last entry is the map's depth
    hidden_sizes: Annotated[list[Annotated[int, Field(ge=8)]], Field(min_length=1, max_length=4)] = field(
        default_factory=lambda: [16, 48, 96]
    )
    # ConvNeXt blocks per stage (DINOv3ConvNextConfig.depths), one entry per stage
    depths: list[Annotated[int, Field(ge=1)]] = field(default_factory=lambda: [1, 1, 3])
    # weight of the class-map loss on each earlier stage's output (strides 4, 8, ..., its own 1x1 head,
    # dropped afterwards) beside the last stage's; 0 = the last stage only. The finer maps give the early
    # stages many local examples of each shape's outline, which the last stage's 8x8 map alone teaches slowly
    deep_supervision: Annotated[float, Field(ge=0)] = 1.0
    # initial layer scale of every block (DINOv3ConvNextConfig.layer_scale_init_value): the released 1e-6
    # starts each block as the identity, which a run of a few thousand steps never grows out of (the network
    # stays nearly linear); 1.0 lets every block act from the first step
    layer_scale: Annotated[float, Field(gt=0)] = 1.0
    # training epochs over the n_train images
    epochs: Annotated[int, Field(ge=1)] = 30
    # images per optimizer step
    batch: Annotated[int, Field(ge=1)] = 16
    # peak AdamW learning rate (random start: a from-scratch rate, not a fine-tuning one)
    lr: Annotated[float, Field(gt=0)] = 2e-3
    # class weights of the class-map loss = (1 / patch share of the class) ** class_balance (0 = unweighted)
    class_balance: Annotated[float, Field(ge=0)] = 0.5
    # held-out demo images (seed 2000) of the linear probe recorded with the build (finetune/probe.py); 0 = none
    probe_images: Annotated[int, rule(lambda v: v == 0 or v >= 4, "must be 0 or >= 4")] = 200
    # build again even when the output folder (or the shipped one) holds these settings
    rebuild: bool = False

    def validate(self) -> None:
        require(
            len(self.depths) == len(self.hidden_sizes) and min(self.depths) >= 1,
            "depths",
            f"must have one entry >= 1 per stage of hidden_sizes {self.hidden_sizes}, got {self.depths}",
        )
        require(
            self.imgsz >= 32 and self.imgsz % self.stride == 0,
            "imgsz",
            f"must be >= 32 and a multiple of the last stage's stride {self.stride}, got {self.imgsz}",
        )

    def key(self) -> str:
        """Hash of everything that changes the weights (not `out`/`rebuild`/`probe_images`)."""
        d = {k: v for k, v in asdict(self).items() if k not in NOT_WEIGHTS}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def stride(self) -> int:
        """Image pixels per cell of the last stage (the teacher's map)."""
        return 4 * 2 ** (len(self.hidden_sizes) - 1)

    def convnext(self) -> dict[str, Any]:
        """The DINOv3ConvNextConfig shape keys."""
        return {
            "hidden_sizes": list(self.hidden_sizes),
            "depths": list(self.depths),
            "layer_scale_init_value": self.layer_scale,
        }


def cache_home() -> Path:
    return Path(os.environ.get("DINOCACHE_HOME") or Path.home() / ".cache" / "dinocache").expanduser()


def default_out(cfg: DemoTeacherConfig) -> Path:
    return cache_home() / "teachers" / f"demo-{cfg.key()}"


def _is_built(out: Path, cfg: DemoTeacherConfig) -> bool:
    info = out / INFO_FILE
    if not (info.is_file() and (out / "config.json").is_file() and (out / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(info.read_text()).get("key") == cfg.key()
    except json.JSONDecodeError:
        return False


def make_demo_teacher(cfg: DemoTeacherConfig | None = None, **values: Any) -> Path:
    """The knowledgeable teacher folder for `cfg` (or DemoTeacherConfig(**values)); builds it when missing."""
    if cfg is None:
        cfg = build(DemoTeacherConfig, values, "make_demo_teacher")
    out = Path(cfg.out).expanduser() if cfg.out else None
    if not cfg.rebuild and out is not None and _is_built(out, cfg):
        return out
    if out is not None and out.exists() and any(out.iterdir()) and not cfg.rebuild:
        if not (out / INFO_FILE).is_file():
            raise ConfigError(
                f"out: {out} exists, is not empty and is no demo teacher (pass --rebuild to replace it)"
            )
    if not cfg.rebuild and _is_built(SHIPPED, cfg):
        if out is None:
            return SHIPPED
        _publish_copy(SHIPPED, out)
        return out
    if out is None:
        out = default_out(cfg)
        if not cfg.rebuild and _is_built(out, cfg):
            return out
    return _build(cfg, out)


def _publish_copy(src: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def random_base(out: Path, cfg: DemoTeacherConfig) -> Path:
    """The random DINOv3 ConvNeXt the teacher starts from (seeded), saved like `make-tiny-teacher` saves one:
    the benchmarks' random-teacher control is this folder."""
    import torch
    from dinocache.teacher.tiny import _preprocessor_config
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        DINOv3ConvNextModel(DINOv3ConvNextConfig(**cfg.convnext())).eval().save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(), indent=2) + "\n")
    (out / "README.md").write_text(
        f"Random DINOv3 ConvNeXt (seed {cfg.seed}) of the demo teacher's shape {cfg.convnext()}: the untrained "
        "control.\n"
    )
    return out


def _in_memory(data_yaml: Path, split: str, imgsz: int, patch: int) -> tuple[Any, Any, Any]:
    """(images (N, 3, S, S) uint8, class-map targets (N, C+1, g, g) float, objective): the split rasterised
    once by finetune's DenseTargetDataset (decoding and rasterising every epoch costs more than the model)."""
    import torch
    from dinocache.finetune.dataset import DenseTargetDataset
    from dinocache.finetune.objectives import choose_objective, read_yolo_split

    recs, summary = read_yolo_split(data_yaml, split)
    obj = choose_objective(summary)
    ds = DenseTargetDataset(recs, obj, imgsz, patch)
    items = [ds[i] for i in range(len(ds))]
    img = torch.stack([(it["img"] * 255).round().to(torch.uint8) for it in items])  # (N, 3, S, S)
    box = torch.stack([it["box"] for it in items])  # (N, C+1, g, g)
    return img, box, obj


def _scores(logits: Any, target: Any) -> dict[str, float]:
    """Balanced accuracy over the classes and objectness (object vs background, mean of the two recalls) of
    the head's argmax on patches where one class covers >= half of the patch (the probe's rule)."""
    pred, true = logits.argmax(1), target.argmax(1)  # (B, g, g)
    m = target.max(1).values >= 0.5
    pred, true = pred[m], true[m]
    recalls = [
        float((pred[true == c] == c).float().mean()) for c in range(target.shape[1]) if (true == c).any()
    ]
    obj = [float((pred[true > 0] > 0).float().mean()), float((pred[true == 0] == 0).float().mean())]
    return {
        "val_balanced_accuracy": sum(recalls) / max(1, len(recalls)),
        "val_objectness": 0.5 * sum(x for x in obj if x == x),
        "val_patch_accuracy": float((pred == true).float().mean()),
    }


def _symmetries(maps: list[Any], g: Any) -> list[Any]:
    """Each image with its class maps through one of the 8 symmetries of the square (random flips of each
    axis, then a random transpose); maps = [images (B, 3, S, S), class maps (B, C+1, h, w) ...], in place."""
    import torch

    for op in (lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.transpose(-1, -2)):
        f = torch.rand(len(maps[0]), generator=g) < 0.5
        for m in maps:
            m[f] = op(m[f])
    return maps


def _say(msg: str) -> None:
    print(msg, flush=True)  # a build takes minutes: each epoch's line shows at once, also through a pipe


def train_teacher(cfg: DemoTeacherConfig, data_yaml: Path, base: Path, log: Any = _say) -> tuple[Any, list]:
    """Training of every weight of `base` on the class map of `data_yaml` (see the module doc); returns (the
    trained DINOv3ConvNextModel, per-epoch history)."""
    import torch
    import torch.nn.functional as F
    from dinocache.finetune.manager import TrainingManager, seed_everything
    from dinocache.teacher.registry import load_teacher

    teacher = load_teacher(base, layer=-1, device="cpu")  # the map precompute reads: last stage, final norm
    if teacher.stride(cfg.imgsz) != cfg.stride:
        raise RuntimeError(f"{base}: teacher stride {teacher.stride(cfg.imgsz)}, expected {cfg.stride}")
    tr_img, tr_box, _ = _in_memory(data_yaml, "train", cfg.imgsz, cfg.stride)
    va_img, va_box, _ = _in_memory(data_yaml, "val", cfg.imgsz, cfg.stride)
    # the earlier stages' own class maps (strides 4, 8, ...) when deep supervision is on
    stages = teacher.model.model.stages[:-1] if cfg.deep_supervision > 0 else []
    aux_box = [_in_memory(data_yaml, "train", cfg.imgsz, 4 * 2**i)[1] for i in range(len(stages))]
    seed_everything(cfg.seed)
    for p in teacher.model.parameters():
        p.requires_grad_(True)
    head = torch.nn.Conv2d(teacher.channels, tr_box.shape[1], kernel_size=1)
    aux_heads = [torch.nn.Conv2d(c, tr_box.shape[1], kernel_size=1) for c in cfg.hidden_sizes[: len(stages)]]
    seen: list[Any] = []  # the earlier stages' outputs of the current forward pass
    hooks = [st.register_forward_hook(lambda _m, _i, out: seen.append(out)) for st in stages]

    def logits(images: Any) -> tuple[Any, list[Any]]:
        seen.clear()
        x = (images - teacher._mean) / teacher._std  # the teacher's own normalisation
        out = head(teacher._features(x))  # (B, 3, S, S) -> (B, C_t, g, g) -> (B, C+1, g, g)
        return out, [h(f) for h, f in zip(aux_heads, seen, strict=True)]  # (B, C+1, S/4, S/4), ...

    share = tr_box.sum((0, 2, 3)) / tr_box.sum()  # (C+1,) patch share of each class
    w = share.clamp(min=1e-6) ** -cfg.class_balance
    w = (w / (w * share).sum()).view(1, -1, 1, 1)  # (1, C+1, 1, 1), mean weight 1 over the patches

    def ce(lg: Any, box: Any) -> Any:
        return -(w * box * F.log_softmax(lg, 1)).sum(1).mean()

    n = len(tr_img)
    steps = math.ceil(n / cfg.batch)
    params = [
        *teacher.model.parameters(),
        *head.parameters(),
        *(q for h in aux_heads for q in h.parameters()),
    ]
    manager = TrainingManager(
        params, cfg.lr, 0.05, steps * cfg.epochs, steps // 2, 1.0, 1, torch.device("cpu"), False
    )
    g = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, cfg.batch):
            j = perm[i : i + cfg.batch]
            # (B, 3, S, S) images and (B, C+1, g, g) class maps, one symmetry of the square each
            img, box, *aux = _symmetries(
                [tr_img[j].float() / 255.0, tr_box[j].clone()] + [a[j].clone() for a in aux_box], g
            )
            out, aux_out = logits(img)
            loss = ce(out, box) + cfg.deep_supervision * sum(
                (ce(o, a) for o, a in zip(aux_out, aux, strict=True)), 0.0
            )
            manager.backward(loss)
            total += float(loss.detach()) * len(j)
        with torch.no_grad():
            val = torch.cat(
                [logits(va_img[k : k + 64].float() / 255.0)[0] for k in range(0, len(va_img), 64)]
            )
        row = {
            "epoch": epoch + 1,
            "train_loss": total / n,
            **_scores(val, va_box),
            "lr": manager.lr,
            "time_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
        }
        history.append(row)
        log(
            f"make-demo-teacher: epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} val balanced acc "
            f"{row['val_balanced_accuracy']:.3f} objectness {row['val_objectness']:.3f} ({row['time_s']} s)",
        )
    for h in hooks:
        h.remove()
    return teacher.model, history


def _build(cfg: DemoTeacherConfig, out: Path) -> Path:
    import torch
    from dinocache.datatools.demo_data import make_demo_dataset

    t0, c0 = time.perf_counter(), time.process_time()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".demo-teacher-work-", dir=out.parent))
    try:
        data = make_demo_dataset(
            work / "data",
            n_train=cfg.n_train,
            n_val=cfg.n_val,
            imgsz=cfg.imgsz,
            seed=cfg.data_seed,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
        )
        base = random_base(work / "base", cfg)
        with torch.random.fork_rng(devices=[]):
            model, history = train_teacher(cfg, data / "data.yaml", base)
        done = work / "teacher"
        model.eval().save_pretrained(done)
        shutil.copy2(base / "preprocessor_config.json", done / "preprocessor_config.json")
        last = history[-1]
        info = {
            "key": cfg.key(),
            "settings": {k: v for k, v in asdict(cfg).items() if k not in NOT_WEIGHTS},
            "method": "training of every weight of a random DINOv3 ConvNeXt on the per-patch class map "
            "(class-balanced cross-entropy, 8 symmetries of the square, 1x1 head dropped)",
            "val_balanced_accuracy": last["val_balanced_accuracy"],
            "val_objectness": last["val_objectness"],
            "history": history,
            "build_s": round(time.perf_counter() - t0, 1),
            "build_cpu_s": round(time.process_time() - c0, 1),
            "torch_threads": torch.get_num_threads(),
        }
        if cfg.probe_images:
            from dinocache.finetune.probe import probe_teacher

            info["probe"] = probe_teacher(
                done, work / "probe", imgsz=cfg.imgsz, channels=32, images=cfg.probe_images,
                min_size=cfg.min_size, max_size=cfg.max_size,
            )  # fmt: skip
            info["probe"].pop("teacher")
            info["build_s"] = round(time.perf_counter() - t0, 1)
            info["build_cpu_s"] = round(time.process_time() - c0, 1)
        (done / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        (done / "README.md").write_text(
            "Knowledgeable small DINOv3 ConvNeXt made by `dinocache make-demo-teacher` (trained on generated demo-data,\n"
            f"seed {cfg.data_seed}); see {INFO_FILE}. For real work use real DINOv3 weights.\n"
        )
        _publish_copy(done, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """`dinocache make-demo-teacher [OUT] [--imgsz 128] [--n-train 2000] [--epochs 8] [--seed 0] [--rebuild]`"""
    ap = argparse.ArgumentParser(prog="dinocache make-demo-teacher", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "out", nargs="?", default="", help="output folder (default: the shipped or per-settings cache folder)"
    )
    d = DemoTeacherConfig()
    for key in (
        "imgsz", "n_train", "n_val", "data_seed", "seed", "hidden_sizes", "depths", "deep_supervision", "layer_scale", "epochs",
        "batch",
        "lr", "class_balance",
        "min_size", "max_size", "probe_images",
    ):  # fmt: skip
        ap.add_argument("--" + key.replace("_", "-"), dest=key, default=str(getattr(d, key)))
    ap.add_argument(
        "--rebuild", action="store_true", help="build again even when OUT (or the shipped) holds one"
    )
    args = vars(ap.parse_args(argv))
    try:
        cfg = build(DemoTeacherConfig, args, "command line")
        out = make_demo_teacher(cfg)
    except DinocacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = json.loads((out / INFO_FILE).read_text())
    p = info.get("probe") or {}
    print(
        f"make-demo-teacher: {out} (linear probe on held-out images: balanced class accuracy "
        f"{p.get('balanced_accuracy', float('nan')):.3f}, objectness {p.get('objectness_balanced_accuracy', float('nan')):.3f}; "
        f"built in {info.get('build_s')} s); use dino_root={out}"
    )
    print(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
