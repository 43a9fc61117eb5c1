"""One writer per folder: an exclusive lock file that names its holder (PID, host, start, command).

The lock is an ``fcntl.flock`` on the file, which the kernel drops when the holding process dies,
however it dies; so a lock file left behind by a killed process is stale by construction, and the
next writer takes it over and says whose it was. ``flock`` works on local file systems and, on
Linux, on NFS (as a POSIX lock). Where it is missing (Windows) or refused, the folder is used
unlocked, with a warning. Used by train.py (``runs/<name>/train.lock``) and ``python -m
data.prepare`` (``<cache>/prepare.lock``); it lives in ``data/`` because ``data/`` may not import
``engine/``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)


class LockError(RuntimeError):
    """Another live process holds the lock; the message names it."""


def _describe(holder: dict) -> str:
    return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('since', '?')}: {holder.get('command', '?')})"


def _read_holder(handle: int) -> dict | None:
    """What the lock file says about its holder; None when empty or unreadable."""
    os.lseek(handle, 0, os.SEEK_SET)
    text = os.read(handle, 4096).decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {"command": text[:200]}
    return holder if isinstance(holder, dict) else {"command": text[:200]}


def _same_file(handle: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


class FolderLock:
    """``with FolderLock(path, "run folder runs/demo"):`` ... one process at a time.

    ``what`` names the guarded thing in messages. :meth:`acquire` raises :class:`LockError`
    naming the live holder; a stale file (its holder died) is taken over with a warning.
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.handle: int | None = None

    def acquire(self) -> FolderLock:
        if fcntl is None:
            log.warning(
                "no fcntl on this platform: %s is used without the one-writer lock", self.what
            )
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = (
                    _read_holder(handle)
                    if error.errno in (errno.EWOULDBLOCK, errno.EACCES)
                    else None
                )
                os.close(handle)
                if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    log.warning(
                        "cannot lock %s (%s): %s is used without the one-writer lock",
                        self.path,
                        error.strerror,
                        self.what,
                    )
                    return self
                who = _describe(holder) if holder else "another process (starting up)"
                raise LockError(
                    f"{self.what} is in use by {who}; wait for it to finish or stop it "
                    f"(its lock {self.path} goes when that process exits)"
                ) from None
            if _same_file(handle, self.path):
                break
            os.close(handle)  # the holder removed the file while we opened it: lock the new one
        previous = _read_holder(handle)
        if previous:
            log.warning(
                "took over the stale lock %s of %s, which is no longer running",
                self.path,
                _describe(previous),
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(holder).encode("utf-8"), 0)
        self.handle = handle
        return self

    def release(self) -> None:
        """Remove the file, then unlock: a process that opened it meanwhile sees it gone and retries."""
        if self.handle is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.handle)
        self.handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
