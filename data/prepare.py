"""``python -m data.prepare``: build the preprocessing cache of a public dataset (format: ``data/cache.py``).

Per image: FOV detection (``data/fundus.py``, tolerant to grey or near-black backgrounds, white
frames with burned-in text, notches and mirrored images), crop to the FOV square with black
padding, zero outside the FOV, antialiased resize to the HR size; lesion masks are cropped the
same way, resized nearest-neighbour and re-binarised. Parallel worker processes with a progress
bar; every file is written to a temporary name and renamed, so a killed run leaves no half-written
file and a rerun skips what is finished.

    python -m data.prepare --dataset idrid --root ../shared/data/idrid --out data_cache/idrid-1024 --size 1024
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.cache import (
    CACHE_FORMAT,
    MANIFEST,
    SETTINGS,
    SKIPPED,
    CacheEntry,
    cache_key,
    file_sha256,
    read_manifest,
    read_settings,
    write_atomic,
    write_manifest,
)
from data.cli import OneLineParser, run
from data.datasets import DATASETS, load_index
from data.datasets.base import Record, read_image, read_mask
from data.fundus import crop_to_fov_square
from data.lock import FolderLock
from data.maskbits import pack_planes
from data.records import LESIONS, DataError
from data.workers import process_map

log = logging.getLogger(__name__)
DEFAULT_JPEG_QUALITY = 95
# How the HR squares are stored: JPEG (small; a photograph's square after a round trip differs by
# about 42 dB at quality 90, which moves 8% of the 512 release's grades: docs/RELIABILITY.md) or
# PNG (lossless: test.py then grades the very square predict.py makes from the photograph).
IMAGE_SUFFIXES = {"jpeg": ".jpg", "png": ".png"}
# What a cache.json written before a setting existed was built with.
SETTING_DEFAULTS = {"image_format": "jpeg"}
LOCK_FILE = "prepare.lock"  # held while a process builds the cache (data/lock.py)


def resize_square(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resize a square array to ``size``: area (antialiased) when shrinking, bicubic when enlarging."""
    if image.shape[0] == size:
        return image
    if nearest:
        interpolation = cv2.INTER_NEAREST_EXACT
    else:
        interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def hr_square(square: np.ndarray, fov: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A FOV square (``crop_to_fov_square``'s image and FOV) at the HR size, zero outside the FOV:
    ``(SxSx3 uint8, SxS bool)``. What the cache stores and ``predict.py`` grades."""
    hr = resize_square(square, size)
    fov = resize_square(fov.astype(np.uint8), size, nearest=True) > 0
    hr[~fov] = 0
    return hr, fov


def read_masks(record: Record, shape: tuple[int, int]) -> np.ndarray:
    """``[4,H,W]`` bool masks of a record (zeros where no file: mask_valid says so), size-checked."""
    planes = []
    for path in record.masks:
        if path is None:
            planes.append(np.zeros(shape, dtype=bool))
            continue
        mask = read_mask(path, record.mask_threshold)
        if mask.shape != shape:
            raise DataError(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image {record.image} is {shape[1]}x{shape[0]}"
            )
        planes.append(mask)
    return np.stack(planes)


def preprocess(record: Record, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One record -> (HR image ``SxSx3`` uint8 RGB, packed mask + FOV bit planes ``SxS`` uint8)."""
    has_masks = any(record.mask_valid)
    # JPEGs without masks may decode at reduced scale (much faster); masks need the full grid.
    image = read_image(record.image, min_side=None if has_masks else size)
    masks = read_masks(record, image.shape[:2]) if has_masks else None
    try:
        square, square_masks, fov = crop_to_fov_square(image, masks)
    except DataError as error:
        raise DataError(f"{record.image}: {error}") from None
    hr, fov = hr_square(square, fov, size)
    if square_masks is None:
        lesion_planes = np.zeros((len(LESIONS), size, size), dtype=bool)
    else:
        lesion_planes = np.stack(
            [resize_square(m.astype(np.uint8), size, nearest=True) > 0 for m in square_masks]
        )
    return hr, pack_planes(lesion_planes, fov)


@dataclass(frozen=True)
class _Job:
    record: Record
    cache_dir: Path
    root: Path
    size: int
    jpeg_quality: int
    image_format: str = "jpeg"


@dataclass(frozen=True)
class _Outcome:
    record: Record
    entry: CacheEntry | None
    error: str | None


def _paths(record: Record, image_format: str = "jpeg") -> tuple[str, str]:
    key = cache_key(record.id)
    return f"images/{key}{IMAGE_SUFFIXES[image_format]}", f"masks/{key}.png"


def _source(record: Record, root: Path) -> str:
    try:
        return record.image.relative_to(root).as_posix()
    except ValueError:
        return record.image.as_posix()


def _entry(
    record: Record,
    root: Path,
    image_sha256: str,
    masks_sha256: str,
    image_format: str = "jpeg",
) -> CacheEntry:
    image, masks = _paths(record, image_format)
    return CacheEntry(
        id=record.id,
        part=record.part,
        split=record.split,
        grade=record.grade,
        patient=record.patient,
        mask_valid="".join("1" if flag else "0" for flag in record.mask_valid),
        image=image,
        masks=masks,
        image_sha256=image_sha256,
        masks_sha256=masks_sha256,
        source=_source(record, root),
    )


def _encode(extension: str, array: np.ndarray, params: list[int]) -> bytes:
    ok, buffer = cv2.imencode(extension, array, params)
    if not ok:
        raise DataError(f"could not encode {extension} of shape {array.shape}")
    return buffer.tobytes()


def _prepare_one(job: _Job) -> _Outcome:
    """Worker entry point: preprocess one record and write its two files atomically."""
    record = job.record
    try:
        hr, bits = preprocess(record, job.size)
    except DataError as error:
        return _Outcome(record, None, str(error))
    bgr = np.ascontiguousarray(hr[:, :, ::-1])
    if job.image_format == "png":  # lossless: the square a photograph gives, bit for bit
        image_bytes = _encode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        image_bytes = _encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, job.jpeg_quality])
    mask_bytes = _encode(".png", bits, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    image_path, mask_path = _paths(record, job.image_format)
    write_atomic(job.cache_dir / mask_path, mask_bytes)
    write_atomic(
        job.cache_dir / image_path, image_bytes
    )  # written last: its presence marks the record done
    return _Outcome(
        record,
        _entry(record, job.root, _sha256(image_bytes), _sha256(mask_bytes), job.image_format),
        None,
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class PrepareReport:
    cache_dir: Path
    written: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.written + self.reused


def _check_settings(cache_dir: Path, wanted: dict) -> None:
    settings = read_settings(cache_dir)
    if settings is None:
        return
    differing = {
        key: settings.get(key, SETTING_DEFAULTS.get(key))
        for key, value in wanted.items()
        if settings.get(key, SETTING_DEFAULTS.get(key)) != value
    }
    if differing:
        raise DataError(
            f"{cache_dir} holds a cache built with {differing}, not { ({k: wanted[k] for k in differing}) }: "
            "choose another --out"
        )


def _remove_stale_temporaries(cache_dir: Path) -> None:
    for folder in ("images", "masks", "."):
        for stale in (cache_dir / folder).glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)


def _write_skipped(cache_dir: Path, skipped: list[tuple[str, str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["source", "reason"])
    writer.writerows(sorted(skipped))
    write_atomic(cache_dir / SKIPPED, text.getvalue().encode("utf-8"))


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path,
    size: int = 1024,
    workers: int = 0,
    skip_bad: bool = False,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    progress: bool = False,
    image_format: str = "jpeg",
) -> PrepareReport:
    """Build or complete the cache of ``dataset`` at ``out``; returns what was done.

    An unreadable image (or a mask of the wrong size) stops the run with a DataError naming the
    file, unless ``skip_bad``: then it is left out and listed in ``skipped.csv``.
    """
    if size <= 0 or size % 16:
        raise DataError(f"--size must be a positive multiple of 16, got {size}")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"--jpeg-quality must be in 1..100, got {jpeg_quality}")
    if image_format not in IMAGE_SUFFIXES:
        raise DataError(f"--image-format must be jpeg or png, got {image_format!r}")
    cache_dir = Path(out).expanduser()
    with FolderLock(cache_dir / LOCK_FILE, f"cache {cache_dir}"):  # one builder per cache
        return _build(
            dataset,
            Path(root).expanduser(),
            cache_dir,
            size,
            workers,
            skip_bad,
            jpeg_quality,
            progress,
            image_format,
        )


def _build(
    dataset: str,
    root: Path,
    cache_dir: Path,
    size: int,
    workers: int,
    skip_bad: bool,
    jpeg_quality: int,
    progress: bool,
    image_format: str = "jpeg",
) -> PrepareReport:
    start = time.perf_counter()
    index = load_index(dataset, root)
    wanted = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "size": size,
        "jpeg_quality": jpeg_quality,
        "image_format": image_format,
    }
    previous = _start_cache(cache_dir, index, root, wanted)

    report = PrepareReport(cache_dir)
    entries, pending = _reuse_cached(index.records, previous, root, cache_dir, image_format, report)
    todo = [_Job(record, cache_dir, root, size, jpeg_quality, image_format) for record in pending]
    entries += _run_jobs(dataset, todo, root, size, workers, skip_bad, progress, report)
    if not entries:
        raise DataError(f"{dataset}: no image could be prepared from {root}")
    write_manifest(cache_dir, entries)
    _write_skipped(cache_dir, report.skipped)
    report.seconds = time.perf_counter() - start
    return report


def _start_cache(cache_dir: Path, index, root: Path, wanted: dict) -> dict[str, CacheEntry]:
    """Check and write the cache's settings, clear stale temporaries; returns the old manifest."""
    _check_settings(cache_dir, wanted)
    for folder in ("images", "masks"):
        (cache_dir / folder).mkdir(parents=True, exist_ok=True)
    settings = {
        **wanted,
        "root": str(root.resolve()),
        "num_classes": index.num_classes,
        "ungradable": dict(index.ungradable),
    }
    write_atomic(
        cache_dir / SETTINGS, json.dumps(settings, indent=1, sort_keys=True).encode("utf-8")
    )
    _remove_stale_temporaries(cache_dir)
    return (
        {entry.id: entry for entry in read_manifest(cache_dir)}
        if (cache_dir / MANIFEST).is_file()
        else {}
    )


def _reuse_cached(
    records: Sequence[Record],
    previous: dict[str, CacheEntry],
    root: Path,
    cache_dir: Path,
    image_format: str,
    report: PrepareReport,
) -> tuple[list[CacheEntry], list[Record]]:
    """Entries of the records whose files are already cached (counted reused); the rest to do."""
    entries: list[CacheEntry] = []
    pending: list[Record] = []
    for record in records:
        image_path, mask_path = _paths(record, image_format)
        if (cache_dir / image_path).is_file() and (cache_dir / mask_path).is_file():
            old = previous.get(record.id)
            if old is not None and (old.image, old.masks) == (image_path, mask_path):
                hashes = (old.image_sha256, old.masks_sha256)
            else:
                hashes = (file_sha256(cache_dir / image_path), file_sha256(cache_dir / mask_path))
            entries.append(
                _entry(record, root, *hashes, image_format)
            )  # labels from the index: a fixed CSV is picked up
            report.reused += 1
        else:
            pending.append(record)
    return entries, pending


def _run_jobs(
    dataset: str,
    todo: list[_Job],
    root: Path,
    size: int,
    workers: int,
    skip_bad: bool,
    progress: bool,
    report: PrepareReport,
) -> list[CacheEntry]:
    """Preprocess ``todo`` in worker processes (counted written or skipped); the new entries."""
    processes = min(workers or os.cpu_count() or 1, len(todo))
    if todo:
        log.info(
            "%s: preprocessing %d images to %d px with %d worker(s)",
            dataset,
            len(todo),
            size,
            max(processes, 1),
        )
    entries: list[CacheEntry] = []
    with tqdm(total=len(todo), disable=not progress, desc=f"prepare {dataset}", unit="img") as bar:
        for outcome in process_map(_prepare_one, todo, processes, chunksize=4):
            bar.update()
            if outcome.error is None:
                entries.append(outcome.entry)
                report.written += 1
            elif skip_bad:
                log.warning("skipped: %s", outcome.error)
                report.skipped.append((_source(outcome.record, root), outcome.error))
            else:
                raise DataError(f"{outcome.error} (pass --skip-bad to leave such images out)")
    return entries


def _build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m data.prepare",
        description="Build the preprocessing cache of a public dataset.",
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument(
        "--root",
        required=True,
        type=Path,
        help="the dataset as unpacked (or a folder one or two levels above)",
    )
    parser.add_argument("--out", required=True, type=Path, help="cache folder")
    parser.add_argument("--size", type=int, default=1024, help="HR side in pixels (multiple of 16)")
    parser.add_argument(
        "--workers", type=int, default=0, help="worker processes (0 = one per CPU core)"
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable images out (listed in skipped.csv) instead of stopping",
    )
    parser.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY)
    parser.add_argument(
        "--image-format",
        choices=sorted(IMAGE_SUFFIXES),
        default="jpeg",
        help="how the HR squares are stored: jpeg (small) or png (lossless)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = _build_parser().parse_args(argv)
    report = prepare(
        args.dataset,
        args.root,
        args.out,
        args.size,
        args.workers,
        args.skip_bad,
        args.jpeg_quality,
        progress=not args.quiet,
        image_format=args.image_format,
    )
    print(
        f"{args.dataset}: {report.total} images in {report.cache_dir} "
        f"({report.written} written, {report.reused} already there, {len(report.skipped)} skipped) in {report.seconds:.1f} s"
    )
    for source, reason in report.skipped:
        print(f"  skipped {source}: {reason}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run("python -m data.prepare", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
