"""IDRiD (ISBI 2018): part A (lesion segmentation, 81 images) and part B (disease grading, 516 images).

Layout, either part may be absent, test sets are optional::

    A. Segmentation/1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_01.jpg
    A. Segmentation/2. All Segmentation Groundtruths/<set>/1. Microaneurysms/IDRiD_01_MA.tif (HE, EX, SE, OD)
    B. Disease Grading/1. Original Images/<set>/IDRiD_001.jpg
    B. Disease Grading/2. Groundtruths/{a. IDRiD_Disease Grading_Training Labels.csv,b. ..._Testing Labels.csv}

Each part is found by a folder or file only it has, so the part folder's own name does not matter
(``A.%20Segmentation``, a doubled ``A. Segmentation/A. Segmentation``). Masks are matched by their
file name (``<image>_<LESION>``) anywhere below the set's groundtruth folder, any case and .tif/.tiff;
a lesion without a mask file (IDRiD_43 has no HE, about half lack SE) gets ``None``.
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
from data.records import LESIONS, UNKNOWN_GRADE, DataError

log = logging.getLogger(__name__)

NAME = "idrid"
NUM_CLASSES = 5
SEGMENTATION_MARKER = "2. All Segmentation Groundtruths"
GRADING_MARKER = "2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"
MARKERS: tuple[str, ...] = (SEGMENTATION_MARKER, GRADING_MARKER)
MAX_DEPTH = 3  # root, the dataset folder, a part folder, the doubled part folder

SET_FOLDERS: dict[str, str] = {"train": "a. Training Set", "test": "b. Testing Set"}
GRADING_CSVS: dict[str, str] = {
    "train": "2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv",
    "test": "2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv",
}
NAME_COLUMN = "Image name"
GRADE_COLUMN = "Retinopathy grade"


def index(root: Path) -> DatasetIndex:
    """Every graded image of part B and every image with a lesion mask of part A."""
    root = check_root(root, NAME)
    parts = require_marker(root, NAME, MARKERS, MAX_DEPTH)
    grading, segmentation = parts.get(GRADING_MARKER), parts.get(SEGMENTATION_MARKER)
    result = DatasetIndex(NAME, root, num_classes=NUM_CLASSES)
    if grading is not None:
        for split in SET_FOLDERS:
            _add_grading(result, grading, split)
    else:
        log.info("%s: no disease-grading part under %s", NAME, root)
    if segmentation is not None:
        for split in SET_FOLDERS:
            _add_segmentation(result, segmentation, split)
    else:
        log.info("%s: no segmentation part under %s", NAME, root)
    result.check_not_empty(
        f"images listed in {GRADING_CSVS['train']} or with masks in {SEGMENTATION_MARKER}"
    )
    return result


def _add_grading(result: DatasetIndex, part: Path, split: str) -> None:
    csv_path = resolve(part, GRADING_CSVS[split])
    images = resolve(part, f"1. Original Images/{SET_FOLDERS[split]}")
    if csv_path is None or images is None:
        missing = (
            GRADING_CSVS[split] if csv_path is None else f"1. Original Images/{SET_FOLDERS[split]}"
        )
        log.warning("%s: skipping grading/%s: %s not found under %s", NAME, split, missing, part)
        return
    folder = ImageFolder(images)
    for row in read_table(csv_path, required=(NAME_COLUMN, GRADE_COLUMN)):
        where = f"{csv_path} row {row.line}"
        image = folder.require(row.get(NAME_COLUMN), where)
        grade = parse_grade(row.get(GRADE_COLUMN), where=where, num_classes=NUM_CLASSES)
        result.add_image("grading", split, image, grade=grade)


def _add_segmentation(result: DatasetIndex, part: Path, split: str) -> None:
    images = resolve(part, f"1. Original Images/{SET_FOLDERS[split]}")
    truths = resolve(part, f"{SEGMENTATION_MARKER}/{SET_FOLDERS[split]}")
    if images is None or truths is None:
        missing = "1. Original Images" if images is None else SEGMENTATION_MARKER
        where = f"{missing}/{SET_FOLDERS[split]}"
        log.warning("%s: skipping segmentation/%s: %s not found under %s", NAME, split, where, part)
        return
    folder = ImageFolder(images)
    masks = ImageFolder(truths, recursive=True)
    _check_masks_have_images(masks, folder)
    for image in folder:
        paths = tuple(masks.get(f"{image.stem}_{lesion}") for lesion in LESIONS)
        if not any(paths):
            log.warning("%s: %s has no lesion mask in %s; skipped", NAME, image, truths)
            continue
        result.add_image("segmentation", split, image, grade=UNKNOWN_GRADE, masks=paths)


def _check_masks_have_images(masks: ImageFolder, images: ImageFolder) -> None:
    """A lesion mask named after no image means the names disagree (e.g. IDRiD_01 vs IDRiD_001)."""
    suffixes = tuple(f"_{lesion}".casefold() for lesion in LESIONS)  # all three characters long
    for mask in masks:
        image_stem = mask.stem[:-3]
        if mask.stem.casefold().endswith(suffixes) and images.get(image_stem) is None:
            raise DataError(
                f"{mask}: lesion mask of image '{image_stem}', which is not in {images.directory}"
            )
