"""DeepDRiD (ISBI 2020), regular fundus and ultra-widefield images, datasets.md section 6.

Layout accepted (the split folders anywhere up to three levels below ``root``, so ``root`` may be
the repository, ``regular_fundus_images/`` itself, or one or two levels above the repository)::

    regular_fundus_images/
      regular-fundus-training/    Images/<patient_id>/<image_id>.jpg   regular-fundus-training.csv
      regular-fundus-validation/  Images/...                           regular-fundus-validation.csv
      Online-Challenge1&2-Evaluation/  Images/...  Challenge1_upload.csv (empty grades)  [Challenge1_labels.csv]
    ultra-widefield_images/
      ultra-widefield-training/ | ultra-widefield-validation/  Images/...  <any>.csv with a DR_level column
      Online-Challenge3-Evaluation/  Images/...  [labels CSV]

Regular CSVs fill only the grade column of the image's own eye: the per-image grade is whichever of
``left_eye_DR_Level`` / ``right_eye_DR_Level`` is filled (patient 56 has it on the other eye's
column: trusted, with a warning). ``image_path`` is a Windows path without ``Images/``, so paths are
built as ``Images/<patient_id>/<image_id>`` and matched loosely (any depth, case, extension),
falling back to the file name of ``image_path``. UWF ``DR_level`` 5 is ungradable: excluded and
counted. The evaluation folders become split ``test`` only when a CSV with filled grades is present
(the released ``*_labels.xlsx`` needs openpyxl, which the project does not install: convert it to
CSV). Part ``grading``; patient = ``patient_id``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from data.datasets.base import (
    DatasetIndex,
    ImageFolder,
    Row,
    check_root,
    child,
    parse_grade,
    read_table,
    require_marker,
    resolve,
)
from data.records import NUM_GRADES, DataError

log = logging.getLogger(__name__)

NAME = "deepdrid"
UWF_NAME = "deepdrid_uwf"
NUM_CLASSES = NUM_GRADES
MARKERS: tuple[str, ...] = ("regular-fundus-training", "regular-fundus-validation")
UWF_MARKERS: tuple[str, ...] = ("ultra-widefield-training", "ultra-widefield-validation")
SPLITS: dict[str, str] = {"training": "train", "validation": "valid"}
EVALUATION = "Online-Challenge1&2-Evaluation"
UWF_EVALUATION = "Online-Challenge3-Evaluation"
LEFT, RIGHT = "left_eye_DR_Level", "right_eye_DR_Level"
UWF_GRADE = "DR_level"
UWF_UNGRADABLE = 5
# grade column of an evaluation labels CSV (the released Challenge1_labels.xlsx calls it DR_Levels)
EVALUATION_GRADES: tuple[str, ...] = ("DR_Levels", "DR_Level", "grade", "label")
MAX_DEPTH = 3


def index(root: Path, uwf: bool = False) -> DatasetIndex:
    """Regular fundus images (``uwf=False``) or ultra-widefield images (``uwf=True``) with grades."""
    name = UWF_NAME if uwf else NAME
    root = check_root(root, name)
    markers = UWF_MARKERS if uwf else MARKERS
    found = require_marker(root, name, markers, max_depth=MAX_DEPTH)
    parent = next(iter(found.values()))  # the folder holding the split folders
    result = DatasetIndex(name, root, num_classes=NUM_CLASSES)
    for marker in markers:
        split = SPLITS[marker.rsplit("-", 1)[1]]
        split_dir = resolve(parent, marker)
        if split_dir is None:
            log.warning("%s: no %s folder in %s; split %s skipped", name, marker, parent, split)
            continue
        images = _images(result, split_dir, split)
        if images is None:
            continue
        if uwf:
            _add_uwf(result, split, images, _label_csv(name, split_dir, (UWF_GRADE,)))
        else:
            _add_regular(result, split, images, _label_csv(name, split_dir, (LEFT, RIGHT)))
    evaluation = resolve(parent, UWF_EVALUATION if uwf else EVALUATION)
    if evaluation is not None:
        _add_evaluation(result, evaluation)
    result.check_not_empty(f"images of {' / '.join(markers)} listed in their label CSVs")
    return result


# --------------------------------------------------------------------------- regular fundus
def _add_regular(result: DatasetIndex, split: str, images: ImageFolder, labels: Path) -> None:
    for row in read_table(labels, required=("patient_id", "image_id", LEFT, RIGHT)):
        where = f"{labels} row {row.line}"
        grade = _eye_grade(row, where)
        _add(result, split, row, images, grade, row.get("patient_id"), where)


def _eye_grade(row: Row, where: str) -> int:
    """The grade of whichever eye column is filled; both filled must agree."""
    left, right = row.get(LEFT), row.get(RIGHT)
    if not left and not right:
        raise DataError(f"{where}: both {LEFT} and {RIGHT} are empty")
    grades = {
        side: parse_grade(value, where=where, num_classes=NUM_CLASSES)
        for side, value in (("l", left), ("r", right))
        if value
    }
    if len(set(grades.values())) > 1:
        raise DataError(f"{where}: {LEFT} {left!r} and {RIGHT} {right!r} disagree")
    if len(grades) == 1:
        side = next(iter(grades))
        eye = _eye_letter(row.get("image_id"))
        if eye in ("l", "r") and eye != side:
            column = LEFT if side == "l" else RIGHT
            log.warning(
                "%s: image %s is filled in %s; trusting the column",
                where,
                row.get("image_id"),
                column,
            )
    return next(iter(grades.values()))


def _eye_letter(image_id: str) -> str:
    """``56_r3`` -> ``r``: the laterality letter after the last underscore."""
    return image_id.rsplit("_", 1)[-1][:1].casefold()


# --------------------------------------------------------------------------- ultra-widefield
def _add_uwf(result: DatasetIndex, split: str, images: ImageFolder, labels: Path) -> None:
    for row in read_table(labels, required=("patient_id", "image_id", UWF_GRADE)):
        where = f"{labels} row {row.line}"
        grade = parse_grade(
            row.get(UWF_GRADE), where=where, num_classes=NUM_CLASSES, ungradable=(UWF_UNGRADABLE,)
        )
        if grade is None:
            result.exclude_ungradable("grading", split)
            continue
        _add(result, split, row, images, grade, row.get("patient_id"), where)


def _label_csv(name: str, directory: Path, columns: tuple[str, ...]) -> Path:
    """The CSV of ``directory`` named like the folder (``regular-fundus-training.csv``), else the only
    one holding ``columns`` (the UWF CSV name is not documented; ``*-source-*.csv`` lacks grades)."""
    named = resolve(directory, f"{directory.name}.csv")
    if named is not None:
        return named
    candidates = [path for path in _csv_files(directory) if _has_columns(path, columns)]
    if len(candidates) != 1:
        listed = ", ".join(path.name for path in _csv_files(directory)) or "none"
        raise DataError(
            f"{name}: need exactly one label CSV with column(s) {', '.join(columns)} "
            f"in {directory}; CSV files there: {listed}"
        )
    return candidates[0]


# --------------------------------------------------------------------------- evaluation (test)
def _add_evaluation(result: DatasetIndex, directory: Path) -> None:
    """Split ``test`` from a labels CSV with filled grades; the upload CSVs only have empty columns."""
    ungradable = (UWF_UNGRADABLE,) if result.name == UWF_NAME else ()
    for labels in _csv_files(directory):
        rows, column = _graded_rows(labels)
        if column is None:
            continue
        images = _images(result, directory, "test")
        if images is None:
            return
        for row in rows:
            where = f"{labels} row {row.line}"
            grade = parse_grade(
                row.get(column), where=where, num_classes=NUM_CLASSES, ungradable=ungradable
            )
            if grade is None:
                result.exclude_ungradable("grading", "test")
                continue
            image_id = row.get("image_id")
            patient = row.get("patient_id") or image_id.rsplit("_", 1)[0]
            _add(result, "test", row, images, grade, patient, where)
        return
    workbooks = sorted(
        path.name for path in directory.iterdir() if path.suffix.casefold() == ".xlsx"
    )
    if workbooks:
        log.warning(
            "%s: %s has labels only as %s; skipped because reading .xlsx needs openpyxl, which is not "
            "installed (save the sheet as CSV next to it to index split test)",
            result.name,
            directory,
            ", ".join(workbooks),
        )
    else:
        log.info(
            "%s: %s has no labels CSV with grades; the evaluation set is skipped",
            result.name,
            directory,
        )


def _graded_rows(path: Path) -> tuple[list[Row], str | None]:
    """Rows of ``path`` and its grade column, or no column when the file has no filled grade."""
    try:
        rows = read_table(path, required=("image_id",))
    except DataError:
        return [], None
    columns = {name.casefold(): name for name in (rows[0].values if rows else ())}
    for column in EVALUATION_GRADES:
        matched = columns.get(column.casefold())
        if matched is not None and any(row.get(matched) for row in rows):
            return rows, matched
    return [], None


# --------------------------------------------------------------------------- shared
def _images(result: DatasetIndex, split_dir: Path, split: str) -> ImageFolder | None:
    """All images below ``<split>/Images``; None (split skipped with a warning) when there are none."""
    folder = child(split_dir, "Images")
    images = ImageFolder(folder, recursive=True)
    if not len(images):
        log.warning("%s: no images in %s/Images; split %s skipped", result.name, split_dir, split)
        return None
    return images


def _add(
    result: DatasetIndex,
    split: str,
    row: Row,
    images: ImageFolder,
    grade: int,
    patient: str,
    where: str,
) -> None:
    image_id = row.get("image_id")
    image = images.get(image_id) or images.get(_windows_name(row.get("image_path")))
    if image is None:
        raise DataError(f"{where}: image '{image_id}' not found in {images.directory}")
    result.add_image("grading", split, image, grade=grade, patient=patient)


def _windows_name(path: str) -> str:
    """The file name of ``\\regular-fundus-training\\1\\1_l1.jpg`` (or of a POSIX path)."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _csv_files(directory: Path) -> list[Path]:
    return sorted(
        path for path in directory.iterdir() if path.is_file() and path.suffix.casefold() == ".csv"
    )


def _has_columns(path: Path, columns: tuple[str, ...]) -> bool:
    try:
        read_table(path, required=columns)
    except DataError:
        return False
    return True
