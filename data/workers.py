"""A process pool for offline image work (rendering, preprocessing) that is safe next to torch."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import cv2

Job = TypeVar("Job")
Result = TypeVar("Result")


def _init_worker() -> None:
    """One OpenCV thread per worker process: the pool already uses the cores (workers never use torch)."""
    cv2.setNumThreads(1)


def can_spawn() -> bool:
    """Whether spawned workers can re-import ``__main__`` (not so for a script piped on stdin)."""
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    return main_file is None or Path(main_file).is_file()


def process_map(
    function: Callable[[Job], Result],
    jobs: Iterable[Job],
    processes: int,
    chunksize: int = 1,
) -> Iterator[Result]:
    """Yield ``function(job)`` for every job, in completion order, over ``processes`` workers.

    ``function`` must be a top-level function (pickled by name). With one process, or when workers
    cannot be spawned, it runs here. Spawn, not fork: forking after torch or OpenCV started their
    thread pools can deadlock the workers. Callers run as scripts need an ``if __name__ == "__main__":`` guard.
    """
    if processes < 2 or not can_spawn():
        yield from map(function, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(processes, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(function, jobs, chunksize=chunksize)
