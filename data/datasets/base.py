"""What every public-dataset loader shares: the index record, root discovery, loose file-name
matching, tolerant CSV reading, grade parsing and image/mask decoding.

A loader turns a dataset root, exactly as the user unpacked it, into a :class:`DatasetIndex`: one
:class:`Record` per usable image (paths and labels only, nothing decoded), plus counts of the
ungradable images it excluded. ``data/prepare.py`` decodes the records into the training cache and
``data/summary.py`` reports them. These rules live here once.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data.decode import DecodeError, decode_rgb
from data.records import LESIONS, NUM_GRADES, UNKNOWN_GRADE, DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
PARTS: tuple[str, ...] = ("grading", "segmentation")
Image.MAX_IMAGE_PIXELS = None  # fundus photographs from some cameras exceed PIL's bomb guard


@dataclass(frozen=True)
class Record:
    """One usable image of a dataset: where it is and what is known about it.

    ``masks`` holds one path per lesion of ``LESIONS`` (MA, HE, EX, SE); ``None`` means the dataset
    has no mask file for that lesion (``mask_valid`` False), which is not the same as "no lesion".
    ``mask_threshold``: a mask pixel is positive where any channel exceeds it.
    """

    id: str  # unique across dataset, part and split, e.g. "idrid/grading/train/IDRiD_001"
    image: Path
    grade: int  # UNKNOWN_GRADE (-1) when the dataset gives none
    part: str  # "grading" or "segmentation"
    split: str  # the dataset's own split name: train, valid, test, or all where it has none
    patient: str  # images of one patient share it (patient-level splits)
    masks: tuple[Path | None, ...] = (None,) * len(LESIONS)
    mask_threshold: int = 0

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise ValueError(f"{self.id}: part must be one of {PARTS}, got {self.part!r}")
        if len(self.masks) != len(LESIONS):
            raise ValueError(f"{self.id}: masks needs {len(LESIONS)} entries (MA, HE, EX, SE)")

    @property
    def mask_valid(self) -> tuple[bool, ...]:
        return tuple(path is not None for path in self.masks)

    @property
    def key(self) -> str:
        """``part/split``, the key of :func:`data.summary` tables."""
        return f"{self.part}/{self.split}"


@dataclass
class DatasetIndex:
    """All usable records of a dataset plus what was excluded, per ``part/split``."""

    name: str
    root: Path
    records: list[Record] = field(default_factory=list)
    ungradable: Counter = field(default_factory=Counter)
    num_classes: int = NUM_GRADES

    def add(self, record: Record) -> None:
        self.records.append(record)

    def add_image(
        self,
        part: str,
        split: str,
        image: Path,
        grade: int = UNKNOWN_GRADE,
        patient: str | None = None,
        masks: tuple[Path | None, ...] = (None,) * len(LESIONS),
        mask_threshold: int = 0,
        name: str | None = None,
    ) -> Record:
        """Add one image's record, id ``<dataset>/<part>/<split>/<name>`` (name: the file stem by
        default), patient the stem unless given."""
        name = name or image.stem
        record = Record(
            id=f"{self.name}/{part}/{split}/{name}",
            image=image,
            grade=grade,
            part=part,
            split=split,
            patient=patient or image.stem,
            masks=masks,
            mask_threshold=mask_threshold,
        )
        self.records.append(record)
        return record

    def exclude_ungradable(self, part: str, split: str) -> None:
        self.ungradable[f"{part}/{split}"] += 1

    def part_keys(self) -> list[str]:
        """Every ``part/split`` with a usable or an excluded image, in a stable order."""
        seen = {record.key for record in self.records} | set(self.ungradable)
        return sorted(seen, key=lambda key: (PARTS.index(key.split("/")[0]), key))

    def check_not_empty(self, looked_for: str) -> None:
        if not self.records:
            raise DataError(f"{self.name}: no usable images found under {self.root} ({looked_for})")

    def check_unique_ids(self) -> None:
        counts = Counter(record.id for record in self.records)
        duplicates = [name for name, count in counts.items() if count > 1]
        if duplicates:
            raise DataError(f"{self.name}: duplicate image ids {duplicates[:5]} under {self.root}")


# --------------------------------------------------------------------------- finding files
def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def child(directory: Path, name: str) -> Path | None:
    """The entry of ``directory`` called ``name``, compared case-insensitively; None if absent."""
    exact = directory / name
    if exact.exists():
        return exact
    wanted = name.casefold()
    for entry in _children(directory):
        if entry.name.casefold() == wanted:
            return entry
    return None


def resolve(directory: Path, relative: str) -> Path | None:
    """Follow ``a/b/c`` below ``directory`` component by component, case-insensitively."""
    current: Path | None = directory
    for part in Path(relative).parts:
        current = child(current, part) if current is not None else None
    return current


def find_marker(root: Path, marker: str, max_depth: int = 2) -> Path | None:
    """The shallowest directory at most ``max_depth`` levels below ``root`` (root included) that
    contains ``marker`` (a relative path such as ``"B. Disease Grading/1. Original Images"``).

    Users unpack with an extra level (``B. Disease Grading/B. Disease Grading/...``); searching a
    few levels down finds the dataset wherever the zip put it.
    """
    level = [root]
    for _ in range(max_depth + 1):
        next_level = []
        for directory in level:
            if resolve(directory, marker) is not None:
                return directory
            next_level += [entry for entry in _children(directory) if entry.is_dir()]
        level = next_level
    return None


def check_root(root: str | Path, dataset: str) -> Path:
    """``root`` as a Path, failing with a clear message when it does not exist."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{dataset}: dataset root {path} does not exist")
    return path


def require_marker(
    root: Path, dataset: str, markers: Sequence[str], max_depth: int = 2
) -> dict[str, Path]:
    """Find each marker below ``root``; fail naming them all if none is found.

    Returns ``{marker: directory containing it}`` for the markers found.
    """
    found = {}
    for marker in markers:
        base = find_marker(root, marker, max_depth)
        if base is not None:
            found[marker] = base
    if not found:
        wanted = " or ".join(f"'{marker}'" for marker in markers)
        raise DataError(
            f"{dataset}: {root} is not the root of dataset {dataset}: looked for {wanted} up to {max_depth} levels down"
        )
    return found


def strip_extension(name: str) -> str:
    """``IDRiD_001.jpg`` -> ``IDRiD_001``; names without an image extension are kept whole."""
    path = Path(name.strip())
    return path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else path.name


class ImageFolder:
    """The images of one folder by stem, matched case-insensitively across extensions.

    CSVs name images with or without the extension, in another case than the file
    (Messidor-2 mixes ``.png`` and ``.JPG``); lookups compare stems case-folded.
    """

    def __init__(self, directory: Path | None, recursive: bool = False) -> None:
        self.directory = directory
        self.by_stem: dict[str, Path] = {}
        if directory is None:
            return
        entries = sorted(directory.rglob("*")) if recursive else _children(directory)
        ignored = []
        for entry in entries:
            if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
                key = entry.stem.casefold()
                if key in self.by_stem:
                    ignored.append(entry)
                    continue
                self.by_stem[key] = entry
        if ignored:  # one line, not one per file: a folder unpacked twice holds thousands
            log.warning(
                "%s: %d images share a stem with another image and are ignored (first: %s)",
                directory,
                len(ignored),
                ignored[0],
            )

    def __len__(self) -> int:
        return len(self.by_stem)

    def __iter__(self):
        return iter(sorted(self.by_stem.values()))

    def get(self, name: str) -> Path | None:
        return self.by_stem.get(strip_extension(name).casefold())

    def require(self, name: str, where: str) -> Path:
        """The image called ``name``; ``where`` (file and row) goes into the error when it is missing."""
        path = self.get(name)
        if path is None:
            raise DataError(f"{where}: image '{name}' not found in {self.directory}")
        return path


# --------------------------------------------------------------------------- label tables
@dataclass(frozen=True)
class Row:
    """One CSV row with its 1-based line number in the file (for error messages)."""

    line: int
    values: dict[str, str]

    def get(self, column: str, default: str = "") -> str:
        return self.values.get(column, default)


def _normalise_header(name: str) -> str:
    return name.strip()


def read_table(
    path: Path,
    required: Iterable[str] = (),
    header: bool = True,
    columns: Sequence[str] | None = None,
    delimiter: str | None = None,
) -> list[Row]:
    """Rows of a CSV label file as ``{column: stripped value}``.

    Reads ``utf-8-sig`` (BOMs occur), sniffs ``,``/``;``/tab/space when ``delimiter`` is None, strips
    header names ("Risk of macular edema " has a trailing space), drops unnamed empty columns and
    blank rows. Without a header, ``columns`` names the fields. Required columns are matched
    case-insensitively and renamed to the spelling asked for; a missing one fails listing the
    columns found.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read label file {path}: {error}") from error
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"label file {path} is empty")
    if delimiter is None:
        sample = "\n".join(lines[:20])
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t ").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=delimiter == " ")
    raw = [(number, fields) for number, fields in enumerate(reader, start=1)]
    raw = [(number, fields) for number, fields in raw if any(value.strip() for value in fields)]
    if header:
        _, names = raw[0]
        names = [_normalise_header(name) for name in names]
        raw = raw[1:]
    else:
        if columns is None:
            raise ValueError("columns are required when the table has no header")
        names = list(columns)
    required = list(required)
    rename = {}
    folded = {name.casefold(): name for name in names if name}
    missing = []
    for column in required:
        found = folded.get(column.casefold())
        if found is None:
            missing.append(column)
        else:
            rename[found] = column
    if missing:
        shown = ", ".join(repr(name) for name in names if name) or "none"
        raise DataError(
            f"{path}: missing required column(s) {', '.join(repr(m) for m in missing)}; found columns: {shown}"
        )
    rows = []
    for number, fields in raw:
        values = {}
        for index, name in enumerate(names):
            if not name:
                continue  # unnamed (empty trailing) column
            values[rename.get(name, name)] = fields[index].strip() if index < len(fields) else ""
        rows.append(Row(number, values))
    return rows


def parse_grade(
    value: str,
    where: str,
    num_classes: int = NUM_GRADES,
    ungradable: Iterable[int] = (),
) -> int | None:
    """An integer grade in ``0..num_classes-1``; None for a value the dataset marks ungradable.

    ``where`` names the file and row in the error raised for a non-integer or out-of-range value.
    """
    text = value.strip()
    try:
        number = float(text)
        if not number.is_integer():
            raise ValueError
        grade = int(number)
    except ValueError:
        raise DataError(f"{where}: grade {value!r} is not an integer") from None
    if grade in set(ungradable):
        return None
    if not 0 <= grade < num_classes:
        raise DataError(f"{where}: grade {grade} out of range 0..{num_classes - 1}")
    return grade


# --------------------------------------------------------------------------- decoding
def read_image(path: Path, min_side: int | None = None) -> np.ndarray:
    """An image file as upright HxWx3 uint8 RGB (:func:`data.decode.decode_rgb`, the decoder
    predict.py uses too); a DataError naming the file if it is missing, unreadable or truncated.

    ``min_side``: JPEGs may be decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, much faster) as long as
    the shorter side stays at least ``min_side``.
    """
    try:
        return decode_rgb(path, min_side)[0]
    except DecodeError as error:
        raise DataError(f"unreadable image {error}") from None


def read_mask(path: Path, threshold: int = 0) -> np.ndarray:
    """A lesion mask as an HxW bool array: positive where any channel exceeds ``threshold``.

    Never a grayscale conversion: IDRiD's pure-red masks would turn into 76 and vanish under a
    ``> 127`` rule. Palette images (IDRiD's release) are expanded to RGB first.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P":
                array = np.asarray(image.convert("RGB"))
            elif image.mode in ("1", "L", "I;16", "I;16B", "I", "F", "RGB", "RGBA", "LA"):
                array = np.asarray(image)
                if image.mode in ("RGBA", "LA"):
                    array = array[..., :-1]
            else:
                array = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DataError(f"unreadable mask {path}: {error}") from error
    if array.dtype == bool:
        return array if array.ndim == 2 else array.any(axis=-1)
    positive = array > threshold
    return positive.any(axis=-1) if positive.ndim == 3 else positive


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DataError(f"unreadable image {path}: {error}") from error
    return height, width
