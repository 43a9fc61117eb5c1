"""Loaders for public fundus datasets exactly as users unpack them, one module per dataset.

Each module defines ``NAME``, ``NUM_CLASSES``, ``MARKERS`` (the folders or files that identify its
root, for error messages) and ``index(root) -> DatasetIndex``. :func:`load_index` is the one entry
point the rest of the project uses.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from data.datasets.base import DatasetIndex, Record
from data.records import DataError

# dataset name -> (module, keyword arguments of its index function)
_LOADERS: dict[str, tuple[str, dict]] = {
    "idrid": ("idrid", {}),
    "ddr": ("ddr", {}),
    "eyepacs": ("eyepacs", {}),
    "aptos2019": ("aptos2019", {}),
    "messidor2": ("messidor2", {}),
    "deepdrid": ("deepdrid", {}),
    "deepdrid_uwf": ("deepdrid", {"uwf": True}),
    "sigf": ("sigf", {}),
    "fgadr": ("fgadr", {}),
    "csv": ("csv_table", {}),
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def loader(name: str):
    """The loader module of dataset ``name``."""
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r} (available: {', '.join(DATASETS)})")
    return importlib.import_module(f"data.datasets.{_LOADERS[name][0]}")


def load_index(name: str, root: str | Path) -> DatasetIndex:
    """Index dataset ``name`` found at (or up to two levels below) ``root``."""
    index = loader(name).index(Path(root).expanduser(), **_LOADERS[name][1])
    index.check_unique_ids()
    return index


__all__ = ["DATASETS", "DatasetIndex", "Record", "load_index", "loader"]
