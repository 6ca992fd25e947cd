"""Memory figures of this process from /proc/self/status (Linux), for the benchmarks.

`VmHWM` is this process's own peak RSS. `ru_maxrss` is not a substitute in a child: the kernel also
records the parent's RSS at fork+exec time into it, which masks a smaller child's peak.
"""

from __future__ import annotations

from pathlib import Path


def proc_status_kib(field: str) -> int | None:
    """The value in KiB of a /proc/self/status line such as `VmHWM` or `VmRSS`; None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mib() -> float | None:
    """This process's peak resident set size (VmHWM) in MiB."""
    kib = proc_status_kib("VmHWM")
    return None if kib is None else round(kib / 1024, 1)


def rss_mib() -> float | None:
    """This process's current resident set size (VmRSS) in MiB."""
    kib = proc_status_kib("VmRSS")
    return None if kib is None else round(kib / 1024, 1)
