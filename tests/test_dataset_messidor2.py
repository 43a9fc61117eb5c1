"""Messidor-2 loader on tiny fixture trees in the official layout (datasets.md section 5b)."""

from pathlib import Path

import pytest
from dataset_fixtures import write_image, write_text

from data.datasets import load_index
from data.datasets.messidor2 import index
from data.records import DataError

KRAUSE_HEADER = "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
LOOKALIKE_HEADER = "id_code,diagnosis,adjudicated_dme,adjudicated_gradable\n"
PAIRS = (
    "left;right\n20051020_43808_0100_PP.png;20051020_43832_0100_PP.png\nIM004832.JPG;IM004833.JPG\n"
)


def _images(directory: Path) -> None:
    """Two Messidor-Original PNG pairs' worth plus Brest JPGs with an upper-case extension."""
    for seed, name in enumerate(
        [
            "20051020_43808_0100_PP.png",
            "20051020_43832_0100_PP.png",
            "IM004832.JPG",
            "IM004833.JPG",
            "IM004900.JPG",
        ]
    ):
        write_image(directory / "IMAGES" / name, seed=seed)


def _krause_rows() -> str:
    return (
        KRAUSE_HEADER
        + "20051020_43808_0100_PP.png,0,0,1\n"
        + "20051020_43832_0100_PP.png,2,1,1\n"
        + "IM004832.jpg,4,1,1\n"  # lower-case extension in the CSV, .JPG on disk
        + "IM004833.JPG,1,0,1\n"
        + "IM004900.JPG,,,0\n"  # ungradable: empty grade
    )


@pytest.fixture
def official(tmp_path: Path) -> Path:
    """IMAGES/, messidor_data.csv and messidor-2.csv side by side, under a path with spaces and non-ASCII."""
    root = tmp_path / "Messidor 2 données"
    _images(root)
    write_text(root / "messidor_data.csv", _krause_rows())
    write_text(root / "messidor-2.csv", PAIRS)
    return root


def test_official_layout_exact_records(official: Path):
    result = index(official)
    by_id = {record.id: record for record in result.records}
    assert sorted(by_id) == [
        "messidor2/grading/all/20051020_43808_0100_PP",
        "messidor2/grading/all/20051020_43832_0100_PP",
        "messidor2/grading/all/IM004832",
        "messidor2/grading/all/IM004833",
    ]
    record = by_id["messidor2/grading/all/IM004832"]
    assert record.image == official / "IMAGES" / "IM004832.JPG"
    assert (record.grade, record.part, record.split) == (4, "grading", "all")
    assert record.masks == (None, None, None, None) and record.mask_valid == (False,) * 4
    assert record.mask_threshold == 0
    assert [by_id[key].grade for key in sorted(by_id)] == [0, 2, 4, 1]
    assert result.ungradable == {"grading/all": 1}
    assert result.num_classes == 5
    assert result.part_keys() == ["grading/all"]


def test_pairs_sheet_groups_an_exam_into_one_patient(official: Path):
    patients = {record.image.name: record.patient for record in index(official).records}
    assert patients == {
        "20051020_43808_0100_PP.png": "20051020_43808_0100_PP",
        "20051020_43832_0100_PP.png": "20051020_43808_0100_PP",
        "IM004832.JPG": "IM004832",
        "IM004833.JPG": "IM004832",
    }


def test_without_pairs_sheet_each_image_is_its_own_patient(official: Path):
    (official / "messidor-2.csv").unlink()
    records = index(official).records
    assert all(record.patient == record.image.stem for record in records)
    assert len({record.patient for record in records}) == 4


def test_lookalike_schema_labels_elsewhere_and_extra_nesting(tmp_path: Path):
    """Kaggle copy: id_code/diagnosis columns; IMAGES one level down; labels in a sibling download."""
    _images(tmp_path / "messidor-2" / "messidor-2")
    write_text(
        tmp_path / "kaggle" / "messidor2-dr-grades" / "messidor_data.csv",
        LOOKALIKE_HEADER
        + "20051020_43808_0100_PP.png,3,1,1\nim004833.jpg,0,0,1\nIM004900.JPG,,,0\n",
    )
    result = load_index("messidor2", tmp_path)
    grades = {record.image.name: record.grade for record in result.records}
    assert grades == {"20051020_43808_0100_PP.png": 3, "IM004833.JPG": 0}
    assert result.ungradable == {"grading/all": 1}


def test_images_in_subfolders_of_images(tmp_path: Path):
    write_image(tmp_path / "IMAGES" / "part 1" / "IM004832.JPG")
    write_text(tmp_path / "messidor_data.csv", KRAUSE_HEADER + "IM004832.JPG,2,0,1\n")
    [record] = index(tmp_path).records
    assert record.image == tmp_path / "IMAGES" / "part 1" / "IM004832.JPG"


def test_wrong_root_names_the_marker(tmp_path: Path):
    write_text(tmp_path / "notes.txt", "nothing here")
    with pytest.raises(DataError, match="'IMAGES'"):
        index(tmp_path)


def test_missing_root(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        index(tmp_path / "absent")


def test_missing_label_file_names_it(tmp_path: Path):
    _images(tmp_path)
    with pytest.raises(DataError, match="messidor_data.csv"):
        index(tmp_path)


@pytest.mark.parametrize(
    ("grade", "message"),
    [("5", "grade 5 out of range 0..4"), ("two", "grade 'two' is not an integer")],
)
def test_bad_grade_names_file_and_row(official: Path, grade: str, message: str):
    write_text(
        official / "messidor_data.csv",
        KRAUSE_HEADER + "IM004832.JPG,1,0,1\n" + f"IM004833.JPG,{grade},0,1\n",
    )
    with pytest.raises(DataError, match=rf"messidor_data\.csv row 3: {message}"):
        index(official)


def test_gradable_row_with_empty_grade_is_an_error(official: Path):
    write_text(official / "messidor_data.csv", KRAUSE_HEADER + "IM004832.JPG,,0,1\n")
    with pytest.raises(DataError, match=r"row 2: grade '' is not an integer"):
        index(official)


def test_missing_column_lists_columns_found(official: Path):
    write_text(official / "messidor_data.csv", "image,grade\nIM004832.JPG,1\n")
    with pytest.raises(DataError, match=r"found columns: 'image', 'grade'") as error:
        index(official)
    assert "image_id" in str(error.value) and "id_code" in str(error.value)


def test_missing_image_names_row_and_image(official: Path):
    write_text(
        official / "messidor_data.csv", KRAUSE_HEADER + "IM004832.JPG,1,0,1\nIM999999.JPG,1,0,1\n"
    )
    with pytest.raises(
        DataError, match=r"messidor_data\.csv row 3: image 'IM999999.JPG' not found"
    ):
        index(official)


def test_empty_dataset_says_so(official: Path):
    write_text(official / "messidor_data.csv", KRAUSE_HEADER)
    with pytest.raises(DataError, match="no usable images"):
        index(official)


def test_empty_images_folder_says_so(tmp_path: Path):
    (tmp_path / "IMAGES").mkdir()
    write_text(tmp_path / "messidor_data.csv", _krause_rows())
    with pytest.raises(DataError, match="no usable images"):
        index(tmp_path)
