"""Packed renders (uint8 image and bit planes) made here or in a pool of spawned worker processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import numpy as np

from data.maskbits import pack_planes
from data.synthetic.render import SyntheticFundusImage, render_sample
from data.workers import process_map

POOL_MIN_JOBS = 64


def _pack(rendered: SyntheticFundusImage) -> tuple[np.ndarray, np.ndarray, int]:
    """Compact form: image uint8 [3,S,S], bit planes uint8 [S,S] (bits 0-3 masks, bit 4 FOV), grade."""
    bits = pack_planes(rendered.masks, rendered.fov)
    return np.ascontiguousarray(rendered.image.transpose(2, 0, 1)), bits, rendered.grade


def render_packed(
    job: tuple[int, str, int, int, tuple[float, ...] | None, str],
) -> tuple[int, np.ndarray, np.ndarray, int]:
    """Worker entry point: render one sample and pack it (top level so a process pool can pickle it)."""
    seed, split, index, size, class_mix, backgrounds = job
    return (index, *_pack(render_sample(seed, split, index, size, class_mix, backgrounds)))


def render_all(jobs: list[tuple]) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
    """Yield packed renders of ``jobs``: here for a few, else over a pool of (at most) 2 processes."""
    processes = min(2, multiprocessing.cpu_count()) if len(jobs) >= POOL_MIN_JOBS else 1
    yield from process_map(render_packed, jobs, processes, chunksize=16)
