"""The machine a benchmark ran on, for its JSON line (the CPU model as engine.runtime reads it)."""

from __future__ import annotations

from engine.runtime import cpu_model as cpu_name

__all__ = ["cpu_name"]
