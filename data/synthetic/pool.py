"""Packed renders (uint8 image and bit planes) made here or in a pool of spawned worker processes."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from data.records import LESIONS
from data.synthetic.render import SyntheticFundusImage, render_sample

FOV_BIT = len(LESIONS)
POOL_MIN_JOBS = 64


def _pack(rendered: SyntheticFundusImage) -> tuple[np.ndarray, np.ndarray, int]:
    """Compact form: image uint8 [3,S,S], bit planes uint8 [S,S] (bits 0-3 masks, bit 4 FOV), grade."""
    bits = np.zeros(rendered.fov.shape, dtype=np.uint8)
    for channel, mask in enumerate(rendered.masks):
        bits |= mask.astype(np.uint8) << channel
    bits |= rendered.fov.astype(np.uint8) << FOV_BIT
    return np.ascontiguousarray(rendered.image.transpose(2, 0, 1)), bits, rendered.grade


def render_packed(
    job: tuple[int, str, int, int, tuple[float, ...] | None, str],
) -> tuple[int, np.ndarray, np.ndarray, int]:
    """Worker entry point: render one sample and pack it (top level so a process pool can pickle it)."""
    seed, split, index, size, class_mix, backgrounds = job
    return (index, *_pack(render_sample(seed, split, index, size, class_mix, backgrounds)))


def _init_worker() -> None:
    """One OpenCV thread per worker process: the pool already uses the cores (workers never use torch)."""
    cv2.setNumThreads(1)


def _can_spawn() -> bool:
    """Whether spawned workers can re-import ``__main__`` (not so for a script piped on stdin)."""
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    return main_file is None or Path(main_file).is_file()


def render_all(jobs: list[tuple]) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
    """Yield packed renders of ``jobs``: here for a few, else over a pool of (at most) 2 processes."""
    processes = min(2, multiprocessing.cpu_count())
    if len(jobs) < POOL_MIN_JOBS or processes < 2 or not _can_spawn():
        yield from map(render_packed, jobs)
        return
    # spawn, not fork: forking after torch/OpenCV started thread pools can deadlock the workers
    with multiprocessing.get_context("spawn").Pool(processes, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(render_packed, jobs, chunksize=16)
