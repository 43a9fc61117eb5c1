"""Photographs to grade (``predict.py``): which files, decoding any common format safely, and the
model's input made with the training cache's own field-of-view crop (``data/prepare.py``).

Inputs are files, folders (searched recursively for image extensions) or CSV lists (a ``path``
column, relative paths taken from the CSV's folder, an optional ``grade`` column as a reference).
Decoding accepts JPEG, PNG, TIFF and BMP in 8 or 16 bits, grey, RGB, RGBA, palette and CMYK,
and turns EXIF-rotated photographs upright. A file that cannot be graded is not an exception to
the caller's loop: :class:`PhotoError` carries a ``kind`` (the CSV status) and a one-line reason.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from data.datasets.base import IMAGE_EXTENSIONS
from data.decode import MAX_PIXELS, DecodeError, decode_rgb
from data.fundus import crop_to_fov_square
from data.prepare import hr_square, resize_square
from data.quality import QUALITY_SIDE, Quality, assess, no_fov
from data.records import UNKNOWN_GRADE, DataError

THUMBNAIL_SIDE = 320  # longer side of the photograph's thumbnail in the report and the panel


# A file that cannot be graded; ``kind`` is its CSV status (unreadable, empty, too_large, missing).
PhotoError = DecodeError


@dataclass(frozen=True)
class PhotoInput:
    """One photograph to grade: its path as given and, from a CSV list, a reference grade."""

    path: Path
    reference_grade: int = UNKNOWN_GRADE


@dataclass
class InputList:
    """What the command-line paths expand to, in order, and the folder files without an image extension."""

    photos: list[PhotoInput] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _folder_images(folder: Path, ignored: list[Path]) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted, hidden files skipped); others go to ``ignored``."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(
            part.startswith(".") for part in path.relative_to(folder).parts
        ):
            continue
        (found if _is_image_name(path) else ignored).append(path)
    return found


def read_list(path: Path) -> list[PhotoInput]:
    """A CSV list: a ``path`` column (else the first column), optional ``grade``; relative paths from the CSV's folder."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the list {path}: {error}") from error
    if not rows:
        raise DataError(f"the list {path} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    has_header = "path" in header
    column = header.index("path") if has_header else 0
    grade_column = header.index("grade") if has_header and "grade" in header else None
    photos = []
    for number, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        if not row or not row[column].strip():
            continue
        grade = UNKNOWN_GRADE
        if grade_column is not None and grade_column < len(row) and row[grade_column].strip():
            try:
                grade = int(row[grade_column])
            except ValueError:
                raise DataError(
                    f"{path} row {number}: grade {row[grade_column]!r} is not an integer"
                ) from None
        entry = Path(row[column].strip()).expanduser()
        photos.append(PhotoInput(entry if entry.is_absolute() else path.parent / entry, grade))
    return photos


def list_inputs(paths: Iterable[str | Path]) -> InputList:
    """Expand files, folders and ``.csv`` lists into photographs, in the order given.

    A path on the command line that does not exist is a usage error (DataError); a path inside a
    CSV list that does not exist is listed and reported later (status ``missing``).
    """
    inputs = InputList()
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            inputs.photos += [PhotoInput(found) for found in _folder_images(path, inputs.ignored)]
        elif path.is_file() and path.suffix.lower() == ".csv":
            inputs.photos += read_list(path)
        elif path.is_file():
            inputs.photos.append(PhotoInput(path))
        else:
            raise DataError(f"input not found: {path}")
    return inputs


def read_photo(
    path: Path, min_side: int | None = None, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, tuple[int, int]]:
    """A photograph as upright HxWx3 uint8 RGB and its full-resolution upright ``(height, width)``,
    decoded by the training data's own decoder (:func:`data.decode.decode_rgb`). Raises
    :class:`PhotoError`: ``missing``, ``empty``, ``too_large`` or ``unreadable``."""
    return decode_rgb(path, min_side, max_pixels)


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The photograph with its longer side at ``side`` (area-averaged), aspect kept."""
    height, width = image.shape[:2]
    factor = side / max(height, width)
    if factor >= 1:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@dataclass
class PreparedPhoto:
    """The model's view of one photograph: the HR-size FOV square (None when no FOV was found)."""

    hr: np.ndarray | None  # SxSx3 uint8, zero outside the FOV
    fov: np.ndarray | None  # SxS bool
    quality: Quality
    thumbnail: np.ndarray  # the photograph, longer side THUMBNAIL_SIDE


def prepare_photo(
    image: np.ndarray, hr_size: int, full_size: tuple[int, int] | None = None
) -> PreparedPhoto:
    """Crop a decoded photograph to its FOV square exactly as the training cache does, resize it
    to ``hr_size`` and assess its quality (``data/quality.py``).

    ``full_size``: the stored ``(height, width)`` when ``image`` was decoded at a reduced scale,
    so the FOV size is reported in the file's own pixels.
    """
    small = thumbnail(image)
    try:
        square, _, fov = crop_to_fov_square(image)
    except DataError:
        return PreparedPhoto(None, None, no_fov(), small)
    scale = (full_size[0] / image.shape[0]) if full_size else 1.0
    quality_side = min(square.shape[0], QUALITY_SIDE)
    quality = assess(
        resize_square(square, quality_side),
        resize_square(fov.astype(np.uint8), quality_side, nearest=True) > 0,
        fov_fraction=float(np.count_nonzero(fov)) / (image.shape[0] * image.shape[1]),
        fov_side=round(square.shape[0] * scale),
    )
    hr, hr_fov = hr_square(square, fov, hr_size)
    return PreparedPhoto(hr, hr_fov, quality, small)


class PhotoDataset(torch.utils.data.Dataset):
    """Decodes and prepares one photograph per item (thread-safe); never raises for a bad file.

    An item is a dict: ``index``, ``path``, ``reference_grade``, ``status`` (``ok`` so far, or the
    :class:`PhotoError` kind), ``reason``, ``seconds``, and when decoded ``height``, ``width``,
    ``quality``, ``thumbnail``, ``hr`` (``[3,S,S]`` uint8 tensor or None) and ``fov`` (``[1,S,S]`` bool).
    """

    def __init__(
        self, photos: Sequence[PhotoInput], hr_size: int, max_pixels: int = MAX_PIXELS
    ) -> None:
        self.photos, self.hr_size, self.max_pixels = list(photos), hr_size, max_pixels

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> dict:
        started = time.perf_counter()
        photo = self.photos[index]
        item = {
            "index": index,
            "path": str(photo.path),
            "reference_grade": photo.reference_grade,
            "status": "ok",
            "reason": "",
        }
        try:
            # JPEGs decode at data.prepare's DCT scale whenever the HR size is at least QUALITY_SIDE (512).
            image, (height, width) = read_photo(
                photo.path, max(self.hr_size, QUALITY_SIDE), self.max_pixels
            )
        except PhotoError as error:
            item.update(status=error.kind, reason=str(error), seconds=time.perf_counter() - started)
            return item
        prepared = prepare_photo(image, self.hr_size, (height, width))
        item.update(
            height=height, width=width, quality=prepared.quality, thumbnail=prepared.thumbnail
        )
        if prepared.hr is None:
            item.update(hr=None, fov=None)
        else:
            item.update(
                hr=torch.from_numpy(np.ascontiguousarray(prepared.hr.transpose(2, 0, 1))),
                fov=torch.from_numpy(prepared.fov)[None],
            )
        item["seconds"] = time.perf_counter() - started
        return item


# The demo's photographs: skimage's public-domain fundus and renders of the embedded dataset's test
# split (seed 0) whose grades are known by construction: (index, the grade it renders with).
DEMO_RENDERS = ((2, 0), (0, 2), (4, 4))
DEMO_SIZE = 1024


def write_demo_photos(folder: str | Path) -> list[PhotoInput]:
    """Write the demo's photographs as JPEGs into ``folder``; the renders carry their grades as references."""
    import skimage.data

    from data.synthetic import render_sample

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    retina = folder / "skimage_retina.jpg"
    Image.fromarray(skimage.data.retina()).save(retina, quality=95)
    photos = [PhotoInput(retina)]
    for index, _ in DEMO_RENDERS:
        sample = render_sample(0, "test", index, DEMO_SIZE)
        path = folder / f"embedded_test_{index:05d}_grade{sample.grade}.jpg"
        Image.fromarray(sample.image).save(path, quality=95)
        photos.append(PhotoInput(path, sample.grade))
    return photos
