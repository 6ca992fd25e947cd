"""`best/` by a validation metric, `last/` every epoch, early stopping with patience, resume state.

Each checkpoint folder is written to a temp sibling and renamed into place, so a crash (or a NaN stop)
never leaves a half-written `best/` or `last/`: the previous good one stays.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def publish_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write into `final.tmp`, then swap it in for `final`."""
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointManager:
    """Tracks the best value of `metric` ("val_loss": lower is better, "miou": higher is better)."""

    def __init__(
        self, out_dir: Path, metric: str = "val_loss", patience: int = 5, min_delta: float = 0.0
    ) -> None:
        self.out_dir = Path(out_dir)
        self.metric = metric
        self.maximize = metric != "val_loss"
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0  # epochs since the last improvement
        self.last_epoch = -1  # last epoch saved to last/

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"

    @property
    def last_dir(self) -> Path:
        return self.out_dir / "last"

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.maximize else value < self.best - self.min_delta

    def update(self, epoch: int, metrics: dict[str, float], save: Callable[[Path], None]) -> bool:
        """Record epoch `epoch`'s metrics; write best/ when improved and always last/. True if improved."""
        value = float(metrics[self.metric])
        improved = self.improves(value)
        self.last_epoch = epoch
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            publish_dir(self.best_dir, save)
        else:
            self.bad_epochs += 1
        publish_dir(self.last_dir, save)  # after the counters so last/ carries the current state
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.last_epoch = int(state["last_epoch"])
