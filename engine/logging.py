"""Run logs: a CSV summary per epoch (timm's summary.csv) and TensorBoard scalars."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CSVLog:
    """Appends dict rows to a CSV; a row with new keys rewrites the file with the wider header."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            with self.path.open(newline="") as file:
                self.rows = list(csv.DictReader(file))
        self.columns: list[str] = list(self.rows[0].keys()) if self.rows else []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        new_columns = [key for key in row if key not in self.columns]
        if new_columns or not self.path.is_file():
            self.columns += new_columns
            self._rewrite()
            return
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, self.columns).writerow(row)

    def keep_rows(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the rows ``keep`` rejects (a resumed run's rows past its checkpoint), rewriting the file."""
        kept = [row for row in self.rows if keep(row)]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as file:
            writer = csv.DictWriter(file, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)


def log_facts(run_dir: Path) -> tuple[float | None, float | None]:
    """From a run's log.csv: its training time (epochs incl. validation; survives resumes) and
    the grader's mean training cross-entropy in the last epoch it trained (its stage's
    ``train_ce``): ln 5 = 1.61 on five balanced grades is a grader that never fitted its images."""
    path = run_dir / "log.csv"
    if not path.is_file():
        return None, None
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    seconds = [float(row["seconds"]) for row in rows if row.get("seconds")]
    losses = [float(row["train_ce"]) for row in rows if row.get("train_ce")]
    return (sum(seconds) if seconds else None), (losses[-1] if losses else None)


class TensorBoardLog:
    """Scalars to TensorBoard under ``run_dir/tensorboard``; silently off if tensorboard is absent."""

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in requirements.txt; tolerate minimal installs
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
