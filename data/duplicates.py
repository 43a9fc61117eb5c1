"""``python -m data.duplicates``: the same photograph under two names, across every part of a dataset.

    python -m data.duplicates --dataset idrid --root ../shared/data/idrid --out splits/idrid_groups.csv

Public datasets carry copies: IDRiD's grading part holds byte-identical photographs under two
names, and most of its segmentation photographs are re-encoded copies of grading photographs.
A split that puts two copies on both sides of train/val (or a test photograph that also sits in
training) measures memory, not grading. Every image gets two fingerprints:

- the SHA-256 of its file (exact copies);
- a *signature* that survives re-encoding, resizing and mild brightness or contrast changes: the
  green channel of the field-of-view square at ``SIGNATURE_SIDE`` px, high-passed (minus its
  Gaussian blur inside the field of view, so the vessel tree, optic disc and lesions remain and the
  illumination goes), inside the field of view less its rim, with zero mean and unit norm. The similarity of two images is the dot
  product of their signatures (a Pearson correlation, 1 for the same photograph).

Two images are copies when their files are identical or their similarity is at least
``threshold`` (default ``DEFAULT_THRESHOLD``; docs/RESULTS.md shows the score distribution of true
copies against distinct photographs on IDRiD that it was chosen from). Copies form groups by
union; the groups file (CSV ``id,group``, one row per image, ``group`` the smallest id of its
group) is what ``data/splits.py`` keeps on one side of every split. The command also prints groups
whose grades disagree and groups that cross parts or splits (a test photograph also in training).
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.atomic import atomic_open
from data.cli import OneLineParser, run
from data.datasets import DATASETS, load_index
from data.datasets.base import Record, read_image
from data.fundus import crop_to_fov_square
from data.records import UNKNOWN_GRADE, DataError

log = logging.getLogger(__name__)

SIGNATURE_SIDE = 64
HIGH_PASS_SIGMA = 3.0  # px at SIGNATURE_SIDE: removes illumination, keeps vessels and lesions
RIM = 3  # px at SIGNATURE_SIDE left out inside the field of view's edge
DEFAULT_THRESHOLD = 0.76  # mid-gap on IDRiD: distinct pairs <= 0.70, planted copies >= 0.83
GROUPS_HEADER = ("id", "group")


@dataclass(frozen=True)
class Fingerprint:
    """One image's identity: where it is, its exact hash and its re-encoding-proof signature."""

    id: str
    grade: int
    part: str
    split: str
    sha256: str
    signature: np.ndarray  # float32 [SIGNATURE_SIDE**2], zero mean, unit norm


def signature(image: np.ndarray) -> np.ndarray:
    """The similarity signature of an HxWx3 uint8 fundus photograph (see module docstring)."""
    square, _, fov = crop_to_fov_square(image)
    side = (SIGNATURE_SIDE, SIGNATURE_SIDE)
    green = cv2.resize(square[:, :, 1], side, interpolation=cv2.INTER_AREA).astype(np.float32)
    inside = cv2.resize(fov.astype(np.float32), side, interpolation=cv2.INTER_AREA) >= 0.5
    green *= inside
    # Blur inside the field of view only (normalised convolution): its rim adds no edge that
    # every photograph would share.
    weight = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), HIGH_PASS_SIGMA)
    detail = green - cv2.GaussianBlur(green, (0, 0), HIGH_PASS_SIGMA) / np.maximum(weight, 1e-3)
    core = cv2.erode(inside.astype(np.uint8), np.ones((2 * RIM + 1,) * 2, np.uint8)) > 0
    if core.sum() < 16:
        raise DataError("field of view too small to fingerprint")
    values = np.where(core, detail, 0.0).astype(np.float32)
    values[core] -= values[core].mean()
    norm = float(np.linalg.norm(values))
    if norm == 0.0:
        raise DataError("flat image: no detail inside the field of view to fingerprint")
    return (values / norm).ravel()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(record: Record) -> Fingerprint:
    """Both fingerprints of one dataset record; a DataError naming the file if it cannot be read."""
    try:
        image = read_image(record.image, min_side=4 * SIGNATURE_SIDE)
        values = signature(image)
    except DataError as error:
        raise DataError(f"{record.image}: {error}") from None
    return Fingerprint(
        record.id, record.grade, record.part, record.split, file_sha256(record.image), values
    )


def fingerprints(records: Iterable[Record], progress: bool = False) -> list[Fingerprint]:
    records = list(records)
    return [
        fingerprint(r) for r in tqdm(records, disable=not progress, desc="fingerprint", unit="img")
    ]


def similarity_matrix(prints: Sequence[Fingerprint]) -> np.ndarray:
    """``[N,N]`` signature similarities (1 on the diagonal)."""
    stacked = np.stack([p.signature for p in prints]).astype(np.float64)
    return stacked @ stacked.T


def _union_find_groups(count: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(count)]


def copy_pairs(
    prints: Sequence[Fingerprint], threshold: float = DEFAULT_THRESHOLD
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of images that are the same photograph."""
    scores = similarity_matrix(prints)
    upper = np.triu(scores >= threshold, k=1)
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prints):
        by_hash[p.sha256].append(i)
    exact = {(m[0], other) for m in by_hash.values() for other in m[1:]}
    return sorted(exact | {(int(i), int(j)) for i, j in zip(*np.nonzero(upper))})


def duplicate_groups(
    prints: Sequence[Fingerprint], threshold: float = DEFAULT_THRESHOLD
) -> dict[str, str]:
    """``{id: group}`` for every image, ``group`` the smallest id of its copies (itself if none)."""
    order = sorted(range(len(prints)), key=lambda i: prints[i].id)
    ranked = [prints[i] for i in order]
    roots = _union_find_groups(len(ranked), copy_pairs(ranked, threshold))
    return {p.id: ranked[r].id for p, r in zip(ranked, roots)}


def members(groups: dict[str, str]) -> dict[str, list[str]]:
    """``{group: [ids]}`` of the groups with more than one image."""
    result: dict[str, list[str]] = defaultdict(list)
    for image_id, group in sorted(groups.items()):
        result[group].append(image_id)
    return {group: ids for group, ids in result.items() if len(ids) > 1}


def conflicting_grades(groups: dict[str, str], grades: dict[str, int]) -> dict[str, list[int]]:
    """Groups whose known grades disagree: ``{group: sorted distinct grades}``."""
    result = {}
    for group, ids in members(groups).items():
        known = sorted({grades[i] for i in ids if grades.get(i, UNKNOWN_GRADE) != UNKNOWN_GRADE})
        if len(known) > 1:
            result[group] = known
    return result


def crossing_parts(groups: dict[str, str]) -> dict[str, list[str]]:
    """Groups whose images lie in more than one ``part/split`` (ids ``dataset/part/split/name``)."""
    result = {}
    for group, ids in members(groups).items():
        places = sorted({"/".join(i.split("/")[1:3]) for i in ids})
        if len(places) > 1:
            result[group] = places
    return result


def write_groups(path: Path, groups: dict[str, str]) -> None:
    """The groups CSV (``id,group``, sorted by id), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(GROUPS_HEADER)
        writer.writerows(sorted(groups.items()))


def read_groups(path: Path) -> dict[str, str]:
    """``{id: group}`` from a groups CSV; a DataError naming the file and row if it is malformed."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if tuple(header or ()) != GROUPS_HEADER:
            raise DataError(f"{path}: first row must be 'id,group', got {header!r}")
        groups = {}
        for line, row in enumerate(reader, start=2):
            if len(row) != 2 or not all(row):
                raise DataError(f"{path} row {line}: expected 'id,group', got {row!r}")
            groups[row[0]] = row[1]
    return groups


def score_distribution(
    prints: Sequence[Fingerprint], groups: dict[str, str]
) -> dict[str, np.ndarray]:
    """Similarities of the pairs inside groups (``copies``) and of every other pair (``distinct``)."""
    scores = similarity_matrix(prints)
    same = np.array([[groups[a.id] == groups[b.id] for b in prints] for a in prints])
    upper = np.triu(np.ones_like(same), k=1)
    return {"copies": scores[upper & same], "distinct": scores[upper & ~same]}


def _report(groups: dict[str, str], prints: Sequence[Fingerprint]) -> list[str]:
    grades = {p.id: p.grade for p in prints}
    lines = [f"{len(prints)} images, {len(members(groups))} duplicate groups"]
    for group, grades_seen in conflicting_grades(groups, grades).items():
        lines.append(f"conflicting grades {grades_seen}: {' = '.join(members(groups)[group])}")
    for group, places in crossing_parts(groups).items():
        lines.append(f"crosses {' & '.join(places)}: {' = '.join(members(groups)[group])}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m data.duplicates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, help="the dataset as unpacked")
    parser.add_argument("--out", required=True, type=Path, help="groups CSV to write (id,group)")
    parser.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="signature similarity of a copy"
    )
    args = parser.parse_args(argv)
    if not 0.0 < args.threshold <= 1.0:
        parser.error(f"argument --threshold: {args.threshold} is not in (0, 1]")
    index = load_index(args.dataset, args.root)
    prints = fingerprints(index.records, progress=True)
    groups = duplicate_groups(prints, args.threshold)
    write_groups(args.out, groups)
    for line in _report(groups, prints):
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run("python -m data.duplicates", main))
