"""EyePACS, the Kaggle "Diabetic Retinopathy Detection" competition (2015): 35,126 train images,
53,576 test images whose labels were published afterwards.

Layout::

    trainLabels.csv            image,level          (image without extension, e.g. 10_left)
    train/**/10_left.jpeg                           (any depth: train/train/ after a multi-part unzip)
    retinopathy_solution.csv   image,level,Usage    (optional; Public -> split valid, Private -> split test)
    test/**/1_left.jpeg

Both eyes of a patient share the id before ``_left``/``_right``. Indexing lists the folders once
(88k files) and never opens an image.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from data.datasets.base import (
    DatasetIndex,
    ImageFolder,
    Row,
    check_root,
    parse_grade,
    read_table,
    require_marker,
    resolve,
)
from data.records import DataError

log = logging.getLogger(__name__)

NAME = "eyepacs"
NUM_CLASSES = 5
TRAIN_LABELS = "trainLabels.csv"
SOLUTION = "retinopathy_solution.csv"
MARKERS: tuple[str, ...] = (TRAIN_LABELS,)
USAGE_SPLITS: dict[str, str] = {"public": "valid", "private": "test"}
_EYE = re.compile(r"^(?P<patient>.+)_(left|right)$", re.IGNORECASE)


def index(root: Path) -> DatasetIndex:
    """The labelled train images and, when retinopathy_solution.csv is there, the test images."""
    root = check_root(root, NAME)
    base = require_marker(root, NAME, MARKERS)[TRAIN_LABELS]
    labels = _csv_file(resolve(base, TRAIN_LABELS))
    train = resolve(base, "train")
    if train is None or not train.is_dir():
        raise DataError(f"{NAME}: {labels} found but not its image folder {base / 'train'}")
    result = DatasetIndex(NAME, root, num_classes=NUM_CLASSES)
    _add_train(result, labels, ImageFolder(train, recursive=True))
    solution = resolve(base, SOLUTION)
    if solution is not None:
        _add_solution(result, _csv_file(solution), resolve(base, "test"))
    else:
        log.info("%s: no %s in %s; indexing the train split only", NAME, SOLUTION, base)
    result.check_not_empty(f"images listed in {TRAIN_LABELS} found in train/")
    return result


def _csv_file(path: Path) -> Path:
    """The CSV itself: unzipping ``trainLabels.csv.zip`` can yield a folder ``trainLabels.csv/trainLabels.csv``."""
    if path.is_dir():
        inner = resolve(path, path.name)
        if inner is None or inner.is_dir():
            raise DataError(f"{NAME}: {path} is a folder without a {path.name} inside")
        return inner
    return path


def _add_train(result: DatasetIndex, labels: Path, folder: ImageFolder) -> None:
    for row in read_table(labels, required=("image", "level")):
        _add_row(result, row, labels, folder, "train")


def _add_solution(result: DatasetIndex, labels: Path, test: Path | None) -> None:
    if test is None or not test.is_dir():
        log.warning("%s: skipping splits valid and test: no test/ folder next to %s", NAME, labels)
        return
    folder = ImageFolder(test, recursive=True)
    for row in read_table(labels, required=("image", "level", "Usage")):
        split = USAGE_SPLITS.get(row.get("Usage").casefold())
        if split is None:
            raise DataError(
                f"{labels} row {row.line}: Usage {row.get('Usage')!r} is neither Public nor Private"
            )
        _add_row(result, row, labels, folder, split)


def _add_row(result: DatasetIndex, row: Row, labels: Path, folder: ImageFolder, split: str) -> None:
    where = f"{labels} row {row.line}"
    image = folder.require(row.get("image"), where)
    grade = parse_grade(row.get("level"), where=where, num_classes=NUM_CLASSES)
    result.add_image("grading", split, image, grade=grade, patient=patient_of(image.stem))


def patient_of(stem: str) -> str:
    """``10_left`` -> ``10``: both eyes of a patient share the prefix; other names are their own patient."""
    match = _EYE.match(stem)
    return match.group("patient") if match else stem
