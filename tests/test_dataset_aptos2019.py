"""APTOS 2019 loader: train.csv + train_images/<id_code>.png, unlabelled test.csv ignored, errors."""

import logging
from pathlib import Path

import pytest
from dataset_fixtures import write_image, write_text

from data.datasets import aptos2019, load_index
from data.datasets.base import Record
from data.records import DataError

TRAIN = {"000c1434d8d7": 2, "001639a390f0": 4, "0024cdab0c1e": 1, "002c21358ce6": 0}


def make_aptos(root: Path, with_test: bool = True) -> Path:
    for seed, code in enumerate(TRAIN):
        write_image(root / "train_images" / f"{code}.png", seed=seed)
    write_text(
        root / "train.csv", "id_code,diagnosis\n" + "".join(f"{c},{g}\n" for c, g in TRAIN.items())
    )
    if with_test:
        write_image(root / "test_images" / "0005cfc8afb6.png")
        write_text(root / "test.csv", "id_code\n0005cfc8afb6\n")
        write_text(root / "sample_submission.csv", "id_code,diagnosis\n0005cfc8afb6,0\n")
    return root


def test_official_layout_exact_records(tmp_path, caplog):
    root = make_aptos(tmp_path / "aptos2019-blindness-detection")
    with caplog.at_level(logging.INFO, logger="data.datasets.aptos2019"):
        result = aptos2019.index(root)
    assert result.name == "aptos2019" and result.num_classes == 5 and not result.ungradable
    assert result.part_keys() == ["grading/train"]
    assert result.records[0] == Record(
        id="aptos2019/grading/train/000c1434d8d7",
        image=root / "train_images" / "000c1434d8d7.png",
        grade=2,
        part="grading",
        split="train",
        patient="000c1434d8d7",
    )
    assert [(r.image.stem, r.grade, r.patient) for r in result.records] == [
        (c, g, c) for c, g in TRAIN.items()
    ]
    assert all(r.mask_valid == (False,) * 4 for r in result.records)
    assert "test.csv has no labels; ignored" in caplog.text


def test_extra_nesting_level_case_and_extension(tmp_path):
    root = tmp_path / "downloads" / "APTOS"
    write_image(root / "Train_Images" / "000C1434D8D7.PNG")
    write_image(root / "Train_Images" / "001639a390f0.jpg")
    write_text(
        root / "Train.csv", "\ufeffid_code,diagnosis\n000c1434d8d7.png,3\n001639A390F0,0\n"
    )  # BOM too
    result = aptos2019.index(tmp_path)
    assert [(r.id, r.grade) for r in result.records] == [
        ("aptos2019/grading/train/000C1434D8D7", 3),
        ("aptos2019/grading/train/001639a390f0", 0),
    ]


def test_missing_image_folder_is_skipped_and_then_empty(tmp_path, caplog):
    write_text(tmp_path / "train.csv", "id_code,diagnosis\n000c1434d8d7,2\n")
    with caplog.at_level(logging.WARNING, logger="data.datasets.aptos2019"):
        with pytest.raises(DataError, match="no usable images found under .*train_images/"):
            aptos2019.index(tmp_path)
    assert "no train_images/ folder" in caplog.text


def test_wrong_root_names_the_marker(tmp_path):
    write_image(tmp_path / "images" / "000c1434d8d7.png")
    with pytest.raises(DataError, match="looked for 'train.csv'"):
        aptos2019.index(tmp_path)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "grade 5 out of range 0..4"),
        ("two", "grade 'two' is not an integer"),
        ("-1", "grade -1 out of range"),
    ],
)
def test_bad_grade_names_file_and_row(tmp_path, value, message):
    root = make_aptos(tmp_path)
    write_text(
        root / "train.csv",
        f"id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,1\n0024cdab0c1e,{value}\n",
    )
    with pytest.raises(DataError) as error:
        aptos2019.index(root)
    assert f"{root / 'train.csv'} row 4: {message}" in str(error.value)


def test_missing_column_lists_the_columns_found(tmp_path):
    root = make_aptos(tmp_path)
    write_text(root / "train.csv", "id_code,level\n000c1434d8d7,2\n")
    with pytest.raises(
        DataError,
        match=r"missing required column\(s\) 'diagnosis'; found columns: 'id_code', 'level'",
    ):
        aptos2019.index(root)


def test_listed_image_missing_names_file_row_and_image(tmp_path):
    root = make_aptos(tmp_path)
    (root / "train_images" / "0024cdab0c1e.png").unlink()
    with pytest.raises(DataError, match=r"train\.csv row 4: image '0024cdab0c1e' not found"):
        aptos2019.index(root)


def test_images_without_labels_are_ignored(tmp_path):
    root = make_aptos(tmp_path)
    write_image(root / "train_images" / "ffffffffffff.png")
    assert len(aptos2019.index(root).records) == len(TRAIN)


def test_empty_dataset_says_what_it_looked_for(tmp_path):
    (tmp_path / "train_images").mkdir()
    write_text(tmp_path / "train.csv", "id_code,diagnosis\n")
    with pytest.raises(DataError, match="no usable images found under .*train.csv"):
        aptos2019.index(tmp_path)


def test_path_with_spaces_and_non_ascii(tmp_path):
    make_aptos(tmp_path / "Cécité APTOS 2019" / "données")
    result = load_index("aptos2019", tmp_path / "Cécité APTOS 2019")
    assert len(result.records) == len(TRAIN)
    assert all(record.image.is_file() for record in result.records)
