"""The duplicate finder: exact and re-encoded copies are found, distinct photographs are not."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from data.datasets.base import Record
from data.duplicates import (
    DEFAULT_THRESHOLD,
    conflicting_grades,
    crossing_parts,
    duplicate_groups,
    fingerprints,
    main,
    read_groups,
    similarity_matrix,
    write_groups,
)
from data.records import DataError

REAL = Path(__file__).resolve().parents[2] / "shared/data/idrid"


def _fundus(seed: int, size: int = 320) -> np.ndarray:
    """A fundus-like photograph: an orange disc on black, random vessels, a bright optic disc."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size + 60, 3), np.uint8)
    centre = (size // 2 + 30, size // 2)
    cv2.circle(image, centre, int(size * 0.46), (40, 80, 190), -1)  # BGR-ish, converted below
    for _ in range(14):
        points = np.cumsum(rng.normal(0, 12, (12, 2)), axis=0) + rng.uniform(60, size - 60, 2)
        cv2.polylines(
            image, [points.astype(np.int32)], False, (20, 30, 120), int(rng.integers(1, 4))
        )
    disc = (int(rng.uniform(100, size - 40)), int(rng.uniform(100, size - 100)))
    cv2.circle(image, disc, 18, (140, 200, 250), -1)
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.circle(mask, centre, int(size * 0.46), 1, -1)
    image = image * mask[..., None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _write(path: Path, image: np.ndarray, quality: int = 95) -> Path:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix == ".jpg" else []
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    return path


def _record(path: Path, name: str, part: str = "grading", grade: int = 0) -> Record:
    return Record(
        id=f"toy/{part}/train/{name}",
        image=path,
        grade=grade,
        part=part,
        split="train",
        patient=name,
    )


@pytest.fixture()
def planted(tmp_path):
    """Six distinct photographs, plus a byte copy, a re-encoded resized copy and a brighter copy."""
    records = []
    for seed in range(6):
        path = _write(tmp_path / f"p{seed}.jpg", _fundus(seed))
        records.append(_record(path, f"p{seed}", grade=seed % 5))
    original = _fundus(0)
    (tmp_path / "byte.jpg").write_bytes((tmp_path / "p0.jpg").read_bytes())
    records.append(_record(tmp_path / "byte.jpg", "byte", grade=2))  # conflicting grade with p0
    small = cv2.resize(original, (190, 160), interpolation=cv2.INTER_AREA)
    records.append(
        _record(
            _write(tmp_path / "small.jpg", small, quality=70),
            "small",
            part="segmentation",
            grade=-1,
        )
    )
    brighter = np.clip(original.astype(np.float32) * 1.15 + 12, 0, 255).astype(np.uint8)
    brighter[original.sum(axis=2) == 0] = 0  # the black surround stays black
    records.append(_record(_write(tmp_path / "bright.png", brighter), "bright", grade=0))
    return records


def test_planted_copies_group_together_and_distinct_photographs_do_not(planted):
    prints = fingerprints(planted)
    groups = duplicate_groups(prints)
    copies = {
        "toy/grading/train/p0",
        "toy/grading/train/byte",
        "toy/segmentation/train/small",
        "toy/grading/train/bright",
    }
    assert {groups[i] for i in copies} == {
        "toy/grading/train/bright"
    }  # the smallest id names the group
    others = [groups[f"toy/grading/train/p{seed}"] for seed in range(1, 6)]
    assert len(set(others)) == 5 and not set(others) & {groups["toy/grading/train/p0"]}
    scores = similarity_matrix(prints)
    assert np.allclose(np.diag(scores), 1.0, atol=1e-5)
    distinct = scores[:6, :6][~np.eye(6, dtype=bool)]
    assert distinct.max() < DEFAULT_THRESHOLD


def test_conflicting_grades_and_crossing_parts_are_reported(planted):
    prints = fingerprints(planted)
    groups = duplicate_groups(prints)
    grades = {p.id: p.grade for p in prints}
    assert conflicting_grades(groups, grades) == {"toy/grading/train/bright": [0, 2]}
    assert crossing_parts(groups) == {
        "toy/grading/train/bright": ["grading/train", "segmentation/train"]
    }


def test_groups_file_round_trip_and_bad_rows(tmp_path):
    groups = {"a/grading/train/1": "a/grading/train/1", "a/grading/train/2": "a/grading/train/1"}
    write_groups(tmp_path / "g.csv", groups)
    assert read_groups(tmp_path / "g.csv") == groups
    (tmp_path / "bad.csv").write_text("id,group\nx,y\nonly-one-column\n")
    with pytest.raises(DataError, match=r"bad.csv row 3"):
        read_groups(tmp_path / "bad.csv")


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        fingerprints([_record(path, "broken")])


def test_bad_threshold_is_one_line_error():
    from data.cli import ArgumentError

    with pytest.raises(ArgumentError, match="--threshold"):
        main(["--dataset", "idrid", "--root", ".", "--out", "x.csv", "--threshold", "1.5"])


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real IDRiD training parts not found at {REAL}")
def test_committed_idrid_groups_hold_the_known_copies():
    groups = read_groups(Path(__file__).resolve().parents[1] / "splits/idrid_groups.csv")

    def same(a: str, b: str) -> bool:
        other = b if "/" in b else f"idrid/grading/train/{b}"
        return groups[f"idrid/grading/train/{a}"] == groups[other]

    assert (
        same("IDRiD_021", "IDRiD_391")
        and same("IDRiD_028", "IDRiD_327")
        and same("IDRiD_079", "IDRiD_279")
    )
    assert same("IDRiD_102", "idrid/segmentation/train/IDRiD_01")
    crossing = sum(1 for i, g in groups.items() if "/segmentation/" in i and "/grading/" in g)
    assert crossing == 44  # of the 54 segmentation photographs
