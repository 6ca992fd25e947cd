"""Benchmark scenarios: each module is run as `python -m benchmarks.scenarios.NAME --out JSON ...` in a
fresh process by `benchmarks.harness.run_scenario`, which adds the peak RSS of that process.

Helpers shared by the peer scenarios (the others use `common.py`); they import nothing heavy, so a
scenario controls what it loads and so what its memory figure contains.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EpochClock:
    """Wall time and image count per training epoch, fed from a trainer's epoch/batch callbacks.

    The first `warmup_epochs` epochs are excluded from the figures: they pay for lazy initialisation
    (allocator growth, first-call kernels, dataset caches) that a real multi-epoch run amortises away.
    """

    warmup_epochs: int = 1
    durations: list[float] = field(default_factory=list)
    # CPU seconds of this process (all threads) per epoch: far less sensitive than wall time to other jobs
    # sharing the machine, so a noisy shared CPU still gives comparable figures
    cpu: list[float] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    _t0: float | None = None
    _c0: float = 0.0
    _n: int = 0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        self._n = 0

    def batch(self, n_images: int) -> None:
        self._n += int(n_images)

    def end(self) -> None:
        if self._t0 is None:  # an end without a start (e.g. a trainer firing the hook twice)
            return
        self.durations.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._c0)
        self.images.append(self._n)
        self._t0 = None

    def summary(self) -> dict[str, Any]:
        """epoch_s = median measured epoch (as train_epoch.py); per_image_s = epoch_s / images per epoch;
        cpu_per_image_s = the same from process CPU time."""
        d = self.durations[self.warmup_epochs :]
        n = self.images[self.warmup_epochs :]
        if not d or sum(n) == 0:
            raise RuntimeError(
                f"no measured epoch: {len(self.durations)} epoch(s) ran, {self.warmup_epochs} are warm-up "
                f"(images per epoch: {self.images}); run at least warmup_epochs + 1 epochs"
            )
        epoch_s = statistics.median(d)
        cpu_s = statistics.median(self.cpu[self.warmup_epochs :])
        return {
            "epoch_s": round(epoch_s, 3),
            "per_image_s": round(epoch_s * len(n) / sum(n), 5),
            "cpu_per_image_s": round(cpu_s * len(n) / sum(n), 5),
            "images_per_epoch": round(sum(n) / len(n), 1),
            "measured_epochs": len(d),
            "all_epoch_s": [round(x, 3) for x in self.durations],
        }
