"""The one device resolver: the `device` key of every entry point means the same thing everywhere.

Accepted names: "auto" (first CUDA GPU, else the CPU), "cpu", "cuda", "cuda:N", "N" (Ultralytics style).
`select_device` gives the torch.device our own modules run on (teacher, precompute, fine-tuning);
`ultralytics_device` gives the same choice as the string Ultralytics' trainer takes ("cpu", "0", "0,1").
"""

from __future__ import annotations

import torch

from dinocache.core.config import ConfigError


def select_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> cuda:0 if available else cpu; "cpu"; "cuda"/"cuda:1"; "0" / "1" (Ultralytics style).

    A CUDA device that torch cannot see is a ConfigError naming the `device` key."""
    if isinstance(device, torch.device):
        dev = device
    else:
        s = str(device).strip().lower()
        if s in ("", "auto"):
            return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        if s.isdigit():
            s = f"cuda:{s}"
        try:
            dev = torch.device(s)
        except RuntimeError:
            raise ConfigError(
                f"device: {device!r} is not a device (use auto, cpu, cuda, cuda:N or N)"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {device!r} asked for CUDA but torch sees no CUDA device")
        idx = 0 if dev.index is None else dev.index
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"device: {device!r} but only {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", idx)
    return dev


def ultralytics_device(device: str | torch.device = "auto") -> str:
    """The same choice for Ultralytics' trainer: "cpu", or CUDA indices "0" / "0,1" (a comma list is passed
    through index by index, each checked by `select_device`)."""
    parts = [p.strip() for p in str(device).split(",") if p.strip()] or ["auto"]
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        ids = [int(p) for p in parts]
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = [i for i in ids if i >= n]
        if missing:  # refused by count, naming what exists, before anything is written
            have = f"{n} CUDA GPU{'s' if n != 1 else ''}" + (f" (0..{n - 1})" if n else "")
            raise ConfigError(
                f"device: {device!r}: multi-GPU training needs {len(ids)} CUDA GPUs but this machine has {have}; "
                f"GPU {', '.join(map(str, missing))} does not exist. Use device=cpu, a single GPU, or fewer GPUs"
            )
    devs = [select_device(p) for p in parts]
    if len(devs) > 1 and any(d.type != "cuda" for d in devs):
        raise ConfigError(f"device: {device!r} mixes CPU and CUDA devices")
    if devs[0].type != "cuda":
        return devs[0].type
    return ",".join(str(d.index) for d in devs)
