"""DDR (Li et al. 2019): DR grading (13,673 images) and lesion segmentation (757 images).

Layout of the official archive, unpacked into ``DDR-dataset/``::

    DR_grading/{train,valid,test}/*.jpg + DR_grading/{train,valid,test}.txt   ("<name.jpg> <label>", no header)
    lesion_segmentation/<split>/image/*.jpg + <split>/label/{EX,HE,MA,SE}/<stem>.tif

The valid split names its mask folder ``segmentation label/``; either name is accepted for every
split. Label 5 is "ungradable": excluded and counted. An all-zero DDR mask means "no lesion", so any
existing mask file is set; only a missing file gives ``None``.
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

NAME = "ddr"
NUM_CLASSES = 5
GRADING_MARKER = "DR_grading"
SEGMENTATION_MARKER = "lesion_segmentation"
MARKERS: tuple[str, ...] = (GRADING_MARKER, SEGMENTATION_MARKER)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
UNGRADABLE = 5
LABEL_FOLDERS: tuple[str, ...] = ("label", "segmentation label")  # valid uses the second


def index(root: Path) -> DatasetIndex:
    """Every gradable image of DR_grading and every image with a lesion mask of lesion_segmentation."""
    root = check_root(root, NAME)
    parts = require_marker(root, NAME, MARKERS)
    result = DatasetIndex(NAME, root, num_classes=NUM_CLASSES)
    for marker, add in ((GRADING_MARKER, _add_grading), (SEGMENTATION_MARKER, _add_segmentation)):
        if marker not in parts:
            log.info("%s: no %s/ under %s", NAME, marker, root)
            continue
        for split in SPLITS:
            add(result, resolve(parts[marker], marker), split)
    result.check_not_empty(
        f"images listed in {GRADING_MARKER}/<split>.txt or in {SEGMENTATION_MARKER}/<split>/image"
    )
    return result


def _add_grading(result: DatasetIndex, grading: Path, split: str) -> None:
    labels = resolve(grading, f"{split}.txt")
    images = resolve(grading, split)
    if labels is None or images is None:
        missing = f"{split}.txt" if labels is None else f"{split}/"
        log.warning("%s: skipping grading/%s: %s not found in %s", NAME, split, missing, grading)
        return
    folder = ImageFolder(images)
    for row in read_table(labels, header=False, columns=("image", "label"), delimiter=" "):
        where = f"{labels} row {row.line}"
        grade = parse_grade(
            row.get("label"), where=where, num_classes=NUM_CLASSES, ungradable=(UNGRADABLE,)
        )
        if grade is None:
            result.exclude_ungradable("grading", split)
            continue
        image = folder.require(row.get("image"), where)
        result.add_image("grading", split, image, grade=grade)  # DDR publishes no patient ids


def _add_segmentation(result: DatasetIndex, segmentation: Path, split: str) -> None:
    images = resolve(segmentation, f"{split}/image")
    labels = _label_folder(segmentation, split)
    if images is None or labels is None:
        missing = "image/" if images is None else " or ".join(f"{name}/" for name in LABEL_FOLDERS)
        log.warning(
            "%s: skipping segmentation/%s: %s not found in %s",
            NAME,
            split,
            missing,
            segmentation / split,
        )
        return
    folder = ImageFolder(images)
    masks = {lesion: ImageFolder(resolve(labels, lesion)) for lesion in LESIONS}
    for lesion_masks in masks.values():
        _check_masks_have_images(lesion_masks, folder)
    for image in folder:
        paths = tuple(masks[lesion].get(image.stem) for lesion in LESIONS)
        if not any(paths):
            log.warning("%s: %s has no lesion mask in %s; skipped", NAME, image, labels)
            continue
        result.add_image("segmentation", split, image, grade=UNKNOWN_GRADE, masks=paths)


def _label_folder(segmentation: Path, split: str) -> Path | None:
    """``<split>/label``, or ``<split>/segmentation label`` as in the official valid split."""
    found = [
        path
        for name in LABEL_FOLDERS
        if (path := resolve(segmentation, f"{split}/{name}")) is not None
    ]
    if len(found) > 1:
        log.warning("%s: both %s and %s exist; using the first", NAME, *found)
    return found[0] if found else None


def _check_masks_have_images(masks: ImageFolder, images: ImageFolder) -> None:
    """A mask named after no image means masks and images disagree; fail rather than drop it."""
    for mask in masks:
        if images.get(mask.stem) is None:
            raise DataError(
                f"{mask}: mask of image '{mask.stem}', which is not in {images.directory}"
            )
