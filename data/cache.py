"""The preprocessing cache: its on-disk format, its manifest, and the dataset that trains from it.

``python -m data.prepare`` writes, for every usable image of a public dataset, the FOV-cropped square
HR image and one PNG of packed lesion masks + FOV (``data/maskbits.py``)::

    CACHE/cache.json      format, dataset, size, JPEG quality, ungradable counts
    CACHE/images/<key>.jpg
    CACHE/masks/<key>.png
    CACHE/manifest.csv    one row per image: labels, file names, a SHA-256 per file, source path
    CACHE/skipped.csv     images left out with --skip-bad, and why

:class:`CachedFundus` reads it and computes the LR input on the fly with ``data/degrade.py``, so one
cache serves every scale and degradation.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from data.atomic import write_atomic  # re-exported: data/prepare.py imports it from here
from data.degrade import degrade
from data.maskbits import unpack_planes
from data.records import DataError, make_sample

CACHE_FORMAT = 1
MANIFEST = "manifest.csv"
SETTINGS = "cache.json"
SKIPPED = "skipped.csv"


@dataclass(frozen=True)
class CacheEntry:
    """One manifest row."""

    id: str
    part: str
    split: str
    grade: int
    patient: str
    mask_valid: str  # "1101": one character per lesion of LESIONS
    image: str  # relative to the cache folder
    masks: str
    image_sha256: str
    masks_sha256: str
    source: str

    @property
    def valid(self) -> tuple[bool, ...]:
        return tuple(flag == "1" for flag in self.mask_valid)

    @property
    def has_masks(self) -> bool:
        return "1" in self.mask_valid


def cache_key(sample_id: str) -> str:
    """A file-name-safe, collision-free key for an id such as ``idrid/grading/train/IDRiD_001``."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("_")[-80:]
    digest = hashlib.sha1(sample_id.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_settings(cache_dir: Path) -> dict | None:
    path = cache_dir / SETTINGS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"cache settings {path} are not valid JSON: {error}") from error


def write_manifest(cache_dir: Path, entries: list[CacheEntry]) -> None:
    """Write the manifest atomically, rows sorted by id so reruns produce the same bytes."""
    fields = list(CacheEntry.__dataclass_fields__)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(fields)
    for entry in sorted(entries, key=lambda item: item.id):
        row = asdict(entry)
        writer.writerow([row[name] for name in fields])
    write_atomic(cache_dir / MANIFEST, text.getvalue().encode("utf-8"))


def read_manifest(cache_dir: Path) -> list[CacheEntry]:
    """The manifest rows of a finished cache; a DataError if there is none (prepare not run or killed)."""
    path = cache_dir / MANIFEST
    if not path.is_file():
        raise DataError(
            f"no finished cache at {cache_dir} ({MANIFEST} missing): run python -m data.prepare "
            "or train.py --dataset NAME --data-root PATH, which builds it"
        )
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        expected = list(CacheEntry.__dataclass_fields__)
        if reader.fieldnames != expected:
            raise DataError(f"{path}: unexpected columns {reader.fieldnames}, expected {expected}")
        entries = []
        for line, row in enumerate(reader, start=2):
            try:
                entries.append(CacheEntry(**{**row, "grade": int(row["grade"])}))
            except ValueError as error:
                raise DataError(f"{path} row {line}: {error}") from error
    return entries


def verify_cache(cache_dir: Path, entries: list[CacheEntry]) -> list[str]:
    """Files whose SHA-256 no longer matches the manifest (or that are missing)."""
    bad = []
    for entry in entries:
        for name, digest in ((entry.image, entry.image_sha256), (entry.masks, entry.masks_sha256)):
            path = cache_dir / name
            if not path.is_file() or file_sha256(path) != digest:
                bad.append(str(path))
    return bad


def _decode(path: Path, flags: int) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.empty(0, np.uint8)
    array = cv2.imdecode(data, flags) if data.size else None
    if array is None:
        raise DataError(f"cache file {path} is missing or unreadable: rerun python -m data.prepare")
    return array


class CachedFundus(torch.utils.data.Dataset):
    """Samples of the data contract (data/records.py) read from a preprocessing cache.

    ``entries`` are the manifest rows of one split; HR comes from the cache at the cache's size,
    LR from :func:`data.degrade.degrade` (noise seeded per sample, so validation is reproducible).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        entries: list[CacheEntry],
        scale: int,
        blur_kernel: int = 0,
        blur_sigma: float = 0.0,
        noise_var: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.entries = list(entries)
        self.scale = scale
        self.blur_kernel, self.blur_sigma, self.noise_var = blur_kernel, blur_sigma, noise_var
        self.seed = seed
        settings = read_settings(self.cache_dir) or {}
        self.size = int(settings.get("size", 0))
        if self.size % scale:
            raise DataError(
                f"cache {self.cache_dir} has size {self.size}, not divisible by scale {scale}"
            )

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def grades(self) -> list[int]:
        return [entry.grade for entry in self.entries]

    @property
    def has_masks(self) -> list[bool]:
        return [entry.has_masks for entry in self.entries]

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        image = _decode(self.cache_dir / entry.image, cv2.IMREAD_COLOR)
        bits = _decode(self.cache_dir / entry.masks, cv2.IMREAD_UNCHANGED)
        hr = (
            torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))).float()
            / 255.0
        )
        masks, fov = unpack_planes(torch.from_numpy(bits))
        generator = None
        if self.noise_var > 0:
            generator = torch.Generator().manual_seed(
                self.seed * 1_000_003 + int(entry.image_sha256[:12], 16)
            )
        lr = degrade(hr, self.scale, self.blur_kernel, self.blur_sigma, self.noise_var, generator)
        valid = torch.tensor(entry.valid, dtype=torch.bool)
        return make_sample(lr, hr, entry.grade, masks, valid, fov, entry.id)


__all__ = [
    "CACHE_FORMAT",
    "CacheEntry",
    "CachedFundus",
    "cache_key",
    "file_sha256",
    "read_manifest",
    "read_settings",
    "verify_cache",
    "write_atomic",
    "write_manifest",
]
