"""APTOS 2019 Blindness Detection (Kaggle): 3,662 labelled images from Aravind Eye Hospital clinics.

Layout::

    train.csv                 id_code,diagnosis     (id_code: 12 hex characters, no extension)
    train_images/<id_code>.png
    test.csv, test_images/    unlabelled (the private test labels were never released): ignored

There are no patient ids, so each image is its own patient.
"""

from __future__ import annotations

import logging
from pathlib import Path

from data.datasets.base import (
    DatasetIndex,
    ImageFolder,
    check_root,
    parse_grade,
    read_table,
    require_marker,
    resolve,
)

log = logging.getLogger(__name__)

NAME = "aptos2019"
NUM_CLASSES = 5
LABELS = "train.csv"
IMAGES = "train_images"
MARKERS: tuple[str, ...] = (LABELS,)


def index(root: Path) -> DatasetIndex:
    """Every image of train.csv, in split ``train``."""
    root = check_root(root, NAME)
    base = require_marker(root, NAME, MARKERS)[LABELS]
    result = DatasetIndex(NAME, root, num_classes=NUM_CLASSES)
    labels = resolve(base, LABELS)
    rows = read_table(labels, required=("id_code", "diagnosis"))
    images = resolve(base, IMAGES)
    if images is None or not images.is_dir():
        log.warning("%s: skipping split train: no %s/ folder in %s", NAME, IMAGES, base)
    else:
        folder = ImageFolder(images)
        for row in rows:
            where = f"{labels} row {row.line}"
            image = folder.require(row.get("id_code"), where)
            grade = parse_grade(row.get("diagnosis"), where=where, num_classes=NUM_CLASSES)
            result.add_image("grading", "train", image, grade=grade)
    if resolve(base, "test.csv") is not None:
        log.info("%s: test.csv has no labels; ignored", NAME)
    result.check_not_empty(f"images listed in {LABELS} found in {IMAGES}/")
    return result
