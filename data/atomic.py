"""Atomic file writes, one implementation for every file the project writes whole: the cache's
images and manifest, split and group files, checkpoints and releases, RELEASES.json, results.csv,
report.html, predict_run.json.

A file is written to a temporary next to it (same folder, so the rename cannot cross file
systems), flushed to disk, then renamed over the target: a kill, a crash or a full disk mid-write
leaves the previous file (or none) at the target, never half a file. The temporary is created
with mode ``0o666`` minus the umask, as ``open()`` would create the target (``tempfile.mkstemp``'s
``0o600`` would keep a release or a report from its other readers), and removed when the write
fails.

Temporaries are named ``.NAME.tmp-XXXXXXXX.tmp``: both clean-ups of killed writers match them
(``.*.tmp`` of ``engine.checkpoint.remove_stale_temporaries`` and ``.*.tmp-*`` of the cache
builder, ``data/prepare.py``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "atomic_path", "fsync_folder", "write_atomic"]


def _create_temporary(path: Path) -> Path:
    """A new empty file next to ``path`` (``O_EXCL``: never another writer's), mode 0o666 & ~umask."""
    while True:
        temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return temporary


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextmanager
def atomic_path(path: str | Path, sync_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer to fill (it may reopen or replace the
    file); when the block ends it is flushed to disk and renamed over ``path``. An exception in the
    block, or in the flush or rename, removes the temporary and propagates; ``path`` is untouched.
    ``sync_folder``: also make the rename itself durable (fsync the folder)."""
    path = Path(path)
    temporary = _create_temporary(path)
    try:
        yield temporary
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_folder(path.parent)


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO]:
    """``open()`` of :func:`atomic_path`'s temporary (``mode`` "w" or "wb"), renamed over ``path``
    once the block has written it whole."""
    binary = "b" in mode
    with atomic_path(path) as temporary:
        with open(
            temporary,
            mode,
            encoding=None if binary else encoding,
            newline=None if binary else newline,
        ) as file:
            yield file


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
