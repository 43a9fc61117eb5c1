"""FGADR Seg-set (Zhou et al. 2021): lesion masks and DR grades, datasets.md section 8.

Layout accepted (``Seg-set`` anywhere up to two levels below ``root``, or ``root`` is ``Seg-set``
or holds ``Original_Images`` up to two levels down)::

    Seg-set/
      Original_Images/*.png            1280x1280
      Microaneurysms_Masks/  Hemohedge_Masks/ (sic; Hemorrhage_Masks/ or Haemorrhage_Masks/ accepted)
      HardExudate_Masks/  SoftExudate_Masks/      masks named like the image
      IRMA_Masks/  Neovascularization_Masks/      ignored (not one of MA, HE, EX, SE)
      DR_Seg_Grading_Label.csv         no header: <name>.png,<grade>

Masks are anti-aliased (edge values 1-254), so a pixel is positive at >= 128 (``mask_threshold``
127). A missing mask file (or mask folder) gives None for that lesion. Every image carries masks
and a grade: part ``segmentation``, split ``all`` (no official split), one image per patient.
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
    strip_extension,
)
from data.records import LESIONS, NUM_GRADES, DataError

log = logging.getLogger(__name__)

NAME = "fgadr"
NUM_CLASSES = NUM_GRADES
IMAGES = "Original_Images"
MARKERS: tuple[str, ...] = (f"Seg-set/{IMAGES}", IMAGES)
LABELS = "DR_Seg_Grading_Label.csv"
MASK_THRESHOLD = 127
# lesion (order of LESIONS) -> mask folder names, the release's spelling first
MASK_FOLDERS: dict[str, tuple[str, ...]] = {
    "MA": ("Microaneurysms_Masks",),
    "HE": ("Hemohedge_Masks", "Hemorrhage_Masks", "Haemorrhage_Masks"),
    "EX": ("HardExudate_Masks",),
    "SE": ("SoftExudate_Masks",),
}


def index(root: Path) -> DatasetIndex:
    """Every graded FGADR Seg-set image with the masks it has."""
    root = check_root(root, NAME)
    seg_set = _seg_set(root)
    labels = resolve(seg_set, LABELS) or resolve(seg_set.parent, LABELS)
    if labels is None:
        raise DataError(f"{NAME}: label file {LABELS} not found in {seg_set} or {seg_set.parent}")
    result = DatasetIndex(NAME, root, num_classes=NUM_CLASSES)
    images = ImageFolder(resolve(seg_set, IMAGES))
    if not len(images):
        log.warning("%s: no images in %s; nothing to index", NAME, images.directory)
    else:
        masks = [_mask_folder(seg_set, lesion) for lesion in LESIONS]
        for row in _read_labels(labels):
            _add_row(result, row, labels, images, masks)
    result.check_not_empty(f"images of {IMAGES}/ listed in {labels}")
    return result


def _seg_set(root: Path) -> Path:
    """The folder holding ``Original_Images`` (``Seg-set``), preferring the release's own name."""
    found = require_marker(root, NAME, MARKERS)
    if MARKERS[0] in found:
        return resolve(found[MARKERS[0]], "Seg-set")
    return found[IMAGES]


def _mask_folder(seg_set: Path, lesion: str) -> ImageFolder:
    for name in MASK_FOLDERS[lesion]:
        folder = child(seg_set, name)
        if folder is not None:
            return ImageFolder(folder)
    log.warning(
        "%s: no %s mask folder (%s) in %s", NAME, lesion, " or ".join(MASK_FOLDERS[lesion]), seg_set
    )
    return ImageFolder(None)


def _read_labels(path: Path) -> list[Row]:
    """Header-less ``<name>.png,<grade>`` rows; a header line some copies add (no image name) is skipped."""
    rows = read_table(path, header=False, columns=("image", "grade"), delimiter=",")
    if rows and _is_header(rows[0]):
        log.info("%s: skipping header line %s of %s", NAME, rows[0].values, path)
        rows = rows[1:]
    return rows


def _is_header(row: Row) -> bool:
    """A first row naming no image file and holding no number (``image,grade``)."""
    name, grade = row.get("image"), row.get("grade")
    if strip_extension(name) != name:
        return False
    try:
        float(grade)
    except ValueError:
        return True
    return False


def _add_row(
    result: DatasetIndex, row: Row, labels: Path, images: ImageFolder, masks: list[ImageFolder]
) -> None:
    where = f"{labels} row {row.line}"
    grade = parse_grade(row.get("grade"), where=where, num_classes=NUM_CLASSES)
    image = images.require(row.get("image"), where)
    stem = image.stem
    result.add_image(
        "segmentation",
        "all",
        image,
        grade=grade,
        patient=stem,
        masks=tuple(folder.get(stem) for folder in masks),
        mask_threshold=MASK_THRESHOLD,
        name=stem,
    )
