"""SIGF (DeepGF, MICCAI 2020): glaucoma in sequences of fundus images, datasets.md section 7.

The layout inside the password-protected ``SIGF-database.rar`` is not public, so this loader
discovers it. What the official code reads is::

    <split>/image/all/<sequence_id>/*.jpg     sorted by file name = chronological
    <split>/label/all/<sequence_id>.txt       one integer 0/1 per line (1 = glaucoma)

A sequence is any folder holding images whose name equals the stem of a ``.txt`` file, both at
most ``MAX_DEPTH`` levels below ``root``, in the same split. The split is the first path component
below ``root`` named train, test, valid or val (val -> valid), else ``all``. Blank lines are skipped,
and so is a first line that is not an integer (a header such as ``label``).

Per-image grade, with ``n`` label lines and ``m`` images (checked in this order):

- ``n == m``: line ``i`` labels image ``i``;
- ``n == 1``: the one line labels every image of the sequence;
- ``n == m - 1``: forecast labels (the official code pairs image ``t`` with label ``t+1``): line ``i``
  is the status at image ``i + 1``. The first image has no label of its own and is left out of
  the index (logged): it is not ungradable, and inventing a grade for it could be wrong, since a
  glaucomatous second visit says nothing certain about the first;
- any other count is a DataError naming the label file and both counts.

``NUM_CLASSES`` is 2; part ``grading``; patient = sequence id; record ids add the sequence id to
the image stem because image names need not be unique across sequences.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from data.datasets.base import (
    IMAGE_EXTENSIONS,
    DatasetIndex,
    ImageFolder,
    check_root,
    parse_grade,
)
from data.records import DataError

log = logging.getLogger(__name__)

NAME = "sigf"
NUM_CLASSES = 2
MARKERS: tuple[str, ...] = (
    "<split>/image/all/<sequence_id>/*.jpg",
    "<split>/label/all/<sequence_id>.txt",
)
SPLIT_NAMES: dict[str, str] = {"train": "train", "test": "test", "valid": "valid", "val": "valid"}
# SIGF-database/data/train/image/all/<sequence>: six levels below the folder the rar was unpacked into
MAX_DEPTH = 6


def index(root: Path) -> DatasetIndex:
    """Every labelled image of every SIGF sequence found below ``root``."""
    root = check_root(root, NAME)
    folders, labels = _discover(root)
    keys = sorted(set(folders) & set(labels))
    if not keys:
        raise DataError(
            f"{NAME}: {root} is not a {NAME} root: looked for label files <sequence_id>.txt matching a folder "
            f"<sequence_id>/ of images up to {MAX_DEPTH} levels down (e.g. {' with '.join(MARKERS)})"
        )
    result = DatasetIndex(NAME, root, num_classes=NUM_CLASSES)
    for key in keys:
        _add_sequence(result, key[0], _only(folders[key], key), _only(labels[key], key))
    result.check_not_empty(f"images of the sequence folders matching {len(keys)} label files")
    return result


Key = tuple[str, str]  # (split, case-folded sequence id)


def _discover(root: Path) -> tuple[dict[Key, list[Path]], dict[Key, list[Path]]]:
    """Folders holding images and ``.txt`` files, each keyed by split and name (folder) or stem (file)."""
    folders: dict[Key, list[Path]] = {}
    labels: dict[Key, list[Path]] = {}
    for directory, subdirectories, files in os.walk(root):
        directory = Path(directory)
        relative = directory.relative_to(root)
        subdirectories.sort()
        if len(relative.parts) >= MAX_DEPTH:
            subdirectories.clear()
        split = _split(relative)
        if any(Path(name).suffix.casefold() in IMAGE_EXTENSIONS for name in files):
            folders.setdefault((split, directory.name.casefold()), []).append(directory)
        for name in sorted(files):
            if Path(name).suffix.casefold() == ".txt":
                labels.setdefault((split, Path(name).stem.casefold()), []).append(directory / name)
    return folders, labels


def _only(paths: list[Path], key: Key) -> Path:
    """The one path of a sequence; two in one split would make the pairing a guess."""
    if len(paths) > 1:
        listed = ", ".join(str(path) for path in paths)
        raise DataError(f"{NAME}: sequence {key[1]!r} of split {key[0]} is ambiguous: {listed}")
    return paths[0]


def _split(relative: Path) -> str:
    """The first component of ``relative`` that names a split, else ``all``."""
    for part in relative.parts:
        split = SPLIT_NAMES.get(part.casefold())
        if split is not None:
            return split
    return "all"


def _add_sequence(result: DatasetIndex, split: str, folder: Path, label_file: Path) -> None:
    images = list(ImageFolder(folder))  # sorted by name = chronological
    grades = _read_labels(label_file)
    if len(grades) == len(images):
        labelled = list(zip(images, grades))
    elif len(grades) == 1:
        labelled = [(image, grades[0]) for image in images]
    elif len(grades) == len(images) - 1:
        log.info(
            "%s: %s has one label fewer than images; first image %s left out",
            NAME,
            label_file,
            images[0],
        )
        labelled = list(zip(images[1:], grades))
    else:
        raise DataError(f"{label_file}: {len(grades)} labels for {len(images)} images in {folder}")
    sequence = folder.name
    for image, grade in labelled:
        result.add_image(
            "grading",
            split,
            image,
            grade=grade,
            patient=sequence,
            name=f"{sequence}_{image.stem}",
        )


def _read_labels(path: Path) -> list[int]:
    """The 0/1 labels of a sequence, one per non-blank line; a first line that is not an integer is a header."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read label file {path}: {error}") from error
    numbered = [
        (number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()
    ]
    if numbered and not _is_integer(numbered[0][1]):
        numbered = numbered[1:]
    if not numbered:
        raise DataError(f"label file {path} has no labels")
    return [
        parse_grade(text, where=f"{path} line {number}", num_classes=NUM_CLASSES)
        for number, text in numbered
    ]


def _is_integer(text: str) -> bool:
    try:
        return float(text).is_integer()
    except ValueError:
        return False
