# dinocache tasks. Recipes find the project's venv (.venv) first, so `.venv/bin/just demo` works
# without activating anything.
export PATH := justfile_directory() + "/.venv/bin:" + env_var('PATH')
export YOLO_AUTOINSTALL := "0"
export YOLO_OFFLINE := env_var_or_default("YOLO_OFFLINE", "1")
export HF_HUB_OFFLINE := env_var_or_default("HF_HUB_OFFLINE", "1")
export WANDB_MODE := env_var_or_default("WANDB_MODE", if env_var_or_default("WANDB_API_KEY", "") == "" { "offline" } else { "online" })

# Arguments reach the commands as they were typed (`just train 'extra={close_mosaic: 0}'` stays one argument).
set positional-arguments

config := "config.json"

# list recipes
default:
    @just --list

# whole pipeline on the embedded default: demo data, tiny teacher, augment, precompute, verify, train
demo *ARGS:
    dinocache demo --config {{config}} "$@"

# generate the synthetic OBB dataset into the folder of config.json's augment.data (skipped when present)
demo-data:
    dinocache demo --config {{config}} --only data

# build a tiny random DINOv3 into config.json's dino_root (skipped when present)
tiny-teacher:
    dinocache demo --config {{config}} --only teacher

# offline augmentation: dataset/ -> dataset/augmented/
augment *ARGS:
    dinocache augment --config {{config}} "$@"

# run the teacher once per augmented image into the Zarr cache
precompute *ARGS:
    dinocache precompute --config {{config}} "$@"

# check the cache against the dataset and teacher named in config.json (key=value overrides: cache=, data=, ...)
verify *ARGS:
    dinocache cache verify --config {{config}} "$@"

# validate the training data named in config.json once (remembered by the dataset's hash; `--force` re-checks)
check-dataset *ARGS:
    dinocache check-dataset --config {{config}} "$@"

# train the YOLO26-n OBB student (key=value overrides, e.g. `just train epochs=3`); checks the dataset first
train *ARGS: (check-dataset "--before-train" ARGS)
    dinocache train --config {{config}} "$@"

# distillation-only pretraining of the student on the cached maps of unlabeled images (then `just train model=...best.pt`)
pretrain *ARGS:
    dinocache pretrain --config {{config}} "$@"

# pretrain on 400 unlabeled demo images, then none vs pretrain fine-tuned on 64 labelled ones, 200 held out (~15 min; `seeds=3 pretrain.epochs=50`)
demo-pretrain *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    dinocache demo --config {{config}} --only teacher
    d=artifacts/demo-pretrain
    sizes=$(python -c "from dinocache.finetune.demo_teacher import DemoTeacherConfig as C; c = C(); print(f'min_size={c.min_size} max_size={c.max_size}')")
    [ -f $d/labelled/data.yaml ] || dinocache demo-data $d/labelled $sizes --train 64 --val 200 --imgsz 128 --seed 11
    [ -f $d/unlabeled/data.yaml ] || dinocache demo-data $d/unlabeled $sizes --train 400 --val 1 --imgsz 128 --seed 12
    dinocache precompute --config {{config}} data=$d/unlabeled/images/train cache=$d/unlabeled.zarr
    dinocache compare --config {{config}} modes=none,pretrain seeds=1 val_every=5 out=$d/compare-$(date +%Y%m%d-%H%M%S) \
        train.data=$d/labelled/data.yaml pretrain.data=$d/unlabeled/images/train pretrain.cache=$d/unlabeled.zarr \
        pretrain.epochs=20 "$@"

# A/B of distillation over seeds on your data and teacher (e.g. `just compare modes=none,cache,online seeds=3 epochs=20`)
compare *ARGS:
    dinocache compare --config {{config}} "$@"

# the small DINOv3 ConvNeXt trained on demo data (shipped; --rebuild or other settings build one); prints its folder (use it as dino_root)
demo-teacher *ARGS:
    dinocache make-demo-teacher "$@"

# LoRA fine-tune the teacher (see merge-teacher)
finetune-teacher *ARGS:
    dinocache finetune-teacher --config {{config}} "$@"

# merge LoRA adapters into a plain DINOv3 folder (--adapter DIR --out DIR)
merge-teacher *ARGS:
    dinocache merge-teacher "$@"

# the default test run (slow tests deselected)
test *ARGS:
    python -m pytest -m "not slow" "$@"

# every test, slow ones included
test-all *ARGS:
    python -m pytest "$@"

# only the slow tests (SIGKILL/torchrun/S3 end to end, slow teacher families); CI runs them after `just test`
test-slow *ARGS:
    python -m pytest -m slow "$@"

# the fault-injection suite, slow kills included; writes the README's Reliability figures to docs/reliability.{json,md}
faults *ARGS:
    DINOCACHE_FAULTS_SUMMARY=docs/reliability.json python -m pytest tests/faults -p no:cacheprovider "$@"

# the benchmark suite (writes benchmarks/results/latest.json and BENCHMARKS.md)
bench *ARGS:
    python -m pytest benchmarks/ --benchmark "$@"

# `python -m pip`: the venv's own interpreter, even where the pip script names another one (a copied venv)
# (re)install this checkout into the current venv with the lock's exact versions (extra pip arguments pass through)
install *ARGS:
    python -m pip install -q -c requirements/lock.txt --config-settings editable_mode=strict -e '.[dev,test]' "$@"

# regenerate requirements/lock.txt from pyproject.toml (+ requirements/holds.txt) in a fresh venv, frozen
lock:
    .ci/lock

# format the code
fmt:
    ruff format .
    ruff check --fix .

# lint and the import floors (layer contract in pyproject.toml, checked by import-linter)
check:
    ruff check .
    ruff format --check .
    python .ci/layers.py
