"""SIGF loader: sequence discovery and label-count rules on tiny fixture trees (datasets.md section 7)."""

from pathlib import Path

import pytest
from dataset_fixtures import write_image, write_text

from data.datasets import load_index
from data.datasets.sigf import index
from data.records import DataError


def _sequence(
    split_dir: Path, sequence: str, years: list[int], labels: str, suffix: str = ".jpg"
) -> None:
    """``<split>/image/all/<sequence>/<name with the year at chars 7-10>`` and ``<split>/label/all/<sequence>.txt``."""
    for seed, year in enumerate(years):
        write_image(
            split_dir / "image" / "all" / sequence / f"{sequence[:7]:_<7}{year}_OD{suffix}",
            seed=seed,
        )
    write_text(split_dir / "label" / "all" / f"{sequence}.txt", labels)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """The official code's layout below an extra ``SIGF database`` folder (space and non-ASCII)."""
    data = tmp_path / "SIGF database é" / "data"
    _sequence(data / "train", "SEQ0001", [2001, 2003, 2005], "0\n0\n1\n")  # one line per image
    _sequence(data / "train", "SEQ0002", [2002, 2004], "1\n")  # one line for the sequence
    _sequence(
        data / "train", "SEQ0003", [2001, 2002, 2003, 2004], "0\n1\n1\n"
    )  # forecast: one fewer
    _sequence(
        data / "test", "SEQ0004", [2010, 2011], "label\n\n0\n\n1\n", suffix=".JPG"
    )  # header, blanks
    write_image(
        data / "final_polar" / "SEQ0001_2001_OD.jpg"
    )  # derived maps: no label file, ignored
    write_text(data / "readme.txt", "not a label file")
    return tmp_path


def test_official_layout_exact_records(database: Path):
    result = index(database)
    grades = {record.id: record.grade for record in result.records}
    assert grades == {
        "sigf/grading/train/SEQ0001_SEQ00012001_OD": 0,
        "sigf/grading/train/SEQ0001_SEQ00012003_OD": 0,
        "sigf/grading/train/SEQ0001_SEQ00012005_OD": 1,
        "sigf/grading/train/SEQ0002_SEQ00022002_OD": 1,
        "sigf/grading/train/SEQ0002_SEQ00022004_OD": 1,
        # forecast labels: line i labels image i+1; the first image (2001) is left out
        "sigf/grading/train/SEQ0003_SEQ00032002_OD": 0,
        "sigf/grading/train/SEQ0003_SEQ00032003_OD": 1,
        "sigf/grading/train/SEQ0003_SEQ00032004_OD": 1,
        "sigf/grading/test/SEQ0004_SEQ00042010_OD": 0,
        "sigf/grading/test/SEQ0004_SEQ00042011_OD": 1,
    }
    record = next(record for record in result.records if record.split == "test")
    sequence = database / "SIGF database é" / "data" / "test" / "image" / "all" / "SEQ0004"
    assert record.image == sequence / "SEQ00042010_OD.JPG"
    assert (record.part, record.patient, record.masks, record.mask_threshold) == (
        "grading",
        "SEQ0004",
        (None,) * 4,
        0,
    )
    assert result.num_classes == 2
    assert result.ungradable == {}
    assert result.part_keys() == ["grading/test", "grading/train"]


def test_images_are_in_file_name_order(tmp_path: Path):
    _sequence(tmp_path / "train", "S1", [2009, 2001, 2005], "0\n1\n1\n")
    images = [record.image.name for record in index(tmp_path).records]
    assert images == ["S1_____2001_OD.jpg", "S1_____2005_OD.jpg", "S1_____2009_OD.jpg"]
    assert [record.grade for record in index(tmp_path).records] == [0, 1, 1]


def test_val_is_valid_and_no_split_is_all(tmp_path: Path):
    _sequence(tmp_path / "Val", "A", [2001], "1\n")
    _sequence(tmp_path / "sequences", "B", [2001], "0\n")
    splits = {record.patient: record.split for record in load_index("sigf", tmp_path).records}
    assert splits == {"A": "valid", "B": "all"}


def test_label_file_beside_its_folder(tmp_path: Path):
    write_image(tmp_path / "eyes" / "E7" / "E7_2001.png")
    write_image(tmp_path / "eyes" / "E7" / "E7_2002.png")
    write_text(tmp_path / "eyes" / "E7.txt", "1\n1\n")
    assert [record.grade for record in index(tmp_path).records] == [1, 1]


def test_count_mismatch_names_file_and_counts(tmp_path: Path):
    _sequence(tmp_path / "train", "S1", [2001, 2002, 2003, 2004], "0\n1\n")
    with pytest.raises(DataError, match=r"S1\.txt: 2 labels for 4 images"):
        index(tmp_path)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("0\n2\n", r"S1\.txt line 2: grade 2 out of range 0\.\.1"),
        ("0\nyes\n", r"S1\.txt line 2: grade 'yes' is not an integer"),
    ],
)
def test_bad_label_names_file_and_line(tmp_path: Path, labels: str, message: str):
    _sequence(tmp_path / "train", "S1", [2001, 2002], labels)
    with pytest.raises(DataError, match=message):
        index(tmp_path)


def test_label_file_with_only_a_header(tmp_path: Path):
    _sequence(tmp_path / "train", "S1", [2001], "label\n\n")
    with pytest.raises(DataError, match=r"S1\.txt has no labels"):
        index(tmp_path)


def test_ambiguous_sequence_names_both_paths(tmp_path: Path):
    _sequence(tmp_path / "train" / "a", "S1", [2001], "1\n")
    _sequence(tmp_path / "train" / "b", "S1", [2001], "1\n")
    with pytest.raises(DataError, match="sequence 's1' of split train is ambiguous"):
        index(tmp_path)


def test_same_sequence_name_in_two_splits_is_fine(tmp_path: Path):
    _sequence(tmp_path / "train", "S1", [2001], "1\n")
    _sequence(tmp_path / "test", "S1", [2001], "0\n")
    ids = sorted(record.id for record in load_index("sigf", tmp_path).records)
    assert ids == ["sigf/grading/test/S1_S1_____2001_OD", "sigf/grading/train/S1_S1_____2001_OD"]


def test_wrong_root_names_what_was_looked_for(tmp_path: Path):
    write_image(
        tmp_path / "train" / "image" / "all" / "S1" / "x.jpg"
    )  # images without a label file
    write_text(tmp_path / "train" / "label" / "all" / "other.txt", "1\n")
    with pytest.raises(
        DataError, match=r"not a sigf root: looked for label files <sequence_id>\.txt"
    ):
        index(tmp_path)


def test_too_deep_is_not_found(tmp_path: Path):
    _sequence(tmp_path / "a" / "b" / "c" / "train", "S1", [2001], "1\n")  # folder 7 levels down
    with pytest.raises(DataError, match="up to 6 levels down"):
        index(tmp_path)
