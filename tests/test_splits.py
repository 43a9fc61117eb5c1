"""Train/val/test roles: official splits kept, open ones carved per patient, stratified, written once."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from data.records import DataError
from data.splits import (
    SplitSettings,
    assign_roles,
    compute_split,
    keep_in_train,
    read_split_file,
    split_name,
)


@dataclass(frozen=True)
class Item:
    id: str
    part: str
    split: str
    grade: int
    patient: str


def _eyepacs(n_patients: int = 100) -> list[Item]:
    items = []
    for patient in range(n_patients):
        for eye in ("left", "right"):
            items.append(Item(f"eyepacs/grading/train/{patient}_{eye}", "grading", "train", patient % 5, str(patient)))
    return items


def test_both_eyes_of_a_patient_share_a_role_and_grades_are_stratified(tmp_path):
    items = _eyepacs()
    roles = assign_roles(items, "eyepacs", tmp_path / "eyepacs.csv", SplitSettings(val_fraction=0.2))
    for patient in range(100):
        assert roles[f"eyepacs/grading/train/{patient}_left"] == roles[f"eyepacs/grading/train/{patient}_right"]
    per_grade = Counter((item.grade, roles[item.id]) for item in items)
    assert all(per_grade[(grade, "val")] == 8 for grade in range(5))  # 20 patients per grade, 20% -> 4 x 2 eyes
    assert set(roles.values()) == {"train", "val"}


def test_split_is_deterministic_and_independent_of_order():
    items = _eyepacs()
    settings = SplitSettings(val_fraction=0.2, seed=3)
    assert compute_split(items, settings) == compute_split(list(reversed(items)), settings)
    assert compute_split(items, settings) != compute_split(items, SplitSettings(val_fraction=0.2, seed=4))


def test_official_splits_need_no_file(tmp_path):
    items = [Item(f"ddr/grading/{split}/{i}", "grading", split, 0, f"{split}{i}") for split in ("train", "valid", "test") for i in range(3)]
    roles = assign_roles(items, "ddr", tmp_path / "ddr.csv")
    assert Counter(roles.values()) == {"train": 3, "val": 3, "test": 3}
    assert not (tmp_path / "ddr.csv").exists()


def test_all_split_carves_val_and_test_and_keeps_an_official_test(tmp_path):
    items = [Item(f"m/grading/all/{i}", "grading", "all", i % 5, str(i)) for i in range(100)]
    roles = assign_roles(items, "m", tmp_path / "m.csv", SplitSettings(val_fraction=0.1, test_fraction=0.3))
    assert Counter(roles.values()) == {"train": 60, "val": 10, "test": 30}
    with_test = [*items, Item("m/grading/test/x", "grading", "test", 0, "x")]
    roles = compute_split(with_test, SplitSettings(val_fraction=0.1, test_fraction=0.3))
    assert "test" not in roles.values() and "m/grading/test/x" not in roles


def test_split_file_is_reused_and_checked(tmp_path):
    items = _eyepacs(20)
    path = tmp_path / "splits" / "eyepacs.csv"
    first = assign_roles(items, "eyepacs", path)
    assert read_split_file(path) == first
    assert assign_roles(items, "eyepacs", path, SplitSettings(seed=99)) == first  # the file wins over settings
    with pytest.raises(DataError, match="not in split file"):
        assign_roles([*items, Item("eyepacs/grading/train/new_left", "grading", "train", 0, "new")], "eyepacs", path)
    text = path.read_text().replace(",val\n", ",train\n", 1)
    path.write_text(text)
    with pytest.raises(DataError, match="sha256"):
        assign_roles(items, "eyepacs", path)


def test_idrid_background_images_stay_in_train():
    kept = keep_in_train("idrid")
    assert len(kept) == 7 and keep_in_train("ddr") == frozenset()
    items = [Item(sample_id, "grading", "train", 0, sample_id) for sample_id in kept]
    items += [Item(f"idrid/grading/train/IDRiD_{i:03d}", "grading", "train", 0, str(i)) for i in range(40)]
    roles = compute_split(items, SplitSettings(val_fraction=0.5, keep_in_train=kept))
    assert all(roles[sample_id] == "train" for sample_id in kept)
    assert Counter(roles.values())["val"] == 20


def test_split_name_of_a_generic_csv():
    assert split_name("csv", "/data/my labels.csv") == "csv-my labels"
    assert split_name("idrid", "/data/idrid") == "idrid"
