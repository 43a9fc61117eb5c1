"""Training-loader throughput from the preprocessing cache: decoded HR + masks + LR per second.

Run from the repository root (build a cache first, e.g. with bench/bench_prepare.py --keep DIR):
    python bench/loader.py --cache DIR [--workers 0 1 2] [--batch 8] [--scale 4] [--target 18.5]

Each worker count gets a fresh loader, built as train.py builds it (engine.builders.build_loader:
epoch sampler, persistent workers, pinned memory when CUDA is there), over the whole cache
(repeated to at least --images items). ``--target`` is the joint step's images/s the loader must keep up with (18.5: the bf16
joint step on one H200 at HR 1024 quoted in the performance issue); the last line says how many
workers that takes at the measured per-worker rate. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name
from data.cache import CachedFundus, read_manifest, read_settings
from engine.builders import build_loader


def throughput(
    dataset: torch.utils.data.Dataset, workers: int, batch: int, pin_memory: bool
) -> float:
    """Images/s of the training loader ``train.py`` builds (engine.builders.build_loader)."""
    loader = build_loader(
        dataset, batch, True, 0, workers, pin_memory=pin_memory, persistent_workers=True
    )
    iterator = iter(loader)
    next(iterator)  # start-up (worker spawn, first decode) is not throughput
    count, start = 0, time.perf_counter()
    for item in iterator:
        count += item["hr"].shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument(
        "--images", type=int, default=96, help="items per measurement (the cache is repeated)"
    )
    parser.add_argument("--target", type=float, default=18.5, help="images/s the loader must feed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    entries = read_manifest(args.cache)
    entries = (entries * math.ceil(args.images / len(entries)))[: args.images]
    dataset = CachedFundus(args.cache, entries, scale=args.scale)
    size = read_settings(args.cache)["size"]
    per_worker = None
    for workers in args.workers:
        rate = throughput(dataset, workers, args.batch, torch.cuda.is_available())
        if workers == 1:
            per_worker = rate
        print(
            json.dumps(
                {
                    "bench": "loader",
                    "machine": cpu_name(),
                    "hr": size,
                    "scale": args.scale,
                    "batch": args.batch,
                    "workers": workers,
                    "images_per_s": round(rate, 2),
                }
            )
        )
    if per_worker:
        print(
            json.dumps(
                {
                    "target_images_per_s": args.target,
                    "per_worker_images_per_s": round(per_worker, 2),
                    "workers_needed": math.ceil(args.target / per_worker),
                }
            )
        )


if __name__ == "__main__":
    main()
