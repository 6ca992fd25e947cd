"""Run one benchmark scenario in a fresh Python subprocess and measure its peak memory.

Peak memory is `torch.cuda.max_memory_allocated` reported by the scenario itself when CUDA is there,
else the peak RSS of the subprocess (its own VmHWM; `os.wait4`'s ru_maxrss as a fallback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_scenario(
    module: str, args: list[str], timeout: float = 1200, env: dict[str, str] | None = None
) -> dict:
    """`python -m MODULE --out JSON ARGS...` in a fresh process; returns its JSON + `peak_rss_mib`."""
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "out.json"
        cmd = [sys.executable, "-m", module, "--out", str(out), *args]
        e = dict(os.environ)
        e.setdefault("YOLO_OFFLINE", "1")
        e["YOLO_AUTOINSTALL"] = "0"
        e.setdefault("WANDB_MODE", "offline")
        e.setdefault("HF_HUB_OFFLINE", "1")
        e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
        if env:
            e.update(env)
        log = Path(td) / "log.txt"
        with open(log, "w") as lf:
            p = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=lf, stderr=subprocess.STDOUT)
            try:
                _, status, usage = _wait4(p, timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise RuntimeError(
                    f"{module} {args} timed out after {timeout}s:\n{log.read_text()[-3000:]}"
                ) from None
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not out.exists():
            raise RuntimeError(f"{module} {args} failed (exit {code}):\n{log.read_text()[-4000:]}")
        res: dict[str, Any] = json.loads(out.read_text())
        # The scenario's own VmHWM when it reports one: the kernel's ru_maxrss of a child also holds the
        # parent's RSS at fork+exec time (the pytest process with torch loaded), which would mask it.
        res["peak_rss_mib"] = res.get("vm_hwm_mib") or round(usage.ru_maxrss / 1024, 1)
        return res


def _wait4(p: subprocess.Popen, timeout: float):
    import time

    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(p.args, timeout)
        time.sleep(0.05)


def peak_mem_mib(res: dict) -> float:
    """The memory figure to compare: CUDA peak allocated when measured on a GPU, else peak RSS."""
    if res.get("cuda_max_allocated_mib") is not None:
        return float(res["cuda_max_allocated_mib"])
    return float(res["peak_rss_mib"])
