"""PyTorch's and oneDNN's CPU kernels capped at AVX2: how a CPU with AVX-512 or AMX computes what
an AVX2-only one does (bit for bit in fp32: docs/BENCHMARKS.md, "The demo"). The cap is read when
torch loads, so it applies to a child process or before the first torch import; hence no torch
import in this module."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

AVX2_CAP = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cap_kernels_at_avx2(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the cap in ``environ`` where it names no other kernels already."""
    for key, value in AVX2_CAP.items():
        environ.setdefault(key, value)
