"""Quieter Ultralytics output for every dinocache command, through a filter on its logger (by name, so this
module imports nothing heavy): the per-parameter `Freezing layer` lines are counted instead of printed (the
trainer logs one summary line) and `Fast image access` is dropped (Ultralytics checks it on every dataset
listing, 5-7 times per command, and it is chatter in `cache verify` or `grade`: a slow disk shows in the
epoch lines' images/s). `logs_to_stderr` keeps stdout for a command's own answer (`--json`)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator


class QuietLog(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = 0  # `Freezing layer` lines swallowed since the trainer last reset it

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Freezing layer '"):
            self.frozen += 1
            return False
        return "Fast image access" not in msg


def quiet_ultralytics() -> QuietLog:
    """The process's QuietLog on the `ultralytics` logger (installed once; works before Ultralytics loads)."""
    logger = logging.getLogger("ultralytics")
    for f in logger.filters:
        if isinstance(f, QuietLog):
            return f
    f = QuietLog()
    logger.addFilter(f)
    return f


@contextlib.contextmanager
def logs_to_stderr() -> Iterator[None]:
    """Inside: Ultralytics' log lines and every print() go to stderr, so stdout holds only what the command
    prints after it (one JSON document for `--json`). Ultralytics' handler keeps the stdout stream it found
    at import, so it is pointed at stderr itself; `redirect_stdout` catches the rest."""
    import ultralytics.utils  # noqa: F401  (its import installs the handler being moved)

    moved = [
        (h, h.stream)
        for h in logging.getLogger("ultralytics").handlers
        if type(h) is logging.StreamHandler and h.stream is not sys.stderr
    ]
    for h, _ in moved:
        h.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for h, stream in moved:
            h.setStream(stream)
