"""IDRiD loader: official layout of both parts, nesting and naming variants, missing masks, errors,
and the real training parts in ../shared/data/idrid when present."""

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import lesion_array, write_image, write_mask, write_text

from data.datasets import idrid, load_index
from data.datasets.base import Record, image_size, read_mask
from data.records import DataError

REAL = Path(__file__).resolve().parents[2] / "shared/data/idrid"
SEG = "A. Segmentation"
GRADING = "B. Disease Grading"
TRUTHS = "2. All Segmentation Groundtruths"
LESION_FOLDERS = {
    "MA": "1. Microaneurysms",
    "HE": "2. Haemorrhages",
    "EX": "3. Hard Exudates",
    "SE": "4. Soft Exudates",
    "OD": "5. Optic Disc",
}
SETS = {"train": "a. Training Set", "test": "b. Testing Set"}
CSVS = {
    "train": "a. IDRiD_Disease Grading_Training Labels.csv",
    "test": "b. IDRiD_Disease Grading_Testing Labels.csv",
}
HEADER = "Image name,Retinopathy grade,Risk of macular edema ,,,,"
TRAIN_GRADES = {"IDRiD_001": 3, "IDRiD_002": 0, "IDRiD_003": 4}
TEST_GRADES = {"IDRiD_001": 2, "IDRiD_002": 1}
# image -> lesions with a mask file; IDRiD_02 lacks HE and SE like IDRiD_43 and half of the SE set
TRAIN_MASKS = {"IDRiD_01": ("MA", "HE", "EX", "SE", "OD"), "IDRiD_02": ("MA", "EX", "OD")}
TEST_MASKS = {"IDRiD_55": ("MA", "HE", "EX", "SE", "OD")}


def _grading_csv(grades: dict[str, int], trailing: str = ",,,") -> str:
    """As released: trailing-space header, empty trailing columns, names without extension."""
    rows = [f"{name},{grade},{grade % 3}{trailing}" for name, grade in grades.items()]
    return "\n".join([HEADER, *rows, ""])


def make_grading(part: Path, splits=("train", "test")) -> None:
    for split in splits:
        grades = TRAIN_GRADES if split == "train" else TEST_GRADES
        for seed, name in enumerate(grades):
            write_image(part / "1. Original Images" / SETS[split] / f"{name}.jpg", seed=seed)
        write_text(part / "2. Groundtruths" / CSVS[split], _grading_csv(grades))


def make_segmentation(part: Path, splits=("train", "test"), mask_suffix: str = ".tif") -> None:
    for split in splits:
        masks = TRAIN_MASKS if split == "train" else TEST_MASKS
        for seed, (name, lesions) in enumerate(masks.items()):
            write_image(part / "1. Original Images" / SETS[split] / f"{name}.jpg", seed=seed)
            for lesion in lesions:
                folder = part / TRUTHS / SETS[split] / LESION_FOLDERS[lesion]
                write_mask(folder / f"{name}_{lesion}{mask_suffix}", style="red")


def make_idrid(root: Path) -> Path:
    make_segmentation(root / SEG)
    make_grading(root / GRADING)
    return root


def _mask(root: Path, split: str, name: str, lesion: str, suffix: str = ".tif") -> Path:
    return root / SEG / TRUTHS / SETS[split] / LESION_FOLDERS[lesion] / f"{name}_{lesion}{suffix}"


def _counts(result) -> dict[str, int]:
    return dict(Counter(record.key for record in result.records))


def test_official_layout_exact_records(tmp_path):
    root = make_idrid(tmp_path / "idrid")
    result = idrid.index(root)
    assert result.name == "idrid" and result.num_classes == 5 and not result.ungradable
    assert _counts(result) == {
        "grading/train": 3,
        "grading/test": 2,
        "segmentation/train": 2,
        "segmentation/test": 1,
    }
    records = {record.id: record for record in result.records}
    assert records["idrid/grading/train/IDRiD_001"] == Record(
        id="idrid/grading/train/IDRiD_001",
        image=root / GRADING / "1. Original Images" / SETS["train"] / "IDRiD_001.jpg",
        grade=3,
        part="grading",
        split="train",
        patient="IDRiD_001",
    )
    assert records["idrid/grading/test/IDRiD_002"].grade == 1
    assert records["idrid/grading/test/IDRiD_002"].image.parent.name == SETS["test"]
    assert [records[f"idrid/grading/train/{name}"].grade for name in TRAIN_GRADES] == list(
        TRAIN_GRADES.values()
    )
    assert records["idrid/segmentation/train/IDRiD_01"] == Record(
        id="idrid/segmentation/train/IDRiD_01",
        image=root / SEG / "1. Original Images" / SETS["train"] / "IDRiD_01.jpg",
        grade=-1,
        part="segmentation",
        split="train",
        patient="IDRiD_01",
        masks=tuple(
            _mask(root, "train", "IDRiD_01", lesion) for lesion in ("MA", "HE", "EX", "SE")
        ),
        mask_threshold=0,
    )
    assert records["idrid/segmentation/test/IDRiD_55"].mask_valid == (True, True, True, True)


def test_missing_mask_file_is_none_not_blank(tmp_path):
    root = make_idrid(tmp_path / "idrid")
    record = next(
        r for r in idrid.index(root).records if r.id == "idrid/segmentation/train/IDRiD_02"
    )
    assert record.mask_valid == (True, False, True, False)
    assert record.masks[0] == _mask(root, "train", "IDRiD_02", "MA")
    assert record.masks[2] == _mask(root, "train", "IDRiD_02", "EX")


def test_grading_records_have_no_masks_and_segmentation_no_grade(tmp_path):
    result = idrid.index(make_idrid(tmp_path / "idrid"))
    for record in result.records:
        if record.part == "grading":
            assert record.mask_valid == (False,) * 4 and 0 <= record.grade <= 4
        else:
            assert record.grade == -1 and any(record.mask_valid)


def test_same_names_in_train_and_test_get_distinct_ids(tmp_path):
    result = load_index("idrid", make_idrid(tmp_path / "idrid"))  # runs check_unique_ids
    ids = [record.id for record in result.records]
    assert "idrid/grading/train/IDRiD_001" in ids and "idrid/grading/test/IDRiD_001" in ids
    assert len(ids) == len(set(ids)) == 8


def test_doubled_nesting_url_encoded_part_and_root_one_level_up(tmp_path):
    make_segmentation(tmp_path / "idrid" / "A.%20Segmentation" / SEG)
    make_grading(tmp_path / "idrid" / GRADING / GRADING)
    result = idrid.index(tmp_path)
    assert _counts(result) == {
        "grading/train": 3,
        "grading/test": 2,
        "segmentation/train": 2,
        "segmentation/test": 1,
    }
    record = next(r for r in result.records if r.id == "idrid/segmentation/train/IDRiD_01")
    assert record.image.parent.parent.parent.parent.name == "A.%20Segmentation"


def test_root_at_a_part_folder(tmp_path):
    make_idrid(tmp_path / "idrid")
    result = idrid.index(tmp_path / "idrid" / GRADING)
    assert _counts(result) == {"grading/train": 3, "grading/test": 2}


def test_either_part_may_be_absent(tmp_path):
    make_grading(tmp_path / "g" / GRADING)
    make_segmentation(tmp_path / "s" / SEG)
    assert _counts(idrid.index(tmp_path / "g")) == {"grading/train": 3, "grading/test": 2}
    assert _counts(idrid.index(tmp_path / "s")) == {"segmentation/train": 2, "segmentation/test": 1}


def test_absent_test_sets_are_skipped_with_a_warning(tmp_path, caplog):
    root = tmp_path / "idrid"
    make_grading(root / GRADING, splits=("train",))
    make_segmentation(root / SEG, splits=("train",))
    with caplog.at_level(logging.WARNING, logger="data.datasets.idrid"):
        result = idrid.index(root)
    assert _counts(result) == {"grading/train": 3, "segmentation/train": 2}
    assert "skipping grading/test" in caplog.text and "skipping segmentation/test" in caplog.text


def test_test_csv_without_test_images_is_skipped(tmp_path, caplog):
    root = tmp_path / "idrid"
    make_grading(root / GRADING, splits=("train",))
    write_text(root / GRADING / "2. Groundtruths" / CSVS["test"], _grading_csv(TEST_GRADES))
    with caplog.at_level(logging.WARNING, logger="data.datasets.idrid"):
        assert _counts(idrid.index(root)) == {"grading/train": 3}
    assert "b. Testing Set" in caplog.text


def test_case_and_extension_mismatches(tmp_path):
    root = tmp_path / "idrid"
    part = root / "b. disease grading"
    for seed, name in enumerate(TRAIN_GRADES):
        write_image(
            part / "1. ORIGINAL IMAGES" / "A. TRAINING SET" / f"{name.lower()}.JPG", seed=seed
        )
    rows = [
        f"{name}.jpg,{grade},0,," for name, grade in TRAIN_GRADES.items()
    ]  # extension in the CSV this time
    write_text(part / "2. groundtruths" / CSVS["train"].upper(), "\n".join([HEADER, *rows]))
    seg = root / "a. segmentation"
    write_image(seg / "1. Original Images" / "A. training set" / "IDRiD_01.JPEG")
    write_mask(
        seg / TRUTHS.lower() / "a. training set" / "1. MICROANEURYSMS" / "IDRiD_01_ma.TIFF",
        style="red",
    )
    write_mask(
        seg / TRUTHS.lower() / "a. training set" / "3. hard exudates" / "idrid_01_EX.tiff",
        style="palette",
    )
    result = idrid.index(root)
    assert _counts(result) == {"grading/train": 3, "segmentation/train": 1}
    assert [r.grade for r in result.records if r.part == "grading"] == [3, 0, 4]
    ids = [r.id for r in result.records if r.part == "grading"]
    assert ids == [
        "idrid/grading/train/idrid_001",
        "idrid/grading/train/idrid_002",
        "idrid/grading/train/idrid_003",
    ]
    record = next(r for r in result.records if r.part == "segmentation")
    assert record.id == "idrid/segmentation/train/IDRiD_01"
    assert record.mask_valid == (True, False, True, False)
    assert record.masks[0].name == "IDRiD_01_ma.TIFF" and record.masks[2].name == "idrid_01_EX.tiff"


def test_optic_disc_masks_are_ignored(tmp_path):
    root = make_idrid(tmp_path / "idrid")
    for record in idrid.index(root).records:
        assert all(path is None or not path.stem.endswith("_OD") for path in record.masks)


@pytest.mark.parametrize("style", ["red", "palette"])
def test_masks_read_as_any_channel_above_zero(tmp_path, style):
    """Pure red turns into 76 in grayscale; the loader's masks must still come out non-empty."""
    path = write_mask(tmp_path / f"IDRiD_01_MA_{style}.tif", style=style)
    np.testing.assert_array_equal(read_mask(path, threshold=0), lesion_array())


def test_segmentation_image_without_any_mask_is_skipped(tmp_path, caplog):
    root = make_idrid(tmp_path / "idrid")
    write_image(root / SEG / "1. Original Images" / SETS["train"] / "IDRiD_09.jpg")
    with caplog.at_level(logging.WARNING, logger="data.datasets.idrid"):
        result = idrid.index(root)
    assert _counts(result)["segmentation/train"] == 2
    assert "IDRiD_09.jpg has no lesion mask" in caplog.text


def test_mask_without_its_image_fails(tmp_path):
    root = make_idrid(tmp_path / "idrid")
    write_mask(_mask(root, "train", "IDRiD_001", "MA"))  # three-digit grading name: names disagree
    with pytest.raises(DataError, match=r"IDRiD_001_MA\.tif: lesion mask of image 'IDRiD_001'"):
        idrid.index(root)


def test_wrong_root_names_the_markers(tmp_path):
    write_image(tmp_path / "photos" / "IDRiD_001.jpg")
    with pytest.raises(DataError) as error:
        idrid.index(tmp_path)
    assert "2. All Segmentation Groundtruths" in str(error.value)
    assert "a. IDRiD_Disease Grading_Training Labels.csv" in str(error.value)


def test_missing_root_fails(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        idrid.index(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("7", "grade 7 out of range 0..4"),
        ("x", "grade 'x' is not an integer"),
        ("-1", "grade -1 out of range"),
    ],
)
def test_bad_grade_names_file_and_row(tmp_path, value, message):
    root = make_idrid(tmp_path / "idrid")
    csv_path = root / GRADING / "2. Groundtruths" / CSVS["train"]
    write_text(csv_path, "\n".join([HEADER, "IDRiD_001,3,2,,", f"IDRiD_002,{value},0,,", ""]))
    with pytest.raises(DataError) as error:
        idrid.index(root)
    assert (
        str(csv_path) in str(error.value)
        and "row 3" in str(error.value)
        and message in str(error.value)
    )


def test_missing_column_lists_the_columns_found(tmp_path):
    root = make_idrid(tmp_path / "idrid")
    csv_path = root / GRADING / "2. Groundtruths" / CSVS["train"]
    write_text(csv_path, "Image name,DR grade,Risk of macular edema ,,\nIDRiD_001,3,2,,\n")
    with pytest.raises(DataError) as error:
        idrid.index(root)
    assert "'Retinopathy grade'" in str(error.value)
    assert "found columns: 'Image name', 'DR grade', 'Risk of macular edema'" in str(error.value)


def test_listed_image_missing_names_file_row_and_image(tmp_path):
    root = make_idrid(tmp_path / "idrid")
    (root / GRADING / "1. Original Images" / SETS["train"] / "IDRiD_002.jpg").unlink()
    with pytest.raises(DataError) as error:
        idrid.index(root)
    assert f"{CSVS['train']} row 3: image 'IDRiD_002' not found" in str(error.value)


def test_empty_dataset_says_what_it_looked_for(tmp_path):
    root = tmp_path / "idrid"
    write_text(root / GRADING / "2. Groundtruths" / CSVS["train"], HEADER + "\n")
    (root / GRADING / "1. Original Images" / SETS["train"]).mkdir(parents=True)
    with pytest.raises(DataError, match="no usable images found under .*Training Labels.csv"):
        idrid.index(root)


def test_path_with_spaces_and_non_ascii(tmp_path):
    make_idrid(tmp_path / "Données rétine" / "IDRiD été 2018")
    result = idrid.index(tmp_path / "Données rétine")
    assert len(result.records) == 8
    assert all(record.image.is_file() for record in result.records)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real IDRiD training parts not found at {REAL}")
def test_real_idrid_training_parts():
    """The downscaled training parts of the release: counts recomputed from the CSV and mask folders."""
    result = idrid.index(REAL)
    assert _counts(result) == {"grading/train": 413, "segmentation/train": 54}
    grading = [record for record in result.records if record.part == "grading"]
    assert Counter(record.grade for record in grading) == {0: 134, 1: 20, 2: 136, 3: 74, 4: 49}
    segmentation = [record for record in result.records if record.part == "segmentation"]
    per_lesion = [sum(record.mask_valid[k] for record in segmentation) for k in range(4)]
    assert per_lesion == [54, 53, 54, 26]  # MA, HE, EX, SE
    assert [r.image.stem for r in segmentation if not r.mask_valid[1]] == ["IDRiD_43"]
    record = next(r for r in segmentation if r.image.stem == "IDRiD_01")
    mask = read_mask(record.masks[0], record.mask_threshold)
    assert mask.dtype == bool and mask.any()
    assert mask.shape == image_size(record.image)
