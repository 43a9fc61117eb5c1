"""EyePACS (Kaggle 2015) loader: trainLabels.csv with train/ at any depth, the optional
retinopathy_solution.csv (Public -> valid, Private -> test), patients from ``<id>_left/_right``, errors."""

import logging
from collections import Counter
from pathlib import Path

import pytest
from dataset_fixtures import write_image, write_text

from data.datasets import eyepacs, load_index
from data.datasets.base import Record
from data.records import DataError

TRAIN = {"10_left": 0, "10_right": 1, "13_left": 4, "13_right": 2, "15_left": 3}
SOLUTION = [("1_left", 0, "Public"), ("1_right", 2, "Private"), ("3_left", 4, "Private")]


def make_eyepacs(root: Path, train_dir: str = "train/train", solution: bool = True) -> Path:
    """Kaggle's layout: the multi-part train zip unpacks into train/train/, test into test/."""
    for seed, name in enumerate(TRAIN):
        write_image(root / train_dir / f"{name}.jpeg", seed=seed)
    write_text(
        root / "trainLabels.csv", "image,level\n" + "".join(f"{n},{g}\n" for n, g in TRAIN.items())
    )
    if solution:
        for seed, (name, _, _) in enumerate(SOLUTION):
            write_image(root / "test" / f"{name}.jpeg", seed=seed)
        rows = "".join(f"{name},{grade},{usage}\n" for name, grade, usage in SOLUTION)
        write_text(root / "retinopathy_solution.csv", "image,level,Usage\n" + rows)
    return root


def _counts(result) -> dict[str, int]:
    return dict(Counter(record.key for record in result.records))


FULL = {"grading/train": 5, "grading/valid": 1, "grading/test": 2}


def test_official_layout_exact_records(tmp_path):
    root = make_eyepacs(tmp_path / "eyepacs")
    result = eyepacs.index(root)
    assert result.name == "eyepacs" and result.num_classes == 5 and not result.ungradable
    assert _counts(result) == FULL
    assert result.records[1] == Record(
        id="eyepacs/grading/train/10_right",
        image=root / "train" / "train" / "10_right.jpeg",
        grade=1,
        part="grading",
        split="train",
        patient="10",
    )
    assert [(r.id, r.grade, r.patient) for r in result.records if r.split != "train"] == [
        ("eyepacs/grading/valid/1_left", 0, "1"),
        ("eyepacs/grading/test/1_right", 2, "1"),
        ("eyepacs/grading/test/3_left", 4, "3"),
    ]
    assert [r.grade for r in result.records if r.split == "train"] == list(TRAIN.values())
    assert all(r.mask_valid == (False,) * 4 for r in result.records)


def test_both_eyes_share_a_patient(tmp_path):
    result = eyepacs.index(make_eyepacs(tmp_path))
    patients = Counter(r.patient for r in result.records if r.split == "train")
    assert patients == {"10": 2, "13": 2, "15": 1}


@pytest.mark.parametrize(
    ("stem", "patient"),
    [
        ("10_left", "10"),
        ("44_RIGHT", "44"),
        ("a_b_left", "a_b"),
        ("sample", "sample"),
        ("7_leftish", "7_leftish"),
    ],
)
def test_patient_of(stem, patient):
    assert eyepacs.patient_of(stem) == patient


def test_flat_train_folder_and_extension_mismatches(tmp_path):
    root = tmp_path / "kaggle"
    write_image(root / "Train" / "10_left.JPEG")
    write_image(root / "Train" / "10_right.jpg")
    write_text(root / "trainlabels.CSV", "image,level\n10_left.jpeg,2\n10_RIGHT,0\n")
    result = eyepacs.index(root)
    assert [(r.id, r.grade, r.image.name) for r in result.records] == [
        ("eyepacs/grading/train/10_left", 2, "10_left.JPEG"),
        ("eyepacs/grading/train/10_right", 0, "10_right.jpg"),
    ]


def test_labels_unzipped_into_a_folder_of_the_same_name(tmp_path):
    """``unzip trainLabels.csv.zip`` can give trainLabels.csv/trainLabels.csv."""
    root = make_eyepacs(tmp_path, solution=False)
    inner = (root / "trainLabels.csv").read_text()
    (root / "trainLabels.csv").unlink()
    write_text(root / "trainLabels.csv" / "trainLabels.csv", inner)
    assert _counts(eyepacs.index(root)) == {"grading/train": 5}


def test_extra_nesting_level(tmp_path):
    make_eyepacs(tmp_path / "diabetic-retinopathy-detection" / "data")
    assert _counts(eyepacs.index(tmp_path)) == FULL


def test_without_solution_only_train(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="data.datasets.eyepacs"):
        result = eyepacs.index(make_eyepacs(tmp_path, solution=False))
    assert _counts(result) == {"grading/train": 5}
    assert "no retinopathy_solution.csv" in caplog.text


def test_solution_without_test_images_is_skipped_with_a_warning(tmp_path, caplog):
    root = make_eyepacs(tmp_path)
    for path in (root / "test").iterdir():
        path.unlink()
    (root / "test").rmdir()
    with caplog.at_level(logging.WARNING, logger="data.datasets.eyepacs"):
        assert _counts(eyepacs.index(root)) == {"grading/train": 5}
    assert "skipping splits valid and test: no test/ folder" in caplog.text


def test_usage_is_matched_case_insensitively_and_unknown_usage_fails(tmp_path):
    root = make_eyepacs(tmp_path)
    write_text(
        root / "retinopathy_solution.csv", "image,level,Usage\n1_left,0,public\n1_right,2,PRIVATE\n"
    )
    assert _counts(eyepacs.index(root)) == {
        "grading/train": 5,
        "grading/valid": 1,
        "grading/test": 1,
    }
    write_text(
        root / "retinopathy_solution.csv", "image,level,Usage\n1_left,0,Public\n1_right,2,Ignored\n"
    )
    with pytest.raises(
        DataError, match=r"solution\.csv row 3: Usage 'Ignored' is neither Public nor Private"
    ):
        eyepacs.index(root)


def test_missing_train_folder_names_it(tmp_path):
    write_text(tmp_path / "trainLabels.csv", "image,level\n10_left,0\n")
    with pytest.raises(
        DataError, match=r"trainLabels\.csv found but not its image folder .*/train$"
    ):
        eyepacs.index(tmp_path)


def test_wrong_root_names_the_marker(tmp_path):
    write_image(tmp_path / "train" / "10_left.jpeg")
    with pytest.raises(DataError, match="looked for 'trainLabels.csv'"):
        eyepacs.index(tmp_path)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "grade 5 out of range 0..4"),
        ("2.5", "grade '2.5' is not an integer"),
        ("", "grade '' is not an integer"),
    ],
)
def test_bad_grade_names_file_and_row(tmp_path, value, message):
    root = make_eyepacs(tmp_path)
    write_text(
        root / "retinopathy_solution.csv",
        f"image,level,Usage\n1_left,0,Public\n1_right,{value},Private\n",
    )
    with pytest.raises(DataError) as error:
        eyepacs.index(root)
    assert f"{root / 'retinopathy_solution.csv'} row 3: {message}" in str(error.value)


def test_missing_column_lists_the_columns_found(tmp_path):
    root = make_eyepacs(tmp_path)
    write_text(root / "retinopathy_solution.csv", "image,level\n1_left,0\n")
    with pytest.raises(
        DataError, match="missing required column\\(s\\) 'Usage'; found columns: 'image', 'level'"
    ):
        eyepacs.index(root)


def test_listed_image_missing_names_file_row_and_image(tmp_path):
    root = make_eyepacs(tmp_path)
    (root / "train" / "train" / "13_left.jpeg").unlink()
    with pytest.raises(DataError, match=r"trainLabels\.csv row 4: image '13_left' not found"):
        eyepacs.index(root)


def test_images_without_labels_are_ignored(tmp_path):
    root = make_eyepacs(tmp_path)
    write_image(root / "train" / "train" / "99_left.jpeg")
    write_image(root / "test" / "98_right.jpeg")
    assert _counts(eyepacs.index(root)) == FULL


def test_empty_dataset_says_what_it_looked_for(tmp_path):
    (tmp_path / "train").mkdir()
    write_text(tmp_path / "trainLabels.csv", "image,level\n")
    with pytest.raises(DataError, match="no usable images found under .*trainLabels.csv"):
        eyepacs.index(tmp_path)


def test_path_with_spaces_and_non_ascii(tmp_path):
    make_eyepacs(tmp_path / "Rétinopathie Kaggle 2015" / "ü data")
    result = load_index("eyepacs", tmp_path / "Rétinopathie Kaggle 2015")
    assert _counts(result) == FULL
    assert all(record.image.is_file() for record in result.records)
