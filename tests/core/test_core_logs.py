"""Log output: ANSI colour codes only on a terminal and never with NO_COLOR; Ultralytics' chatter dropped."""

from __future__ import annotations

import io
import logging

from dinocache.core.logs import QuietLog, colour_wanted


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def rec(msg: str) -> logging.LogRecord:
    return logging.LogRecord("ultralytics", logging.INFO, __file__, 1, msg, None, None)


def test_colour_only_on_a_terminal_without_no_color(monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colour_wanted(Tty()) and not colour_wanted(io.StringIO())  # a file or a pipe: no colours
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_wanted(Tty())
    monkeypatch.setenv("NO_COLOR", "")  # the convention: set and non-empty
    assert colour_wanted(Tty())


def test_quiet_log_strips_colour_codes_when_not_wanted() -> None:
    coloured = "\x1b[34m\x1b[1mdinocache:\x1b[0m epoch 1/2"
    r = rec(coloured)
    assert QuietLog(colour=False).filter(r) and r.getMessage() == "dinocache: epoch 1/2"
    r = rec(coloured)
    assert QuietLog(colour=True).filter(r) and r.getMessage() == coloured
    r = logging.LogRecord("ultralytics", logging.INFO, __file__, 1, "\x1b[1m%s\x1b[0m", ("x",), None)
    assert QuietLog(colour=False).filter(r) and r.getMessage() == "x"  # arguments are folded in first
    assert not QuietLog(colour=False).filter(rec("val: Fast image access ✅ (ping: 0.1 ms)"))


def test_command_output_to_a_file_has_no_colour_codes(tmp_path) -> None:
    """A command whose log goes to a file (not a terminal): no escape codes in it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["YOLO_VERBOSE"] = "True"
    # what dinocache.cli.main does first, then a coloured log line and a progress bar with a coloured prefix
    code = (
        "from dinocache.core.logs import plain_output, quiet_ultralytics; plain_output(); quiet_ultralytics(); "
        "from ultralytics.utils import LOGGER, TQDM, colorstr; LOGGER.info(colorstr('bold', 'hello') + ' world'); "
        "[i for i in TQDM(range(3), desc=colorstr('train: '))]"
    )
    out = tmp_path / "log.txt"
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT, env=env, check=True)
    text = out.read_text()
    assert "hello world" in text and "train: " in text and "\x1b[" not in text
