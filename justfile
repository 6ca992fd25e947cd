# dinocache tasks. Recipes find the project's venv (.venv) first, so `.venv/bin/just demo` works
# without activating anything.
export PATH := justfile_directory() + "/.venv/bin:" + env_var('PATH')
export YOLO_AUTOINSTALL := "0"
export YOLO_OFFLINE := env_var_or_default("YOLO_OFFLINE", "1")
export HF_HUB_OFFLINE := env_var_or_default("HF_HUB_OFFLINE", "1")
export WANDB_MODE := env_var_or_default("WANDB_MODE", if env_var_or_default("WANDB_API_KEY", "") == "" { "offline" } else { "online" })

config := "config.json"

# list recipes
default:
    @just --list

# whole pipeline on the embedded default: demo data, tiny teacher, augment, precompute, verify, train
demo *ARGS:
    dinocache demo --config {{config}} {{ARGS}}

# generate the synthetic OBB dataset into dataset/ (skipped when present)
demo-data:
    test -e dataset/data.yaml || dinocache demo-data dataset

# build a tiny random DINOv3 into dinov3/ (skipped when present)
tiny-teacher:
    test -e dinov3/config.json || dinocache make-tiny-teacher dinov3

# offline augmentation: dataset/ -> dataset/augmented/
augment *ARGS:
    dinocache augment --config {{config}} {{ARGS}}

# run the teacher once per augmented image into the Zarr cache
precompute *ARGS:
    dinocache precompute --config {{config}} {{ARGS}}

# check the cache against the dataset and teacher
verify:
    dinocache cache verify artifacts/cache/features.zarr --data dataset/augmented/data.yaml --dino-root dinov3

# train the YOLO26-n OBB student (key=value overrides, e.g. `just train epochs=3`)
train *ARGS:
    dinocache train --config {{config}} {{ARGS}}

# LoRA fine-tune the teacher (see merge-teacher)
finetune-teacher *ARGS:
    dinocache finetune-teacher --config {{config}} {{ARGS}}

# merge LoRA adapters into a plain DINOv3 folder (--adapter DIR --out DIR)
merge-teacher *ARGS:
    dinocache merge-teacher {{ARGS}}

# the default test run (slow tests deselected)
test *ARGS:
    python -m pytest -m "not slow" {{ARGS}}

# every test, slow ones included
test-all *ARGS:
    python -m pytest {{ARGS}}

# the benchmark suite (writes benchmarks/results/latest.json and BENCHMARKS.md)
bench *ARGS:
    python -m pytest benchmarks/ --benchmark {{ARGS}}

# format the code
fmt:
    ruff format .
    ruff check --fix .

# lint and the import floors (layer contract in pyproject.toml, checked by import-linter)
check:
    ruff check .
    ruff format --check .
    python .ci/layers.py
