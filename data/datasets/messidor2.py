"""Messidor-2 (ADCIS images + Krause et al. 2018 adjudicated grades), datasets.md section 5b.

Layout accepted (anywhere up to two levels below ``root``)::

    IMAGES/                 1,058 ``*.png`` (Messidor pairs) and 690 ``*.JPG`` (Brest extension),
                            flat or in sub-folders
    messidor_data.csv       image_id, adjudicated_dr_grade, adjudicated_dme, adjudicated_gradable
                            (or the Kaggle lookalike: id_code, diagnosis, adjudicated_dme, adjudicated_gradable);
                            next to IMAGES or anywhere up to two levels below IMAGES' parent or ``root``
    messidor-2.csv          optional exam pairs, ``left;right`` (semicolon separated)

The official release has no grades; the labels come from the separate Kaggle download, which is why
the CSV is searched for rather than expected beside ``IMAGES``. Rows with ``adjudicated_gradable == 0``
(empty grade) are ungradable: excluded and counted. The pairs sheet groups the two images of an exam
into one patient; without it each image is its own patient. Part ``grading``, split ``all``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from data.datasets.base import (
    DatasetIndex,
    ImageFolder,
    Row,
    check_root,
    find_marker,
    parse_grade,
    read_table,
    require_marker,
    resolve,
    strip_extension,
)
from data.records import NUM_GRADES, DataError

log = logging.getLogger(__name__)

NAME = "messidor2"
NUM_CLASSES = NUM_GRADES
IMAGES = "IMAGES"
LABELS = "messidor_data.csv"
PAIRS = "messidor-2.csv"
MARKERS: tuple[str, ...] = (IMAGES, LABELS)
# (image column, grade column): the Krause et al. release, then the Kaggle "messidor2preprocess" lookalike
SCHEMAS: tuple[tuple[str, str], ...] = (
    ("image_id", "adjudicated_dr_grade"),
    ("id_code", "diagnosis"),
)
GRADABLE = "adjudicated_gradable"


def index(root: Path) -> DatasetIndex:
    """Every gradable Messidor-2 image with its adjudicated ICDR grade."""
    root = check_root(root, NAME)
    base = require_marker(root, NAME, (IMAGES,))[IMAGES]
    labels = _find_file(LABELS, base, root)
    if labels is None:
        raise DataError(
            f"{NAME}: label file '{LABELS}' not found up to two levels below {base} or {root} "
            "(the grades are the separate Kaggle download google-brain/messidor2-dr-grades)"
        )
    result = DatasetIndex(NAME, root, num_classes=NUM_CLASSES)
    images = ImageFolder(resolve(base, IMAGES), recursive=True)
    if not len(images):
        log.warning("%s: no images in %s; nothing to index", NAME, images.directory)
    else:
        patients = _patients(_find_file(PAIRS, base, root))
        rows, image_column, grade_column = _read_labels(labels)
        for row in rows:
            _add_row(result, row, labels, images, patients, image_column, grade_column)
    result.check_not_empty(f"images of {IMAGES}/ listed in {labels}")
    return result


def _find_file(name: str, base: Path, root: Path) -> Path | None:
    """``name`` beside or below ``IMAGES``' parent first, else anywhere up to two levels below root."""
    for start in (base, root):
        directory = find_marker(start, name)
        if directory is not None:
            return resolve(directory, name)
    return None


def _read_labels(path: Path) -> tuple[list[Row], str, str]:
    """The label rows and the names of their image and grade columns, whichever schema the file uses."""
    errors = []
    for image_column, grade_column in SCHEMAS:
        try:
            return (
                read_table(path, required=(image_column, grade_column)),
                image_column,
                grade_column,
            )
        except DataError as error:
            errors.append(str(error))
    expected = " or ".join(f"({image}, {grade}, ...)" for image, grade in SCHEMAS)
    raise DataError(f"{path}: expected columns {expected}; {errors[-1]}")


def _add_row(
    result: DatasetIndex,
    row: Row,
    labels: Path,
    images: ImageFolder,
    patients: dict[str, str],
    image_column: str,
    grade_column: str,
) -> None:
    where = f"{labels} row {row.line}"
    if _is_ungradable(row, where):
        result.exclude_ungradable("grading", "all")
        return
    name = row.get(image_column)
    grade = parse_grade(row.get(grade_column), where=where, num_classes=NUM_CLASSES)
    image = images.require(name, where)
    result.add_image(
        "grading", "all", image, grade=grade, patient=patients.get(image.stem.casefold())
    )


def _is_ungradable(row: Row, where: str) -> bool:
    """``adjudicated_gradable`` 0 marks the few images the graders could not grade (empty grade)."""
    value = next((text for column, text in row.values.items() if column.casefold() == GRADABLE), "")
    if not value:
        return False
    try:
        return float(value) == 0
    except ValueError:
        raise DataError(f"{where}: {GRADABLE} {value!r} is not 0 or 1") from None


def _patients(pairs: Path | None) -> dict[str, str]:
    """Case-folded image stem -> patient id (the exam's left image stem) from the pairs sheet."""
    if pairs is None:
        log.info("%s: no %s; each image is its own patient", NAME, PAIRS)
        return {}
    patients = {}
    for row in read_table(pairs, required=("left", "right"), delimiter=";"):
        stems = [strip_extension(row.get(side)) for side in ("left", "right") if row.get(side)]
        for stem in stems:
            patients[stem.casefold()] = stems[0]
    return patients
