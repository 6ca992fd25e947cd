#!/usr/bin/env bash
# Issue 13's GPU benchmark, prepared for a CUDA machine. Installs nothing; runs in < 11 minutes on one GPU.
#
#   bash benchmarks/gpu.sh            # on a CUDA machine, from the repository root (its .venv or the active python)
#   bash benchmarks/gpu.sh --dry-run  # anywhere: every step at toy sizes on the CPU, results to a temp folder
#
# Measures none / cache / online epoch time and torch.cuda.max_memory_allocated with ViT-S- and ViT-L-shaped
# random teachers at 640 px with 8 dataloader workers, plus the dataloader CPU ratio (plain vs cache), and
# writes benchmarks/results/latest.json + BENCHMARKS.md (sections gpu_epoch, gpu_loader, gpu_pretrain_loader,
# gpu_reads, gpu_startup: loader with the mapped reader vs tensorstore, pretraining loader, one-image reads vs
# memmap, time to the first step with the real workers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
fi
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 WANDB_MODE=offline HF_HUB_OFFLINE=1
# nothing is installed: refuse early if a dependency is missing instead of letting a tool fetch it
"$PY" - <<'PYEOF'
import importlib.util, sys
missing = [m for m in ("torch", "ultralytics", "transformers", "zarr", "tensorstore", "dinocache") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"error: missing {missing}; this script installs nothing (pip install -e . first)")
PYEOF
exec timeout 660 "$PY" -m benchmarks.gpu_run "$@"
