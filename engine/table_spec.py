"""What a table is: its ``rows.yaml`` (title, reference row, rows), the seeds, and each (row, seed)'s config.

A row is a method of ``engine/methods.py`` plus ``key=value`` overrides, i.e. exactly
``python train.py --method METHOD OVERRIDES``; engine/table_runner.py trains and tests them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine.config import CONFIG_DIR, Config, ConfigError, get_method, load_config

TABLE_PRESET = CONFIG_DIR / "table.yaml"


@dataclass(frozen=True)
class Row:
    """A table row: ``train.py --method <method> <overrides>``."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    summary: str = ""


@dataclass(frozen=True)
class TableSpec:
    title: str
    rows: tuple[Row, ...]
    reference: str | None = None


def load_table(path: str | Path) -> TableSpec:
    """Read a ``rows.yaml``: ``title``, optional ``reference``, optional ``overrides`` (``key=value``
    strings put before every row's own, e.g. a shared starting checkpoint), ``rows: {name: {method,
    overrides, summary}}``."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read table rows {path}: {error}") from error
    if not isinstance(spec, dict) or not isinstance(spec.get("rows"), dict) or not spec["rows"]:
        raise ConfigError(f"{path}: expected a mapping with 'title' and a non-empty 'rows' mapping")
    shared = spec.get("overrides") or []
    if not _is_override_list(shared):
        raise ConfigError(
            f"{path}: overrides (for every row) must be a list of 'key=value' strings"
        )
    rows = []
    for name, entry in spec["rows"].items():
        entry = entry or {}
        method = entry.get("method", "deepmt_dr")
        overrides = entry.get("overrides") or []
        if not _is_override_list(overrides):
            raise ConfigError(
                f"{path}: row {name!r}: overrides must be a list of 'key=value' strings"
            )
        rows.append(
            Row(
                str(name),
                method,
                (*shared, *overrides),
                entry.get("summary") or get_method(method).summary,
            )
        )
    reference = spec.get("reference")
    if reference is not None and reference not in spec["rows"]:
        raise ConfigError(f"{path}: reference row {reference!r} is not one of the rows")
    return TableSpec(spec.get("title", path.parent.name), tuple(rows), reference)


def _is_override_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and "=" in item for item in value)


def select_rows(spec: TableSpec, names: str | None) -> list[Row]:
    """The rows named in a comma list (all when None), in table order."""
    if not names:
        return list(spec.rows)
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    known = {row.name for row in spec.rows}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(row.name for row in spec.rows)}"
        )
    return [row for row in spec.rows if row.name in wanted]


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"0,5,7"`` -> those seeds."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError as error:
        raise ConfigError(
            f"--seeds must be a count or a comma list of integers, got {text!r}"
        ) from error
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(
            f"--seeds must give at least one distinct non-negative seed, got {text!r}"
        )
    return seeds


def run_name(row: str, seed: int) -> str:
    return f"{row}_seed{seed}"


def row_config(
    row: Row, seed: int, preset: str | Path, overrides: Sequence[str], out_dir: Path
) -> Config:
    """Preset <- row's method <- row's overrides <- the command line's <- seed and run folder."""
    runner = [
        f"run.seed={seed}",
        f"run.out_dir={out_dir / 'runs'}",
        f"run.name={run_name(row.name, seed)}",
    ]
    return load_config(preset, [*row.overrides, *overrides, *runner], method=row.method)
