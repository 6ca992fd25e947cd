"""LoRA vs full fine-tuning of the same DINOv3 on the same batch: peak memory, step time, parameters.

`lora_vs_full(teacher_dir, batch, imgsz, steps)` runs each variant in a fresh Python process, so the
two never share an allocator or a resident-set high-water mark. Memory is what one training step adds
on top of the loaded model: CUDA `max_memory_allocated` above the post-load allocation, else the peak
RSS (`ru_maxrss`) above the post-load RSS. Step time is the median of `steps` timed steps after one
untimed warm-up step (forward, loss, backward, AdamW step).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _vm_hwm_bytes() -> int:
    """Peak RSS of this process in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    import resource

    from dinocache.core.memory import proc_status_kib

    kib = proc_status_kib("VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _measure(
    mode: str, teacher_dir: str, batch: int, imgsz: int, steps: int, device: str = "auto"
) -> dict[str, Any]:
    """One variant in this process (call it in a fresh one)."""

    import torch
    from dinocache.finetune.manager import TrainingManager, seed_everything
    from dinocache.finetune.model import DenseLoRA
    from dinocache.finetune.objectives import Objective, dense_loss
    from dinocache.teacher.model import DinoV3Teacher

    from dinocache.core.device import select_device

    seed_everything(0)
    dev = select_device(device)
    teacher = DinoV3Teacher.from_pretrained(teacher_dir, device="cpu")
    obj = Objective(boxes=True, masks=False, num_classes=4)
    model = DenseLoRA(teacher, obj, r=8, alpha=16, dropout=0.0, full=(mode == "full")).to(dev)
    g = imgsz // teacher.patch_size
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(batch, 3, imgsz, imgsz, generator=gen).to(dev)
    target = torch.softmax(torch.randn(batch, obj.box_channels, g, g, generator=gen), 1).to(dev)
    mgr = TrainingManager(model.parameters(), 1e-4, 0.01, 1000, 0, 1.0, 1, dev, amp=True)
    model.train()
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base_mem = torch.cuda.memory_allocated(dev)
    else:
        base_mem = _vm_hwm_bytes()

    def step() -> None:
        with mgr.autocast():
            logits = model(img)
        mgr.backward(dense_loss(logits, target, None, obj)["loss"])

    times = []
    for i in range(steps + 1):
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(dev)
        if i > 0:  # first step allocates optimizer state and warms kernels
            times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) - base_mem
    else:
        peak = _vm_hwm_bytes() - base_mem
    counts = model.param_counts()
    return {
        "mode": mode,
        "device": str(dev) if not cuda else torch.cuda.get_device_name(dev),
        "memory_kind": "cuda_max_memory_allocated" if cuda else "peak_rss_delta",
        "peak_mem_bytes": int(peak),
        "step_time_s": statistics.median(times) if times else float("nan"),
        "trainable_params": counts["trainable"],
        "total_params": counts["total"],
    }


def _run_fresh(
    mode: str, teacher_dir: str, batch: int, imgsz: int, steps: int, device: str
) -> dict[str, Any]:
    code = (
        "import json, sys; from dinocache.finetune.bench import _measure; "
        f"print('RESULT ' + json.dumps(_measure({mode!r}, {teacher_dir!r}, {batch}, {imgsz}, {steps}, {device!r})))"
    )
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(
            f"benchmark subprocess ({mode}) failed with code {p.returncode}:\n{p.stderr[-2000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def lora_vs_full(
    teacher_dir: str | Path, batch: int = 4, imgsz: int = 224, steps: int = 5, device: str = "auto"
) -> dict[str, Any]:
    """{"lora": {...}, "full": {...}, "memory_ratio": full/lora, "time_ratio": full/lora, "param_ratio"}."""
    res = {m: _run_fresh(m, str(teacher_dir), batch, imgsz, steps, device) for m in ("lora", "full")}
    lo, fu = res["lora"], res["full"]
    res["memory_ratio"] = (
        fu["peak_mem_bytes"] / lo["peak_mem_bytes"] if lo["peak_mem_bytes"] > 0 else float("nan")
    )
    res["time_ratio"] = fu["step_time_s"] / lo["step_time_s"] if lo["step_time_s"] > 0 else float("nan")
    res["param_ratio"] = fu["trainable_params"] / lo["trainable_params"]
    res["batch"], res["imgsz"], res["steps"] = batch, imgsz, steps
    return res


def _measure_task(
    mode: str, family: str, root: str, imgsz: int, steps: int, device: str = "auto"
) -> dict[str, Any]:
    """LoRA vs full for a task teacher (grounding_dino / sam): one training step of finetune-teachers' own
    loss on 2 generated images (boxes + masks), in this process (call it in a fresh one)."""
    import tempfile

    import torch
    from dinocache.datatools.demo_data import make_demo_coco
    from dinocache.finetune.manager import TrainingManager, seed_everything
    from dinocache.finetune.objectives import read_coco
    from dinocache.finetune.task_teachers import TASKS, TaskFinetuneConfig

    from dinocache.core.config import build
    from dinocache.core.device import select_device

    seed_everything(0)
    dev = select_device(device)
    tmp = Path(tempfile.mkdtemp(prefix="task-bench-"))
    p = make_demo_coco(tmp, n=2, imgsz=imgsz, seed=0)
    recs, summary = read_coco(p)
    cfg = build(
        TaskFinetuneConfig,
        {"coco_train": str(p), "coco_val": str(p), "imgsz": imgsz, "gd_shortest_edge": imgsz, "batch": 2},
    )
    task = TASKS[family](cfg, root, summary.classes, dev)
    base = task.load()
    model = (task.wrap(base) if mode == "lora" else base).to(dev)
    for q in model.parameters():
        q.requires_grad_(mode != "lora" or q.requires_grad)
    mgr = TrainingManager(model.parameters(), 1e-4, 0.01, 1000, 0, 1.0, 1, dev, amp=True)
    model.train()
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base_mem = torch.cuda.memory_allocated(dev)
    else:
        base_mem = _vm_hwm_bytes()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with mgr.autocast():
            loss = task.loss(model, recs)
        mgr.backward(loss)
        if cuda:
            torch.cuda.synchronize(dev)
        if i > 0:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) if cuda else _vm_hwm_bytes()) - base_mem
    return {
        "mode": mode,
        "family": family,
        "device": str(dev) if not cuda else torch.cuda.get_device_name(dev),
        "memory_kind": "cuda_max_memory_allocated" if cuda else "peak_rss_delta",
        "peak_mem_bytes": int(peak),
        "step_time_s": statistics.median(times) if times else float("nan"),
        "trainable_params": sum(q.numel() for q in model.parameters() if q.requires_grad),
        "total_params": sum(q.numel() for q in model.parameters()),
    }


def task_lora_vs_full(
    family: str, root: str | Path, imgsz: int = 256, steps: int = 2, device: str = "auto"
) -> dict[str, Any]:
    """Like `lora_vs_full`, for finetune-teachers' Grounding DINO / SAM (each variant in a fresh process)."""
    res: dict[str, Any] = {}
    for mode in ("lora", "full"):
        code = (
            "import json; from dinocache.finetune.bench import _measure_task; "
            f"print('RESULT ' + json.dumps(_measure_task({mode!r}, {family!r}, {str(root)!r}, {imgsz}, {steps}, {device!r})))"
        )
        env = dict(os.environ)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            raise RuntimeError(
                f"task benchmark ({family} {mode}) failed with code {p.returncode}:\n{p.stderr[-2000:]}"
            )
        res[mode] = json.loads(lines[-1][len("RESULT ") :])
    lo, fu = res["lora"], res["full"]
    res["memory_ratio"] = (
        fu["peak_mem_bytes"] / lo["peak_mem_bytes"] if lo["peak_mem_bytes"] > 0 else float("nan")
    )
    res["time_ratio"] = fu["step_time_s"] / lo["step_time_s"] if lo["step_time_s"] > 0 else float("nan")
    res["param_ratio"] = fu["trainable_params"] / max(1, lo["trainable_params"])
    return res


def family_forward_times(roots: dict[str, str], imgsz: int = 512, rounds: int = 3) -> list[dict[str, Any]]:
    """CPU seconds per image of each teacher's `extract_feature_map` (batch 1), families alternated round by
    round in this one process, median of `rounds` (after one warm-up each)."""
    import torch
    from dinocache.teacher.registry import load_teacher

    teachers = {f: load_teacher(r) for f, r in roots.items()}
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    for t in teachers.values():
        t.extract_feature_map(x)
    cpu: dict[str, list[float]] = {f: [] for f in teachers}
    wall: dict[str, list[float]] = {f: [] for f in teachers}
    for _ in range(rounds):
        for f, t in teachers.items():
            c0, w0 = time.process_time(), time.perf_counter()
            t.extract_feature_map(x)
            cpu[f].append(time.process_time() - c0)
            wall[f].append(time.perf_counter() - w0)
    out = []
    for f, t in teachers.items():
        out.append(
            {
                "family": f,
                "params_M": round(sum(p.numel() for p in t.parameters()) / 1e6, 2),
                "input_px": t.input_size(imgsz),
                "grid": "x".join(map(str, t.grid(imgsz))),
                "px_per_cell": t.stride(imgsz),
                "channels": t.channels,
                "cpu_s_per_image": round(statistics.median(cpu[f]), 4),
                "wall_s_per_image": round(statistics.median(wall[f]), 4),
            }
        )
    return out
