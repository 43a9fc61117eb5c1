"""Train/val/test roles: official splits kept, open ones carved per patient, stratified, written once."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from data.records import DataError
from data.splits import (
    EXCLUDED,
    SplitSettings,
    assign_roles,
    compute_folds,
    compute_split,
    fold_roles,
    keep_in_train,
    read_folds_file,
    read_split_file,
    split_name,
    write_folds_file,
    write_split_file,
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
            items.append(
                Item(
                    f"eyepacs/grading/train/{patient}_{eye}",
                    "grading",
                    "train",
                    patient % 5,
                    str(patient),
                )
            )
    return items


def test_both_eyes_of_a_patient_share_a_role_and_grades_are_stratified(tmp_path):
    items = _eyepacs()
    roles = assign_roles(
        items, "eyepacs", tmp_path / "eyepacs.csv", SplitSettings(val_fraction=0.2)
    )
    for patient in range(100):
        assert (
            roles[f"eyepacs/grading/train/{patient}_left"]
            == roles[f"eyepacs/grading/train/{patient}_right"]
        )
    per_grade = Counter((item.grade, roles[item.id]) for item in items)
    assert all(
        per_grade[(grade, "val")] == 8 for grade in range(5)
    )  # 20 patients per grade, 20% -> 4 x 2 eyes
    assert set(roles.values()) == {"train", "val"}


def test_split_is_deterministic_and_independent_of_order():
    items = _eyepacs()
    settings = SplitSettings(val_fraction=0.2, seed=3)
    assert compute_split(items, settings) == compute_split(list(reversed(items)), settings)
    assert compute_split(items, settings) != compute_split(
        items, SplitSettings(val_fraction=0.2, seed=4)
    )


def test_official_splits_need_no_file(tmp_path):
    items = [
        Item(f"ddr/grading/{split}/{i}", "grading", split, 0, f"{split}{i}")
        for split in ("train", "valid", "test")
        for i in range(3)
    ]
    roles = assign_roles(items, "ddr", tmp_path / "ddr.csv")
    assert Counter(roles.values()) == {"train": 3, "val": 3, "test": 3}
    assert not (tmp_path / "ddr.csv").exists()


def test_all_split_carves_val_and_test_and_keeps_an_official_test(tmp_path):
    items = [Item(f"m/grading/all/{i}", "grading", "all", i % 5, str(i)) for i in range(100)]
    roles = assign_roles(
        items, "m", tmp_path / "m.csv", SplitSettings(val_fraction=0.1, test_fraction=0.3)
    )
    assert Counter(roles.values()) == {"train": 60, "val": 10, "test": 30}
    with_test = [*items, Item("m/grading/test/x", "grading", "test", 0, "x")]
    roles = compute_split(with_test, SplitSettings(val_fraction=0.1, test_fraction=0.3))
    assert "test" not in roles.values() and "m/grading/test/x" not in roles


def test_split_file_is_reused_and_checked(tmp_path):
    items = _eyepacs(20)
    path = tmp_path / "splits" / "eyepacs.csv"
    first = assign_roles(items, "eyepacs", path)
    assert read_split_file(path) == first
    assert (
        assign_roles(items, "eyepacs", path, SplitSettings(seed=99)) == first
    )  # the file wins over settings
    with pytest.raises(DataError, match="not in split file"):
        assign_roles(
            [*items, Item("eyepacs/grading/train/new_left", "grading", "train", 0, "new")],
            "eyepacs",
            path,
        )
    text = path.read_text().replace(",val\n", ",train\n", 1)
    path.write_text(text)
    with pytest.raises(DataError, match="sha256"):
        assign_roles(items, "eyepacs", path)


def test_idrid_background_images_stay_in_train():
    kept = keep_in_train("idrid")
    assert len(kept) == 7 and keep_in_train("ddr") == frozenset()
    items = [Item(sample_id, "grading", "train", 0, sample_id) for sample_id in kept]
    items += [
        Item(f"idrid/grading/train/IDRiD_{i:03d}", "grading", "train", 0, str(i)) for i in range(40)
    ]
    roles = compute_split(items, SplitSettings(val_fraction=0.5, keep_in_train=kept))
    assert all(roles[sample_id] == "train" for sample_id in kept)
    assert Counter(roles.values())["val"] == 20


def test_split_name_of_a_generic_csv():
    assert split_name("csv", "/data/my labels.csv") == "csv-my labels"
    assert split_name("idrid", "/data/idrid") == "idrid"


def _with_copies() -> tuple[list[Item], dict[str, str]]:
    """100 graded photographs, 20 of them also in the segmentation part, and two grading copies
    (one pair agrees on the grade, one does not)."""
    items = [Item(f"toy/grading/train/{i}", "grading", "train", i % 5, f"g{i}") for i in range(100)]
    items += [
        Item(f"toy/segmentation/train/s{i}", "segmentation", "train", -1, f"s{i}")
        for i in range(20)
    ]
    items += [
        Item("toy/grading/train/copy-of-3", "grading", "train", 3, "c3"),
        Item("toy/grading/train/copy-of-7", "grading", "train", 4, "c7"),
    ]  # 7 has grade 2
    groups = {f"toy/segmentation/train/s{i}": f"toy/grading/train/{i}" for i in range(20)}
    groups["toy/grading/train/copy-of-3"] = "toy/grading/train/3"
    groups["toy/grading/train/copy-of-7"] = "toy/grading/train/7"
    groups.update({f"toy/grading/train/{i}": f"toy/grading/train/{i}" for i in range(100)})
    return items, groups


def test_duplicate_groups_stay_on_one_side_and_conflicting_grades_are_excluded():
    items, groups = _with_copies()
    for seed in range(5):
        roles = compute_split(items, SplitSettings(val_fraction=0.3, seed=seed), groups)
        for i in set(range(20)) - {7}:
            assert roles[f"toy/segmentation/train/s{i}"] == roles[f"toy/grading/train/{i}"]
        assert roles["toy/segmentation/train/s7"] != EXCLUDED  # its masks are still good
        assert roles["toy/grading/train/copy-of-3"] == roles["toy/grading/train/3"] != EXCLUDED
        assert roles["toy/grading/train/copy-of-7"] == roles["toy/grading/train/7"] == EXCLUDED
    assert Counter(roles.values())[EXCLUDED] == 2


def test_a_split_file_whose_group_crosses_sides_is_refused_naming_the_group(tmp_path):
    items, groups = _with_copies()
    roles = compute_split(items, SplitSettings(val_fraction=0.3), groups)
    assert (
        assign_roles(items, "toy", tmp_path / "ok.csv", SplitSettings(val_fraction=0.3), groups)
        == roles
    )
    leaky = dict(roles)
    leaky["toy/segmentation/train/s4"] = (
        "val" if roles["toy/grading/train/4"] == "train" else "train"
    )
    write_split_file(tmp_path / "leaky.csv", "toy", leaky, SplitSettings())
    with pytest.raises(
        DataError, match=r"leaky.csv: duplicate group toy/grading/train/4 crosses sides"
    ):
        assign_roles(items, "toy", tmp_path / "leaky.csv", SplitSettings(), groups)


def test_folds_are_grouped_grade_stratified_and_cover_every_image(tmp_path):
    items, groups = _with_copies()
    folds = compute_folds(items, 5, SplitSettings(seed=1), groups)
    assert set(folds) == {item.id for item in items}
    assert folds["toy/grading/train/copy-of-7"] == folds["toy/grading/train/7"] == -1
    for i in set(range(20)) - {7}:
        assert folds[f"toy/segmentation/train/s{i}"] == folds[f"toy/grading/train/{i}"]
    per_grade = Counter(
        (item.grade, folds[item.id])
        for item in items
        if item.part == "grading" and folds[item.id] >= 0
    )
    for grade in range(5):
        counts = [per_grade[(grade, fold)] for fold in range(5)]
        assert max(counts) - min(counts) <= 1, (grade, counts)
    roles = fold_roles(folds, 2)
    assert {image_id for image_id, role in roles.items() if role == "val"} == {
        i for i, f in folds.items() if f == 2
    }
    write_folds_file(tmp_path / "folds.csv", "toy", folds, 5, 1)
    assert read_folds_file(tmp_path / "folds.csv") == folds
    text = (tmp_path / "folds.csv").read_text().replace(",2\n", ",3\n", 1)
    (tmp_path / "folds.csv").write_text(text)
    with pytest.raises(DataError, match="folds.csv"):
        read_folds_file(tmp_path / "folds.csv")
