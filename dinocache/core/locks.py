"""One writer per run folder and per cache: an OS file lock (`filelock`) held while the writer runs.

The lock is an advisory `flock` on a small file next to what it protects; the OS drops it when the process
ends however it ends (SIGKILL, power loss of a local disk), so a killed run never leaves a stale lock behind
and its resume is not blocked. Object stores (s3://...) have no such lock: there the writer rules of
docs/cache.md apply (one launch per store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinocache.core.errors import DinocacheError


class Busy(DinocacheError):
    """Another process holds the lock; the message names what is in use and the lock file."""


@dataclass
class Held:
    """A lock this process holds, and the folders it created for the lock file (removed by a tidy release)."""

    lock: Any
    path: Path
    created: list[Path] = field(default_factory=list)

    def release(self, tidy: bool = False) -> None:
        """Release; with `tidy`, also remove the lock file and the folders made for it when nothing else is
        in them (a refused start leaves nothing behind)."""
        self.lock.release()
        if not tidy:
            return
        self.path.unlink(missing_ok=True)
        for d in self.created:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break  # not empty: something else lives there


def try_lock(path: Path) -> Held | None:
    """The held lock on `path` (created with its folders), or None when another process holds it."""
    from filelock import FileLock, Timeout

    created = [d for d in [path.parent, *path.parent.parents] if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None
    return Held(lock, path, created)


def hold(path: Path, what: str, advice: str) -> Held:
    """Take the lock on `path` or raise Busy: '`what` is in use by another process (lock `path`); `advice`'."""
    lock = try_lock(path)
    if lock is None:
        raise Busy(f"{what} is in use by another process (lock {path}); {advice}")
    return lock


def release(held: Held | None, tidy: bool = False) -> None:
    if held is not None:
        held.release(tidy)
