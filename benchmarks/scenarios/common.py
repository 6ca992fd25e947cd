"""Helpers shared by the scenario subprocesses: device, CUDA peak memory, JSON output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dinocache.core.memory import peak_rss_mib


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--out", required=True, help="JSON file the figures are written to")
    return ap


def cuda_peak_mib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def write(out: str | Path, res: dict[str, Any]) -> None:
    res.setdefault("cuda_max_allocated_mib", cuda_peak_mib())
    res.setdefault("vm_hwm_mib", peak_rss_mib())
    Path(out).write_text(json.dumps(res, indent=1, default=str))
