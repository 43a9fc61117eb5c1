"""``predict.py --resume``: continue an interrupted run in the same folder. Photographs that
predictions.csv already lists with a final status (``FINAL_STATUSES``: every status but
``missing``, which is tried again) are not graded again; their rows are kept (a last row a kill cut
short is dropped), new rows are appended, and report.html is rebuilt from the whole CSV. A resumed
run must grade like the first (same checkpoint, input, flips, quality rule, calibration):
``predict_run.json`` records them and :func:`check_run_file` compares.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict, deque
from collections.abc import Sequence
from pathlib import Path

from data.atomic import write_atomic
from data.photo import PhotoInput
from data.records import LESIONS, DataError
from engine.predict_outputs import FINAL_STATUSES, STATUSES, restore_cell, safe_stem
from evaluation.html_report import PredictionReport

RUN_FILE = "predict_run.json"  # what a --resume must match
# What a predict_run.json written before a setting was recorded graded with.
DEFAULTS_BEFORE = {"temperature": 1.0, "referable_threshold": None}


def _number(text: str | None, kind=float):
    """A CSV cell back as a number; None for an empty cell."""
    return kind(text) if text not in (None, "") else None


def _report_row(row: dict, index: int, out: Path, num_classes: int) -> dict:
    """PredictionReport's row for a predictions.csv row an earlier run wrote (``index``: its input position)."""
    path, panel = restore_cell(row["path"]), restore_cell(row["panel"]) or None
    grade = _number(row["grade"], int)
    probabilities = [float(row[f"p{c}"]) for c in range(num_classes)] if grade is not None else None
    areas = [_number(row[f"area_{name}"]) for name in LESIONS]
    thumbnail = f"thumbs/{index + 1:05d}_{safe_stem(path)}.jpg"
    if not (out / thumbnail).is_file():
        thumbnail = f"thumbs/{Path(panel).stem}.jpg" if panel else None
        thumbnail = thumbnail if thumbnail and (out / thumbnail).is_file() else None
    flags = restore_cell(row["flags"])
    return {
        "index": index,
        "path": path,
        "status": row["status"],
        "reason": restore_cell(row["reason"]),
        "grade": grade,
        "probabilities": probabilities,
        "p_referable": _number(row["p_referable"]),
        "flags": flags.split(";") if flags else [],
        "areas": areas if all(area is not None for area in areas) else None,
        "reference_grade": _number(row["reference_grade"], int),
        "thumbnail": thumbnail,
        "panel": panel,
    }


def check_run_file(out: Path, identity: dict) -> None:
    """Refuse to resume with other weights or settings than the first run's (``predict_run.json``;
    a folder an older predict.py wrote has none, and is resumed as it is)."""
    path = out / RUN_FILE
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(
            f"cannot --resume: {path} is not readable ({error}); grade into a new --out"
        ) from None
    changed = [
        f"{key} {before.get(key)!r} -> {value!r}"
        for key, value in identity.items()
        if before.get(key, DEFAULTS_BEFORE.get(key)) != value
    ]
    if changed:
        raise DataError(
            f"cannot --resume in {out}: its predictions were made with other settings ({'; '.join(changed)}); "
            "use the first run's or a new --out"
        )


def write_run_file(out: Path, identity: dict) -> None:
    """``predict_run.json``: what this run grades with, for a later ``--resume`` to match."""
    write_atomic(out / RUN_FILE, (json.dumps(identity, indent=2) + "\n").encode("utf-8"))


def _ends_a_line(path: Path) -> bool:
    """Whether ``path`` is empty or ends with a line end: its last CSV row was written whole."""
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return True
        file.seek(size - 1)
        return file.read(1) == b"\n"


def earlier_rows(
    out: Path,
    columns: list[str],
    photos: Sequence[PhotoInput],
    report: PredictionReport,
    num_classes: int,
    counts: dict[str, int],
) -> tuple[Path, set[int]]:
    """Read an earlier run's predictions.csv, streamed (memory holds input paths and positions only).

    Its rows with a final status go to a fresh CSV (returned: it becomes predictions.csv) and to
    ``report``, and count in ``counts`` (status -> photographs); returns that CSV and the input positions its rows cover.
    Left out: a last row that a kill cut short (no line end) and rows of photographs to grade again."""
    source = out / "predictions.csv"
    positions: dict[str, deque[int]] = defaultdict(deque)
    for index, photo in enumerate(photos):
        positions[str(photo.path)].append(index)
    whole = _ends_a_line(source)
    done: set[int] = set()
    kept_path = out / ".predictions.csv.resume.tmp"
    extra = len(photos)  # report positions for rows of photographs not among this run's inputs
    try:
        with (
            source.open(newline="", encoding="utf-8") as file,
            kept_path.open("w", newline="", encoding="utf-8") as kept,
        ):
            reader = csv.reader(file)
            header = next(reader, None)
            if header is not None and header != columns:
                raise DataError(
                    f"cannot --resume: {source} has other columns than this model writes (another model or version); "
                    "grade into a new --out"
                )
            writer = csv.DictWriter(kept, columns)
            writer.writeheader()
            row = next(reader, None)
            while row is not None:
                following = next(reader, None)
                if following is None and not whole:
                    break  # the last row, cut short by a kill
                if len(row) == len(columns) and row[1] in STATUSES:
                    cells = dict(zip(columns, row))
                    waiting = positions.get(restore_cell(cells["path"]))
                    if cells["status"] in FINAL_STATUSES or not waiting:
                        index = waiting[0] if waiting else extra
                        try:
                            report_row = _report_row(cells, index, out, num_classes)
                        except (ValueError, IndexError):
                            report_row = None  # a damaged row: its photograph is graded again
                        if report_row is not None:
                            if waiting:
                                done.add(waiting.popleft())
                                counts[cells["status"]] = counts.get(cells["status"], 0) + 1
                            else:  # a photograph not among this run's inputs: its row stays as it was
                                extra += 1
                            writer.writerow(cells)
                            report.add(report_row)
                row = following
    except (UnicodeDecodeError, csv.Error) as error:
        kept_path.unlink(missing_ok=True)
        raise DataError(
            f"cannot --resume: {source} is not a readable predictions.csv ({error}); grade into a new --out"
        ) from None
    except BaseException:
        kept_path.unlink(missing_ok=True)
        raise
    return kept_path, done
