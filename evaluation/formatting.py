"""Numbers as text and back, one rule for every table, CSV and report of the project.

A metric that is undefined is ``float("nan")`` (evaluation/metrics.py), and a value that was never
measured is None: both print as the call site's ``missing`` text (``n/a`` in a report, an empty
cell in a CSV), and an empty or ``nan`` CSV cell reads back as None; in JSON it is ``null``
(:func:`json_safe`).
"""

from __future__ import annotations

import math

__all__ = ["format_interval", "format_number", "json_safe", "parse_number"]


def format_number(value: float | int | None, spec: str, missing: str = "") -> str:
    """``format(value, spec)``; ``missing`` where there is no number (None or NaN)."""
    if value is None or math.isnan(value):
        return missing
    return format(value, spec)


def format_interval(entry: dict, digits: int = 3) -> str:
    """``value [low, high]`` of a bootstrap interval entry (``evaluation/intervals.py``)."""
    return f"{entry['value']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def parse_number(text: str | None) -> float | None:
    """A CSV cell back as a float; None for an empty cell or ``nan``."""
    if text in (None, ""):
        return None
    value = float(text)
    return None if math.isnan(value) else value


def json_safe(value):
    """``value`` for ``json.dumps(allow_nan=False)`` and ``torch.load(weights_only=True)``: a NaN or
    infinite float becomes None, dict keys become text, lists and tuples are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
