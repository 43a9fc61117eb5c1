"""What the speed benchmarks share: the machine, the commit, timing and FLOP counting."""
from __future__ import annotations

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
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp(device: torch.device) -> dict:
    """The machine, commit and date every JSON line carries."""
    return {"device": device_name(device), "torch": torch.__version__, "commit": commit(), "date": datetime.date.today().isoformat()}


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
