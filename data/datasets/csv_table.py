"""A generic CSV of images, grades and optional lesion masks: the catch-all for any other dataset.

Example (``my_dataset/labels.csv``; relative paths resolve against the CSV's folder)::

    image,grade,split,patient,mask_MA,mask_HE,mask_EX,mask_SE
    images/p01_left.jpg,2,train,p01,,,,
    images/p01_right.jpg,0,train,p01,,,,
    images/p02_left.png,4,val,p02,masks/p02_left_MA.png,masks/p02_left_HE.png,,
    images/p03_left.png,,test,p03,masks/p03_left_MA.png,,,

``index(root)``: ``root`` is the CSV itself or a folder holding exactly one ``.csv``. Column names
are case-insensitive:

- image (required): ``image``, ``path``, ``image_path``, ``file`` or ``filename``;
- grade: ``grade``, ``label``, ``level`` or ``diagnosis``, ICDR 0-4; an empty grade is unknown (-1),
  allowed only on a row with at least one mask (the column may be left out if there are mask columns);
- ``split`` (optional): train, valid (or val), test or all; empty or absent -> all;
- ``patient`` or ``patient_id`` (optional): empty or absent -> the image stem;
- ``mask_MA``, ``mask_HE``, ``mask_EX``, ``mask_SE`` (optional): an empty cell means no mask file for
  that lesion (``mask_valid`` False), not "no lesion". Masks are positive where any channel > 0.

A row with any mask is part ``segmentation``, else ``grading``. Files are matched loosely (case,
extension, Windows separators); a missing image or mask file is a DataError naming the CSV row.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from data.datasets.base import (
    DatasetIndex,
    ImageFolder,
    Record,
    Row,
    check_root,
    parse_grade,
    read_table,
)
from data.records import LESIONS, NUM_GRADES, UNKNOWN_GRADE, DataError

log = logging.getLogger(__name__)

NAME = "csv"
NUM_CLASSES = NUM_GRADES
MARKERS: tuple[str, ...] = ("*.csv",)
ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image", "path", "image_path", "file", "filename"),
    "grade": ("grade", "label", "level", "diagnosis"),
    "split": ("split",),
    "patient": ("patient", "patient_id"),
    **{f"mask_{lesion}": (f"mask_{lesion}",) for lesion in LESIONS},
}
SPLITS: dict[str, str] = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "test": "test",
    "all": "all",
}


def index(root: Path) -> DatasetIndex:
    """One record per CSV row."""
    root = check_root(root, NAME)
    path = _csv_path(root)
    delimiter, header = _header(path)
    columns = _columns(path, header)
    result = DatasetIndex(NAME, path, num_classes=NUM_CLASSES)
    files = _Files(path.parent)
    seen: dict[str, int] = {}
    for row in read_table(path, delimiter=delimiter):
        record = _record(row, f"{path} row {row.line}", columns, files)
        if record.id in seen:
            raise DataError(
                f"{path} row {row.line}: id {record.id} repeats row {seen[record.id]} "
                "(two images with one file stem in one part and split)"
            )
        seen[record.id] = row.line
        result.add(record)
    result.check_not_empty(f"rows of {path}")
    return result


def _csv_path(root: Path) -> Path:
    """``root`` when it is a file, else the one ``.csv`` directly inside the folder ``root``."""
    if root.is_file():
        return root
    found = sorted(
        entry for entry in root.iterdir() if entry.is_file() and entry.suffix.casefold() == ".csv"
    )
    if not found:
        raise DataError(
            f"{NAME}: no .csv file in {root} (give the CSV itself or a folder holding exactly one)"
        )
    if len(found) > 1:
        listed = ", ".join(entry.name for entry in found)
        raise DataError(f"{NAME}: {len(found)} .csv files in {root}, give one of them: {listed}")
    return found[0]


def _header(path: Path) -> tuple[str, list[str]]:
    """The delimiter (``,`` unless the header has none but ``;`` or a tab) and the stripped column names.

    Chosen from the header, not sniffed, because image paths may hold spaces.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read label file {path}: {error}") from error
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise DataError(f"label file {path} is empty")
    delimiter = next((mark for mark in (",", ";", "\t") if mark in first), ",")
    names = next(csv.reader(io.StringIO(first), delimiter=delimiter))
    return delimiter, [name.strip() for name in names]


def _columns(path: Path, header: list[str]) -> dict[str, str]:
    """Role (image, grade, split, patient, mask_XX) -> the column of the file that fills it."""
    folded: dict[str, str] = {name.casefold(): name for name in header if name}
    columns = {}
    for role, aliases in ALIASES.items():
        matches = [folded[alias.casefold()] for alias in aliases if alias.casefold() in folded]
        if len(matches) > 1:
            raise DataError(
                f"{path}: columns {', '.join(map(repr, matches))} all give the {role}; keep one"
            )
        if matches:
            columns[role] = matches[0]
    has_masks = any(role.startswith("mask_") for role in columns)
    for role in ("image", "grade"):
        if role not in columns and not (role == "grade" and has_masks):
            shown = ", ".join(repr(name) for name in header if name) or "none"
            raise DataError(
                f"{path}: missing the {role} column (one of {', '.join(ALIASES[role])}); found columns: {shown}"
            )
    return columns


class _Files:
    """Paths of a CSV resolved against its folder, then loosely (case, extension) within their folder."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.folders: dict[Path, ImageFolder] = {}

    def find(self, value: str) -> Path | None:
        path = Path(value.replace("\\", "/")).expanduser()
        if not path.is_absolute():
            path = self.base / path
        if path.is_file():
            return path
        folder = self.folders.get(path.parent)
        if folder is None:
            folder = self.folders[path.parent] = ImageFolder(
                path.parent if path.parent.is_dir() else None
            )
        return folder.get(path.name)


def _record(row: Row, where: str, columns: dict[str, str], files: _Files) -> Record:
    image_value = row.get(columns["image"])
    if not image_value:
        raise DataError(f"{where}: empty image path")
    image = files.find(image_value)
    if image is None:
        raise DataError(
            f"{where}: image '{image_value}' not found (relative paths resolve against {files.base})"
        )
    masks = tuple(_mask(row, where, columns.get(f"mask_{lesion}"), files) for lesion in LESIONS)
    has_mask = any(mask is not None for mask in masks)
    grade_value = row.get(columns["grade"]) if "grade" in columns else ""
    if grade_value:
        grade = parse_grade(grade_value, where=where, num_classes=NUM_CLASSES)
    elif has_mask:
        grade = UNKNOWN_GRADE
    else:
        raise DataError(
            f"{where}: empty grade on a row without masks (an image needs a grade or a mask)"
        )
    split = _split(row.get(columns["split"]) if "split" in columns else "", where)
    part = "segmentation" if has_mask else "grading"
    patient = row.get(columns["patient"]) if "patient" in columns else ""
    return Record(
        id=f"{NAME}/{part}/{split}/{image.stem}",
        image=image,
        grade=grade,
        part=part,
        split=split,
        patient=patient or image.stem,
        masks=masks,
    )


def _mask(row: Row, where: str, column: str | None, files: _Files) -> Path | None:
    value = row.get(column) if column else ""
    if not value:
        return None
    path = files.find(value)
    if path is None:
        raise DataError(f"{where}: mask '{value}' (column {column}) not found")
    return path


def _split(value: str, where: str) -> str:
    if not value:
        return "all"
    split = SPLITS.get(value.casefold())
    if split is None:
        raise DataError(f"{where}: split {value!r} is not one of {', '.join(SPLITS)}")
    return split
