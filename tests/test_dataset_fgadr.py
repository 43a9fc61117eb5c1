"""FGADR Seg-set loader on tiny fixture trees in the release layout (datasets.md section 8)."""

from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import lesion_array, write_image, write_mask, write_text

from data.datasets import load_index
from data.datasets.base import read_mask
from data.datasets.fgadr import index
from data.records import DataError

MASKS = ("Microaneurysms_Masks", "Hemohedge_Masks", "HardExudate_Masks", "SoftExudate_Masks")


LABELS = "0001_1.png,2\n0002_2.png,0\n0003_3.png,4\n"


def _seg_set(seg: Path, he_folder: str = "Hemohedge_Masks", labels: str = LABELS) -> Path:
    """Three labelled images (one without an SE mask), one unlabelled image, IRMA masks to ignore."""
    for seed, name in enumerate(["0001_1.png", "0002_2.png", "0003_3.png", "0004_1.png"]):
        write_image(seg / "Original_Images" / name, seed=seed)
        for folder in (MASKS[0], he_folder, MASKS[2], MASKS[3]):
            if not (folder == MASKS[3] and name == "0002_2.png"):
                write_mask(seg / folder / name, style="soft")
    write_mask(seg / "IRMA_Masks" / "0001_1.png", style="soft")
    write_text(seg / "DR_Seg_Grading_Label.csv", "\ufeff" + labels)  # BOM, as utf-8-sig handles
    return seg


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """The release zip unpacked with an extra level, under a path with spaces and non-ASCII characters."""
    root = tmp_path / "FGADR données"
    _seg_set(root / "FGADR-Seg-set_Release" / "Seg-set")
    return root


def test_release_exact_records(release: Path):
    result = load_index("fgadr", release)
    seg = release / "FGADR-Seg-set_Release" / "Seg-set"
    by_id = {record.id: record for record in result.records}
    assert {key: record.grade for key, record in by_id.items()} == {
        "fgadr/segmentation/all/0001_1": 2,
        "fgadr/segmentation/all/0002_2": 0,
        "fgadr/segmentation/all/0003_3": 4,
    }
    record = by_id["fgadr/segmentation/all/0002_2"]
    assert record.image == seg / "Original_Images" / "0002_2.png"
    assert record.masks == (
        seg / "Microaneurysms_Masks" / "0002_2.png",
        seg / "Hemohedge_Masks" / "0002_2.png",
        seg / "HardExudate_Masks" / "0002_2.png",
        None,
    )
    assert record.mask_valid == (True, True, True, False)
    assert (record.part, record.split, record.patient, record.mask_threshold) == (
        "segmentation",
        "all",
        "0002_2",
        127,
    )
    assert by_id["fgadr/segmentation/all/0001_1"].mask_valid == (True,) * 4
    assert result.ungradable == {}
    assert result.part_keys() == ["segmentation/all"]


def test_threshold_drops_the_anti_aliased_edge(release: Path):
    record = index(release).records[0]
    mask = read_mask(record.masks[0], record.mask_threshold)
    assert np.array_equal(mask, lesion_array())  # the 60-valued ring is not lesion
    assert read_mask(record.masks[0], 0).sum() > mask.sum()


@pytest.mark.parametrize("he_folder", ["Hemorrhage_Masks", "Haemorrhage_Masks"])
def test_corrected_haemorrhage_folder_names(tmp_path: Path, he_folder: str):
    _seg_set(tmp_path / "Seg-set", he_folder=he_folder)
    record = index(tmp_path).records[0]
    assert record.masks[1] == tmp_path / "Seg-set" / he_folder / "0001_1.png"


def test_root_is_seg_set_and_missing_mask_folder(tmp_path: Path, caplog):
    seg = _seg_set(tmp_path / "Seg-set")
    for path in (seg / "Microaneurysms_Masks").iterdir():
        path.unlink()
    (seg / "Microaneurysms_Masks").rmdir()
    records = index(seg).records
    assert [record.mask_valid[0] for record in records] == [False, False, False]
    assert any("no MA mask folder" in message for message in caplog.messages)


def test_names_matched_loosely_and_header_tolerated(tmp_path: Path):
    _seg_set(tmp_path / "Seg-set", labels="image,grade\n0001_1.PNG,1\n0003_3,3\n")
    grades = {record.image.name: record.grade for record in index(tmp_path).records}
    assert grades == {"0001_1.png": 1, "0003_3.png": 3}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("0002_2.png,5", "grade 5 out of range 0..4"),
        ("0002_2.png,two", "grade 'two' is not an integer"),
        ("0002_2.png", "grade '' is not an integer"),  # the grade column is missing on this row
    ],
)
def test_bad_grade_names_file_and_row(tmp_path: Path, row: str, message: str):
    _seg_set(tmp_path / "Seg-set", labels=f"0001_1.png,2\n{row}\n")
    with pytest.raises(DataError, match=rf"DR_Seg_Grading_Label\.csv row 2: {message}"):
        index(tmp_path)


def test_missing_image_names_row_and_image(tmp_path: Path):
    _seg_set(tmp_path / "Seg-set", labels="0001_1.png,2\n0009_1.png,1\n")
    with pytest.raises(
        DataError, match=r"DR_Seg_Grading_Label\.csv row 2: image '0009_1.png' not found"
    ):
        index(tmp_path)


def test_missing_label_file_names_it(tmp_path: Path):
    seg = _seg_set(tmp_path / "Seg-set")
    (seg / "DR_Seg_Grading_Label.csv").unlink()
    with pytest.raises(DataError, match="DR_Seg_Grading_Label.csv not found"):
        index(tmp_path)


def test_wrong_root_names_the_markers(tmp_path: Path):
    write_image(tmp_path / "Images" / "0001_1.png")
    with pytest.raises(DataError, match="'Seg-set/Original_Images' or 'Original_Images'"):
        index(tmp_path)


def test_empty_dataset_says_so(tmp_path: Path):
    (tmp_path / "Seg-set" / "Original_Images").mkdir(parents=True)
    write_text(tmp_path / "Seg-set" / "DR_Seg_Grading_Label.csv", "0001_1.png,2\n")
    with pytest.raises(DataError, match="no usable images"):
        index(tmp_path)
