"""The per-image predictions CSVs, read by one function.

Two writers, two column contracts (docs/USAGE.md, "Referable DR"), kept because tools and
committed records rely on each:

- **test.py** (``predictions_<split>*.csv``) and the study records built from it
  (``docs/records/idrid_cv/``, ``docs/records/task_aware_sweep/``): ``id``, ``grade`` = the
  *reference* (-1 unknown), ``predicted`` = the model's grade, ``p0``.., then ``p_referable`` and
  ``referable`` where the model has a referable grade.
- **predict.py** (``predictions.csv``): ``path``, ``status``, ``grade`` = the *model's* grade,
  ``p0``.., ``p_referable``, ``referable``, ..., ``reference_grade`` (empty unknown).

The same word ``grade`` means the reference in one and the model's answer in the other, so no
reader may pick columns by hand: :func:`read_graded` tells the two apart by their key column and
returns the same arrays for either.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.records import DataError

TEST_COLUMNS = ("id", "grade", "predicted")  # then p0.. (and p_referable, referable)
PREDICT_KEY = "path"


def probability_columns(columns: Iterable[str]) -> list[str]:
    """``p0``, ``p1``, .. of a header, in class order (``p_referable`` is not one of them)."""
    found = [c for c in columns if c[:1] == "p" and c[1:].isdigit()]
    return sorted(found, key=lambda c: int(c[1:]))


@dataclass(frozen=True)
class GradedRows:
    """The rows of a predictions CSV that the model graded, in file order.

    ``keys``: test.py's ids or predict.py's paths; ``reference`` ``[N]`` int64 (-1 unknown);
    ``predicted`` ``[N]`` int64, the model's grade; ``probs`` ``[N,C]`` float64.
    """

    keys: list[str]
    reference: np.ndarray
    predicted: np.ndarray
    probs: np.ndarray

    def with_reference(self) -> GradedRows:
        """Only the rows whose reference grade is known (the ones a metric can score)."""
        keep = self.reference >= 0
        return GradedRows(
            [key for key, kept in zip(self.keys, keep) if kept],
            self.reference[keep],
            self.predicted[keep],
            self.probs[keep],
        )


def _integer(text: str | None) -> int:
    """A grade cell: empty (predict.py's unknown reference) reads as -1."""
    return -1 if text in ("", None) else int(text)


def read_graded(path: Path) -> GradedRows:
    """Every graded row of a test.py or predict.py predictions CSV (predict.py's rows with a
    status other than ``ok`` carry no grade and are left out). A file that is neither, or a
    cell that is not a number, raises ``DataError`` naming the file and row."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            header = reader.fieldnames or []
            classes = probability_columns(header)
            from_test = all(c in header for c in TEST_COLUMNS)
            from_predict = PREDICT_KEY in header and "grade" in header
            if not classes or not (from_test or from_predict):
                raise DataError(
                    f"{path}: not a predictions CSV of test.py (id, grade, predicted, p0..) "
                    "or of predict.py (path, status, grade, p0.., reference_grade)"
                )
            keys, reference, predicted, probs = [], [], [], []
            for line, row in enumerate(reader, start=2):
                if not from_test and row.get("status", "ok") != "ok":
                    continue
                try:
                    if from_test:
                        truth, answer = _integer(row["grade"]), _integer(row["predicted"])
                    else:
                        truth, answer = _integer(row.get("reference_grade")), int(row["grade"])
                    probs.append([float(row[c]) for c in classes])
                except (TypeError, ValueError):
                    raise DataError(
                        f"{path}, line {line}: a grade or probability is not a number"
                    ) from None
                keys.append(row["id"] if from_test else row[PREDICT_KEY])
                reference.append(truth)
                predicted.append(answer)
    except OSError as error:
        raise DataError(f"cannot read predictions {path}: {error.strerror}") from None
    return GradedRows(
        keys,
        np.asarray(reference, dtype=np.int64),
        np.asarray(predicted, dtype=np.int64),
        np.asarray(probs, dtype=np.float64).reshape(len(probs), len(classes)),
    )
