"""What the speed benchmarks share: the machine, the commit, timing and FLOP counting."""

from __future__ import annotations

import argparse
import datetime
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp(device: torch.device) -> dict:
    """The machine, commit and date every JSON line carries."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls (compilation, cudnn autotuning)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / steps


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (torch.utils.flop_counter: matmuls and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated, or on a CPU the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def add_size_args(parser: argparse.ArgumentParser) -> None:
    """Sizes and timing options shared by train_step.py and infer.py (CPU defaults; paper: --hr 1024 --seg-width 4)."""
    parser.add_argument("--hr", type=int, default=128, help="HR size (paper: 1024)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument(
        "--seg-width", type=float, default=1.0, help="segmentation width multiplier (paper: 4)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels-last", action="store_true")


def throughput_fields(batch: int, seconds: float, flops_per_image: float, device) -> dict:
    """images/s, ms per image, peak memory, GFLOP per image and achieved TFLOP/s of one measurement."""
    images_per_s = batch / seconds
    return {
        "images_per_s": round(images_per_s, 3),
        "ms_per_image": round(1000 / images_per_s, 2),
        "peak_memory_gb": round(peak_memory_gb(device), 2),
        "gflop_per_image": round(flops_per_image / 1e9, 2),
        "achieved_tflop_s": round(flops_per_image * images_per_s / 1e12, 4),
    }
