"""Quieter Ultralytics output for every dinocache command, through a filter on its logger (by name, so this
module imports nothing heavy): the per-parameter `Freezing layer` lines are counted instead of printed (the
trainer logs one summary line) and `Fast image access` is dropped (Ultralytics checks it on every dataset
listing, 5-7 times per command, and it is chatter in `cache verify` or `grade`: a slow disk shows in the
epoch lines' images/s). ANSI colour codes (Ultralytics' `colorstr`, used by its lines and ours) are kept only
when stdout is a terminal and `NO_COLOR` is unset (https://no-color.org): a log written to a file or piped
reads as plain text. `logs_to_stderr` keeps stdout for a command's own answer (`--json`)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# every CSI escape sequence: colours, and the `\r ESC[K` line clears of Ultralytics' progress bars
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def colour_wanted(stream: object = None) -> bool:
    """ANSI colours only on a terminal (`stream`, default stdout, where Ultralytics logs), never with
    NO_COLOR set to a non-empty value."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(sys.stdout if stream is None else stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class QuietLog(logging.Filter):
    def __init__(self, colour: bool | None = None) -> None:
        super().__init__()
        self.frozen = 0  # `Freezing layer` lines swallowed since the trainer last reset it
        self.colour = colour_wanted() if colour is None else colour  # keep ANSI colour codes

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Freezing layer '"):
            self.frozen += 1
            return False
        if "Fast image access" in msg:
            return False
        if not self.colour and "\x1b[" in msg:
            record.msg, record.args = ANSI.sub("", msg), ()
        return True


class PlainText:
    """A text stream that drops ANSI escape sequences on the way to `stream` (everything else, `isatty` and
    `fileno` included, is the stream's own)."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def write(self, s: str) -> int:
        self._stream.write(ESCAPES.sub("", s))
        return len(s)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def plain_output() -> None:
    """stdout and stderr without escape sequences where colour is not wanted (not a terminal, or NO_COLOR):
    Ultralytics colours its progress bars' and log lines' prefixes whatever the stream. Installed before
    Ultralytics is imported, so its log handler and progress bars write through it."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, PlainText) and not colour_wanted(stream):
            setattr(sys, name, PlainText(stream))


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
