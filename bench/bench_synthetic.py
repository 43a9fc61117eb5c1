"""Synthetic-data speed on one core: ms per rendered sample and per uncached dataset item (render + LR).

Run from the repository root: ``python bench/bench_synthetic.py [--n 50] [--sizes 128 256 512 1024]``.
The target is at most 100 ms per 1024 px sample, so generation never limits CPU training.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.synthetic import SyntheticFundus, load_backgrounds, render_sample


def ms_per_call(function, n: int) -> float:
    """Mean wall time of ``function(i)`` over ``i < n``, in milliseconds."""
    start = time.perf_counter()
    for index in range(n):
        function(index)
    return (time.perf_counter() - start) / n * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="samples per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    load_backgrounds("all")
    print(f"{'size':>6} {'render_sample ms':>17} {'dataset item ms':>16}   (one core, n={args.n})")
    for size in args.sizes:
        render_sample(0, "train", 10_000, size)  # resize the backgrounds for this size once
        render_ms = ms_per_call(functools.partial(render_sample, 0, "train", size=size), args.n)
        dataset = SyntheticFundus("train", args.n, size, 4, cache=False)
        item_ms = ms_per_call(dataset.__getitem__, args.n)
        print(f"{size:>6} {render_ms:>17.1f} {item_ms:>16.1f}")


if __name__ == "__main__":
    main()
