"""Generic CSV loader (``csv`` dataset) on tiny fixture trees."""

from pathlib import Path

import pytest
from dataset_fixtures import write_image, write_mask, write_text

from data.datasets import load_index
from data.datasets.csv_table import index
from data.records import DataError

HEADER = "image,grade,split,patient,mask_MA,mask_HE,mask_EX,mask_SE\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A dataset folder with spaces and non-ASCII characters; images and masks referenced relatively."""
    root = tmp_path / "mes données"
    for seed, name in enumerate(
        ["p01 left.jpg", "p01_right.JPG", "p02_left.png", "p03_left.png", "p04.png"]
    ):
        write_image(root / "images" / name, seed=seed)
    write_mask(root / "masks" / "p02_left_MA.png", style="binary")
    write_mask(root / "masks" / "p02_left_HE.png", style="binary")
    write_mask(root / "masks" / "p03_left_MA.png", style="binary")
    write_text(
        root / "labels.csv",
        HEADER
        + "images/p01 left.jpg,2,train,p01,,,,\n"
        + "images\\p01_right.jpg,0,TRAIN,p01,,,,\n"  # Windows separator, case and extension mismatch
        + "images/p02_left.png,4,val,,masks/p02_left_MA.png,masks/p02_left_HE.png,,\n"
        + "images/p03_left,,test,p03,masks/p03_left_MA.png,,,\n"  # no grade: segmentation only
        + f"{root / 'images' / 'p04.png'},1,,,,,,\n",  # absolute path, empty split
    )
    return root


def test_exact_records(folder: Path):
    result = load_index("csv", folder)
    by_id = {record.id: record for record in result.records}
    assert {key: (record.grade, record.patient) for key, record in by_id.items()} == {
        "csv/grading/train/p01 left": (2, "p01"),
        "csv/grading/train/p01_right": (0, "p01"),
        "csv/segmentation/valid/p02_left": (4, "p02_left"),
        "csv/segmentation/test/p03_left": (-1, "p03"),
        "csv/grading/all/p04": (1, "p04"),
    }
    record = by_id["csv/segmentation/valid/p02_left"]
    assert record.image == folder / "images" / "p02_left.png"
    assert record.masks == (
        folder / "masks" / "p02_left_MA.png",
        folder / "masks" / "p02_left_HE.png",
        None,
        None,
    )
    assert record.mask_valid == (True, True, False, False)
    assert record.mask_threshold == 0
    assert by_id["csv/grading/train/p01_right"].image == folder / "images" / "p01_right.JPG"
    assert by_id["csv/grading/train/p01_right"].masks == (None,) * 4
    assert result.num_classes == 5
    assert result.root == folder / "labels.csv"
    assert result.part_keys() == [
        "grading/all",
        "grading/train",
        "segmentation/test",
        "segmentation/valid",
    ]


def test_root_may_be_the_csv_itself(folder: Path):
    assert len(index(folder / "labels.csv").records) == 5


def test_aliases_case_insensitive_and_semicolons(tmp_path: Path):
    write_image(tmp_path / "a.png")
    write_text(tmp_path / "list.csv", "FileName;Level;Patient_ID\na.png;3;x\n")
    [record] = index(tmp_path).records
    assert (record.grade, record.patient, record.split, record.part) == (3, "x", "all", "grading")


def test_mask_only_csv_needs_no_grade_column(tmp_path: Path):
    write_image(tmp_path / "a.png")
    write_mask(tmp_path / "a_ex.png")
    write_text(tmp_path / "seg.csv", "path,mask_ex\na.png,a_ex.png\n")
    [record] = index(tmp_path).records
    assert (record.grade, record.part, record.mask_valid) == (
        -1,
        "segmentation",
        (False, False, True, False),
    )


def test_folder_with_two_csvs_lists_them(folder: Path):
    write_text(folder / "other.csv", HEADER)
    with pytest.raises(DataError, match=r"2 \.csv files .*labels\.csv, other\.csv"):
        index(folder)


def test_folder_without_csv(tmp_path: Path):
    with pytest.raises(DataError, match=r"no \.csv file in"):
        index(tmp_path)


def _one_row(tmp_path: Path, row: str, header: str = HEADER) -> Path:
    write_image(tmp_path / "a.png")
    write_mask(tmp_path / "a_ma.png")
    return write_text(tmp_path / "labels.csv", header + "a.png,1,train,,,,,\n" + row + "\n")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.png,5,test,,,,,", "grade 5 out of range 0..4"),
        ("a.png,1.5,test,,,,,", "grade '1.5' is not an integer"),
        ("a.png,,test,,,,,", "empty grade on a row without masks"),
        ("a.png,1,holdout,,,,,", "split 'holdout' is not one of"),
        ("b.png,1,test,,,,,", "image 'b.png' not found"),
        (",1,test,,,,,", "empty image path"),
        ("a.png,1,test,,,,b_ex.png,", "mask 'b_ex.png' .column mask_EX. not found"),
        ("a.png,2,train,,,,,", "id csv/grading/train/a repeats row 2"),
    ],
)
def test_bad_row_names_file_and_row(tmp_path: Path, row: str, message: str):
    _one_row(tmp_path, row)
    with pytest.raises(DataError, match=rf"labels\.csv row 3: {message}"):
        index(tmp_path)


def test_missing_column_lists_columns_found(tmp_path: Path):
    write_image(tmp_path / "a.png")
    write_text(tmp_path / "labels.csv", "img,grade\na.png,1\n")
    with pytest.raises(
        DataError, match=r"missing the image column .*found columns: 'img', 'grade'"
    ):
        index(tmp_path)


def test_two_columns_for_one_role(tmp_path: Path):
    write_text(tmp_path / "labels.csv", "image,path,grade\na.png,a.png,1\n")
    with pytest.raises(DataError, match="columns 'image', 'path' all give the image"):
        index(tmp_path)


def test_empty_dataset_says_so(tmp_path: Path):
    write_text(tmp_path / "labels.csv", HEADER)
    with pytest.raises(DataError, match="no usable images"):
        index(tmp_path)


def test_missing_root(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        index(tmp_path / "absent.csv")
