"""What this machine offers a run: CPU threads, native bf16 units, and the speed switches that pay.

``run.amp=auto`` turns bf16 autocast on only where bf16 has hardware behind it: CUDA devices
that support it, and CPUs with AMX or AVX-512 BF16 units that oneDNN is allowed to use. On a
CPU without them (AVX2 only) oneDNN emulates bf16 and a ``cls`` step ran 11.7x slower than
fp32. ``run.channels_last=auto`` is on for CPUs and CUDA alike: besides feeding the bf16 and
tensor-core kernels, it made the demo's fp32 steps 19-46% faster on a Zen 5 EPYC, both on its
AVX-512 kernels and capped at AVX2, and was never slower (docs/BENCHMARKS.md, "Speed switches").
"""

from __future__ import annotations

import math
import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bf16 matrix kernels are native.
BF16_ISAS = (
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "ALL",
    "DEFAULT",
)
# /proc/cpuinfo flags of native bf16 dot products.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of /proc/cpuinfo (Linux), else None."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_family() -> int | None:
    """The CPU family number from /proc/cpuinfo (AMD: 25 = Zen 3/4, 26 = Zen 5), else None: two
    CPUs of one model name and kind can differ by 1.4x in speed."""
    family = cpuinfo_field("cpu family")
    return int(family) if family else None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo), else those torch's cpuinfo reports."""
    flags = cpuinfo_field("flags")
    if flags is not None:
        return frozenset(flags.split())
    found = set()
    if torch.cpu._is_amx_tile_supported():
        found.add("amx_bf16")
    if torch.cpu._is_avx512_bf16_supported():
        found.add("avx512_bf16")
    return frozenset(found)


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by the cgroup's CPU quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), or None."""
    try:
        quota_file = root / "cpu.max"
        if quota_file.is_file():
            quota, period = quota_file.read_text().split()[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        quota_file, period_file = (
            root / "cpu" / "cpu.cfs_quota_us",
            root / "cpu" / "cpu.cfs_period_us",
        )
        if quota_file.is_file() and period_file.is_file():
            quota, period = int(quota_file.read_text()), int(period_file.read_text())
            return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None
    return None


def available_cpus(environ: dict | None = None) -> int:
    """CPUs this process may use: ``OMP_NUM_THREADS`` when set, else its affinity mask capped by
    the cgroup quota (a container limited to 2 CPUs on a 64-core host gets 2)."""
    environ = os.environ if environ is None else environ
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    limit = cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


def configure_threads(threads: int = 0) -> int:
    """Set torch's CPU threads (``0``: :func:`available_cpus`); returns the number set."""
    count = threads if threads > 0 else available_cpus()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def cpu_bf16_native(flags: frozenset[str] | set[str], environ: dict | None = None) -> bool:
    """Whether bf16 convolutions and matmuls run on hardware units here (AMX or AVX-512 BF16),
    and oneDNN is not capped below them (``ONEDNN_MAX_CPU_ISA``/``DNNL_MAX_CPU_ISA``)."""
    environ = os.environ if environ is None else environ
    cap = (
        (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    )
    if cap and cap not in BF16_ISAS:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


@dataclass(frozen=True)
class SpeedChoice:
    """The resolved ``run.amp`` / ``run.channels_last`` and why, for the run log and config.yaml."""

    amp: bool
    channels_last: bool
    reason: str

    def describe(self, threads: int) -> str:
        return (
            f"run.amp={'bf16' if self.amp else 'fp32'}, run.channels_last={str(self.channels_last).lower()}, "
            f"run.threads={threads} ({self.reason})"
        )


def resolve_speed(
    amp,
    channels_last,
    device: torch.device,
    amp_dtype: str = "bfloat16",
    flags: frozenset[str] | set[str] | None = None,
    environ: dict | None = None,
) -> SpeedChoice:
    """Turn ``"auto"`` settings into booleans for ``device``; explicit booleans pass through."""
    if device.type == "cuda":
        native = amp_dtype == "float16" or torch.cuda.is_bf16_supported()
        machine = torch.cuda.get_device_name(device)
        reason = f"{machine}: {'bf16 supported' if native else 'no bf16'}"
    elif device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        native = amp_dtype == "bfloat16" and cpu_bf16_native(flags, environ)
        units = [flag for flag in BF16_FLAGS if flag in flags]
        reason = f"{cpu_model()}: {'bf16 units: ' + ', '.join(units) if native else 'no bf16 units in use'}"
    else:
        native, reason = False, f"{device.type}: fp32"
    amp_on = native if amp == "auto" else bool(amp)
    channels_last_on = (
        device.type in ("cuda", "cpu") if channels_last == "auto" else bool(channels_last)
    )
    return SpeedChoice(amp_on, channels_last_on, reason)


def autocast_dtype(amp_dtype: str = "bfloat16") -> torch.dtype:
    """The one autocast dtype rule: ``run.amp_dtype`` (``resolve_speed``'s ``auto`` turns autocast on
    for bf16 only where the device has it, so float16 on a CPU runs only when asked for)."""
    return torch.float16 if amp_dtype == "float16" else torch.bfloat16


def autocast_factory(device: torch.device, enabled: bool, amp_dtype: str = "bfloat16"):
    """The zero-argument autocast context factory of training and inference alike (trainer,
    engine/inference.py): :func:`autocast_dtype`, nothing when ``enabled`` is false."""
    if not enabled:
        return nullcontext
    dtype = autocast_dtype(amp_dtype)
    return lambda: torch.autocast(device.type, dtype=dtype)
