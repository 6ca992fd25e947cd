"""Quieter Ultralytics output for every dinocache command, through a filter on its logger (by name, so this
module imports nothing heavy): the per-parameter `Freezing layer` lines are counted instead of printed (the
trainer logs one summary line) and `Fast image access` is said once per process (Ultralytics checks it on
every dataset listing: 5-7 times per command)."""

from __future__ import annotations

import logging


class QuietLog(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = 0  # `Freezing layer` lines swallowed since the trainer last reset it
        self.speed_seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Freezing layer '"):
            self.frozen += 1
            return False
        if "Fast image access" in msg:
            seen, self.speed_seen = self.speed_seen, True
            return not seen
        return True


def quiet_ultralytics() -> QuietLog:
    """The process's QuietLog on the `ultralytics` logger (installed once; works before Ultralytics loads)."""
    logger = logging.getLogger("ultralytics")
    for f in logger.filters:
        if isinstance(f, QuietLog):
            return f
    f = QuietLog()
    logger.addFilter(f)
    return f
