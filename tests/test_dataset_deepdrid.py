"""DeepDRiD loader (regular fundus and ultra-widefield) on tiny fixture trees (datasets.md section 6)."""

import logging
from pathlib import Path

import pytest
from dataset_fixtures import write_image, write_text

from data.datasets import load_index
from data.datasets.deepdrid import index
from data.records import DataError

HEADER = (
    "patient_id,image_id,image_path,Overall quality,left_eye_DR_Level,right_eye_DR_Level,"
    "patient_DR_Level,Clarity,Field definition,Artifact\n"
)
UWF_HEADER = "patient_id,image_id,image_path,DR_level,position\n"


def _row(patient: str, image: str, split: str, left: str, right: str) -> str:
    path = f"\\regular-fundus-{split}\\{patient}\\{image}.jpg"
    return f"{patient},{image},{path},1,{left},{right},{max(left, right)},8,10,0\n"


def _regular(root: Path) -> Path:
    """Two training patients (patient 56's swapped columns included) and one validation patient."""
    base = root / "regular_fundus_images"
    train = base / "regular-fundus-training"
    for patient, images in {
        "1": ["1_l1", "1_l2", "1_r1", "1_r2"],
        "56": ["56_l3", "56_r3"],
    }.items():
        for seed, image in enumerate(images):
            write_image(train / "Images" / patient / f"{image}.jpg", seed=seed)
    write_text(
        train / "regular-fundus-training.csv",
        HEADER
        + _row("1", "1_l1", "training", "0", "")
        + _row("1", "1_l2", "training", "0", "")
        + _row("1", "1_r1", "training", "", "2")
        + _row("1", "1_r2", "training", "", "2")
        + _row("56", "56_r3", "training", "3", "")  # left column filled for a right-eye name
        + _row("56", "56_l3", "training", "", "3"),
    )
    write_text(
        train / "regular-fundus-source-training.csv",
        "patient_id,image_id,image_path,Source\n1,1_l1,x,Nation\n",
    )
    valid = base / "regular-fundus-validation"
    write_image(valid / "Images" / "7" / "7_L1.JPG")  # case and extension differ from the CSV
    write_image(valid / "Images" / "7" / "7_r1.jpg")
    write_text(
        valid / "regular-fundus-validation.csv",
        HEADER
        + _row("7", "7_l1", "validation", "4", "")
        + _row("7", "7_r1", "validation", "1", "1"),
    )
    evaluation = base / "Online-Challenge1&2-Evaluation"
    write_image(evaluation / "Images" / "300" / "300_l1.jpg")
    write_image(evaluation / "Images" / "300" / "300_r1.jpg")
    write_text(evaluation / "Challenge1_upload.csv", "image_id,DR_Level\n300_l1,\n300_r1,\n")
    return train


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The repository unpacked one level down, under a path with spaces and non-ASCII characters."""
    root = tmp_path / "données DeepDRiD"
    _regular(root / "DeepDRiD-master")
    return root


def test_regular_exact_records(repo: Path, caplog):
    caplog.set_level(logging.INFO)
    result = index(repo)
    by_id = {record.id: record for record in result.records}
    assert {key: (record.grade, record.patient) for key, record in by_id.items()} == {
        "deepdrid/grading/train/1_l1": (0, "1"),
        "deepdrid/grading/train/1_l2": (0, "1"),
        "deepdrid/grading/train/1_r1": (2, "1"),
        "deepdrid/grading/train/1_r2": (2, "1"),
        "deepdrid/grading/train/56_r3": (3, "56"),
        "deepdrid/grading/train/56_l3": (3, "56"),
        "deepdrid/grading/valid/7_L1": (4, "7"),
        "deepdrid/grading/valid/7_r1": (1, "7"),
    }
    base = repo / "DeepDRiD-master" / "regular_fundus_images"
    record = by_id["deepdrid/grading/valid/7_L1"]
    assert record.image == base / "regular-fundus-validation" / "Images" / "7" / "7_L1.JPG"
    assert (record.part, record.split, record.masks, record.mask_threshold) == (
        "grading",
        "valid",
        (None,) * 4,
        0,
    )
    assert result.ungradable == {}
    assert result.part_keys() == ["grading/train", "grading/valid"]
    swapped = [message for message in caplog.messages if "trusting the column" in message]
    assert len(swapped) == 2 and any(
        "56_r3" in message and "left_eye_DR_Level" in message for message in swapped
    )
    assert any("no labels CSV with grades" in message for message in caplog.messages)


def test_root_may_be_regular_fundus_images_itself(repo: Path):
    result = index(repo / "DeepDRiD-master" / "regular_fundus_images")
    assert len(result.records) == 8


def test_evaluation_labels_csv_adds_split_test(repo: Path):
    evaluation = (
        repo / "DeepDRiD-master" / "regular_fundus_images" / "Online-Challenge1&2-Evaluation"
    )
    write_text(evaluation / "Challenge1_labels.csv", "image_id,DR_Levels\n300_l1,2\n300_r1,0\n")
    result = load_index("deepdrid", repo)
    tests = {
        record.id: (record.grade, record.patient)
        for record in result.records
        if record.split == "test"
    }
    assert tests == {
        "deepdrid/grading/test/300_l1": (2, "300"),
        "deepdrid/grading/test/300_r1": (0, "300"),
    }
    assert len(result.records) == 10


def test_evaluation_xlsx_only_is_skipped_with_a_reason(repo: Path, caplog):
    evaluation = (
        repo / "DeepDRiD-master" / "regular_fundus_images" / "Online-Challenge1&2-Evaluation"
    )
    write_text(evaluation / "Challenge1_labels.xlsx", "not really a workbook")
    result = index(repo)
    assert {record.split for record in result.records} == {"train", "valid"}
    assert any(
        "Challenge1_labels.xlsx" in message and "openpyxl" in message for message in caplog.messages
    )


def test_split_without_images_folder_is_skipped(repo: Path, caplog):
    valid = repo / "DeepDRiD-master" / "regular_fundus_images" / "regular-fundus-validation"
    for path in sorted((valid / "Images").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (valid / "Images").rmdir()
    result = index(repo)
    assert {record.split for record in result.records} == {"train"}
    assert any("split valid skipped" in message for message in caplog.messages)


def test_image_outside_its_patient_folder_and_path_fallback(tmp_path: Path):
    train = tmp_path / "regular_fundus_images" / "regular-fundus-training"
    write_image(train / "Images" / "9_l1.jpg")  # no patient folder
    write_image(train / "Images" / "9" / "9_l2.png")
    rows = _row("9", "9_l1", "training", "1", "") + _row("9", "9_L2", "training", "1", "")
    write_text(train / "regular-fundus-training.csv", HEADER + rows)
    images = sorted(record.image.name for record in index(tmp_path).records)
    assert images == ["9_l1.jpg", "9_l2.png"]


@pytest.mark.parametrize(
    ("left", "right", "message"),
    [
        ("", "", "both left_eye_DR_Level and right_eye_DR_Level are empty"),
        ("1", "2", "left_eye_DR_Level '1' and right_eye_DR_Level '2' disagree"),
        ("7", "", "grade 7 out of range 0..4"),
        ("", "x", "grade 'x' is not an integer"),
    ],
)
def test_bad_grade_columns_name_file_and_row(tmp_path: Path, left: str, right: str, message: str):
    train = _regular(tmp_path)
    lines = (train / "regular-fundus-training.csv").read_text().splitlines(keepends=True)
    lines[3] = _row("1", "1_r1", "training", left, right)
    write_text(train / "regular-fundus-training.csv", "".join(lines))
    with pytest.raises(DataError, match=rf"regular-fundus-training\.csv row 4: {message}"):
        index(tmp_path)


def test_missing_image_names_row_and_image(tmp_path: Path):
    train = _regular(tmp_path)
    (train / "Images" / "1" / "1_r2.jpg").unlink()
    with pytest.raises(
        DataError, match=r"regular-fundus-training\.csv row 5: image '1_r2' not found"
    ):
        index(tmp_path)


def test_missing_column_lists_columns_found(tmp_path: Path):
    train = _regular(tmp_path)
    write_text(train / "regular-fundus-training.csv", "patient_id,image_id,DR_Level\n1,1_l1,0\n")
    with pytest.raises(
        DataError, match=r"left_eye_DR_Level.*found columns: 'patient_id', 'image_id', 'DR_Level'"
    ):
        index(tmp_path)


def test_wrong_root_names_the_markers(tmp_path: Path):
    write_image(tmp_path / "Images" / "1" / "1_l1.jpg")
    with pytest.raises(DataError, match="'regular-fundus-training' or 'regular-fundus-validation'"):
        index(tmp_path)


def test_empty_dataset_says_so(tmp_path: Path):
    train = _regular(tmp_path)
    write_text(train / "regular-fundus-training.csv", HEADER)
    write_text(train.parent / "regular-fundus-validation" / "regular-fundus-validation.csv", HEADER)
    with pytest.raises(DataError, match="no usable images"):
        index(tmp_path)


# --------------------------------------------------------------------------- ultra-widefield
def _uwf(root: Path, csv_name: str = "ultra-widefield-training.csv") -> Path:
    train = root / "DeepDRiD" / "DeepDRiD" / "ultra-widefield_images" / "ultra-widefield-training"
    for seed, image in enumerate(["1_l12", "1_r20", "2_l1"]):
        write_image(train / "Images" / image.split("_")[0] / f"{image}.jpg", seed=seed)
    write_text(
        train / csv_name,
        UWF_HEADER
        + "1,1_l12,ultra-widefield-training\\1\\1_l12.jpg,2,left_eye\n"
        + "1,1_r20,ultra-widefield-training\\1\\1_r20.jpg,5,right_eye\n"  # ungradable
        + "2,2_l1,ultra-widefield-training\\2\\2_l1.jpg,0,left_eye\n",
    )
    write_text(train / "Readme.txt", "DR_level 5: image quality is low and cannot be graded")
    return train


@pytest.mark.parametrize("csv_name", ["ultra-widefield-training.csv", "labels.csv"])
def test_uwf_exact_records_and_ungradable(tmp_path: Path, csv_name: str):
    _uwf(tmp_path, csv_name)
    result = load_index("deepdrid_uwf", tmp_path)
    assert {record.id: (record.grade, record.patient) for record in result.records} == {
        "deepdrid_uwf/grading/train/1_l12": (2, "1"),
        "deepdrid_uwf/grading/train/2_l1": (0, "2"),
    }
    assert result.ungradable == {"grading/train": 1}
    assert result.name == "deepdrid_uwf"


def test_uwf_wrong_root_names_uwf_markers(tmp_path: Path):
    _regular(tmp_path)
    with pytest.raises(
        DataError, match="'ultra-widefield-training' or 'ultra-widefield-validation'"
    ):
        index(tmp_path, uwf=True)


def test_uwf_ambiguous_label_csv_lists_files(tmp_path: Path):
    train = _uwf(tmp_path, "a.csv")
    write_text(train / "b.csv", UWF_HEADER)
    with pytest.raises(
        DataError, match="exactly one label CSV with column.s. DR_level.*a.csv, b.csv"
    ):
        index(tmp_path, uwf=True)


def test_uwf_grade_out_of_range_names_file_and_row(tmp_path: Path):
    train = _uwf(tmp_path)
    write_text(train / "ultra-widefield-training.csv", UWF_HEADER + "1,1_l12,x,6,left_eye\n")
    with pytest.raises(
        DataError, match=r"ultra-widefield-training\.csv row 2: grade 6 out of range"
    ):
        index(tmp_path, uwf=True)
