"""DDR loader: headerless grading lists with the ungradable label 5, lesion masks under ``label/`` or
``segmentation label/``, all-zero masks as real "no lesion" masks, naming variants and errors."""

import logging
from collections import Counter
from pathlib import Path

import pytest
from dataset_fixtures import write_image, write_mask, write_text

from data.datasets import ddr, load_index
from data.datasets.base import Record, read_mask
from data.records import DataError

# split -> [(file name, label)]; 5 = ungradable. "-000"/"-001" are distinct images, not augmented copies.
GRADES = {
    "train": [
        ("007-0004-000.jpg", 0),
        ("007-0004-001.jpg", 2),
        ("20170323093305605.jpg", 4),
        ("007-0005-000.jpg", 5),
    ],
    "valid": [("008-0001-000.jpg", 1), ("008-0002-000.jpg", 3)],
    "test": [("009-0001-000.jpg", 2), ("009-0002-000.jpg", 5), ("009-0003-000.jpg", 5)],
}
SEGMENTATION = {
    "train": ["007-0004-000", "007-0006-000"],
    "valid": ["008-0001-000"],
    "test": ["009-0001-000"],
}
LABEL_FOLDER = {"train": "label", "valid": "segmentation label", "test": "label"}
LESIONS = ("MA", "HE", "EX", "SE")


def make_grading(base: Path, splits=("train", "valid", "test"), newline: str = "\n") -> None:
    for split in splits:
        for seed, (name, label) in enumerate(GRADES[split]):
            if label != 5:  # ungradable images need not exist: they are counted, never opened
                write_image(base / "DR_grading" / split / name, seed=seed)
        lines = [f"{name} {label}" for name, label in GRADES[split]]
        write_text(base / "DR_grading" / f"{split}.txt", newline.join(lines) + newline)


def make_segmentation(
    base: Path, splits=("train", "valid", "test"), label_folder: dict | None = None
) -> None:
    label_folder = label_folder or LABEL_FOLDER
    for split in splits:
        for seed, stem in enumerate(SEGMENTATION[split]):
            write_image(base / "lesion_segmentation" / split / "image" / f"{stem}.jpg", seed=seed)
            for lesion in LESIONS:
                box = None if lesion == "SE" else (10, 20, 14, 26)  # SE all zero: "no soft exudate"
                write_mask(
                    _mask(base, split, stem, lesion, label_folder[split]), box=box, style="binary"
                )


def make_ddr(root: Path) -> Path:
    base = root / "DDR-dataset"
    make_grading(base)
    make_segmentation(base)
    return base


def _mask(base: Path, split: str, stem: str, lesion: str, folder: str | None = None) -> Path:
    return (
        base
        / "lesion_segmentation"
        / split
        / (folder or LABEL_FOLDER[split])
        / lesion
        / f"{stem}.tif"
    )


def _counts(result) -> dict[str, int]:
    return dict(Counter(record.key for record in result.records))


FULL = {
    "grading/train": 3,
    "grading/valid": 2,
    "grading/test": 1,
    "segmentation/train": 2,
    "segmentation/valid": 1,
    "segmentation/test": 1,
}


def test_official_layout_exact_records(tmp_path):
    base = make_ddr(tmp_path)
    result = ddr.index(tmp_path)
    assert result.name == "ddr" and result.num_classes == 5
    assert _counts(result) == FULL
    assert dict(result.ungradable) == {"grading/train": 1, "grading/test": 2}
    records = {record.id: record for record in result.records}
    assert records["ddr/grading/train/007-0004-001"] == Record(
        id="ddr/grading/train/007-0004-001",
        image=base / "DR_grading" / "train" / "007-0004-001.jpg",
        grade=2,
        part="grading",
        split="train",
        patient="007-0004-001",
    )
    assert [r.grade for r in result.records if r.key == "grading/train"] == [0, 2, 4]
    assert [r.grade for r in result.records if r.key == "grading/valid"] == [1, 3]
    assert records["ddr/segmentation/valid/008-0001-000"] == Record(
        id="ddr/segmentation/valid/008-0001-000",
        image=base / "lesion_segmentation" / "valid" / "image" / "008-0001-000.jpg",
        grade=-1,
        part="segmentation",
        split="valid",
        patient="008-0001-000",
        masks=tuple(_mask(base, "valid", "008-0001-000", lesion) for lesion in LESIONS),
    )
    assert result.part_keys() == sorted(FULL)


def test_ungradable_label_5_is_excluded_and_counted_never_a_class(tmp_path):
    make_ddr(tmp_path)
    result = ddr.index(tmp_path)
    assert all(0 <= r.grade <= 4 for r in result.records if r.part == "grading")
    assert "ddr/grading/train/007-0005-000" not in {r.id for r in result.records}
    assert sum(result.ungradable.values()) == 3


def test_minus_000_suffix_is_kept(tmp_path):
    make_ddr(tmp_path)
    ids = {r.id for r in ddr.index(tmp_path).records}
    assert {"ddr/grading/train/007-0004-000", "ddr/grading/train/007-0004-001"} <= ids


def test_all_zero_mask_is_a_valid_no_lesion_mask(tmp_path):
    make_ddr(tmp_path)
    record = next(
        r for r in ddr.index(tmp_path).records if r.id == "ddr/segmentation/train/007-0004-000"
    )
    assert record.mask_valid == (True, True, True, True)
    assert not read_mask(record.masks[3], record.mask_threshold).any()  # SE: file exists, no lesion
    assert read_mask(record.masks[0], record.mask_threshold).sum() == 4 * 6


def test_missing_mask_file_is_none(tmp_path):
    base = make_ddr(tmp_path)
    _mask(base, "test", "009-0001-000", "HE").unlink()
    record = next(
        r for r in ddr.index(tmp_path).records if r.id == "ddr/segmentation/test/009-0001-000"
    )
    assert record.mask_valid == (True, False, True, True)


def test_either_label_folder_name_in_every_split(tmp_path):
    base = tmp_path / "DDR-dataset"
    swapped = {"train": "segmentation label", "valid": "label", "test": "Segmentation Label"}
    make_segmentation(base, label_folder=swapped)
    result = ddr.index(tmp_path)
    assert _counts(result) == {
        "segmentation/train": 2,
        "segmentation/valid": 1,
        "segmentation/test": 1,
    }
    assert all(r.mask_valid == (True,) * 4 for r in result.records)


def test_extra_nesting_level_and_root_at_the_dataset(tmp_path):
    make_ddr(tmp_path / "DDR-dataset")  # DDR-dataset/DDR-dataset/...
    assert _counts(ddr.index(tmp_path)) == FULL
    assert _counts(ddr.index(tmp_path / "DDR-dataset" / "DDR-dataset")) == FULL


def test_either_part_may_be_absent(tmp_path):
    make_grading(tmp_path / "g")
    make_segmentation(tmp_path / "s")
    assert _counts(ddr.index(tmp_path / "g")) == {
        k: v for k, v in FULL.items() if k.startswith("grading")
    }
    assert _counts(ddr.index(tmp_path / "s")) == {
        k: v for k, v in FULL.items() if k.startswith("segmentation")
    }


def test_missing_split_is_skipped_with_a_warning(tmp_path, caplog):
    base = tmp_path / "DDR-dataset"
    make_grading(base, splits=("train", "test"))
    write_text(base / "DR_grading" / "valid.txt", "008-0001-000.jpg 1\n")  # list without its folder
    make_segmentation(base, splits=("train",))
    (base / "lesion_segmentation" / "test" / "image").mkdir(parents=True)  # images without masks
    with caplog.at_level(logging.WARNING, logger="data.datasets.ddr"):
        result = ddr.index(tmp_path)
    assert _counts(result) == {"grading/train": 3, "grading/test": 1, "segmentation/train": 2}
    assert "skipping grading/valid: valid/ not found" in caplog.text
    assert "skipping segmentation/valid" in caplog.text
    assert "skipping segmentation/test: label/ or segmentation label/ not found" in caplog.text


def test_case_extension_and_line_ending_variants(tmp_path):
    base = tmp_path / "ddr"
    write_image(base / "dr_grading" / "Train" / "007-0004-000.JPG")
    write_image(base / "dr_grading" / "Train" / "007-0004-001.jpeg")
    write_text(
        base / "dr_grading" / "TRAIN.txt", "007-0004-000.jpg 3\r\n007-0004-001.JPG  1 \r\n\r\n"
    )
    write_image(base / "Lesion_Segmentation" / "train" / "Image" / "a1.JPG")
    write_mask(base / "Lesion_Segmentation" / "train" / "Label" / "ma" / "A1.TIF", style="ones")
    result = ddr.index(tmp_path)
    assert [(r.id, r.grade) for r in result.records] == [
        ("ddr/grading/train/007-0004-000", 3),
        ("ddr/grading/train/007-0004-001", 1),
        ("ddr/segmentation/train/a1", -1),
    ]
    mask = result.records[2].masks[0]
    assert mask.name == "A1.TIF" and result.records[2].mask_valid == (True, False, False, False)
    assert read_mask(mask).sum() == 24


def test_segmentation_image_without_any_mask_is_skipped(tmp_path, caplog):
    base = make_ddr(tmp_path)
    write_image(base / "lesion_segmentation" / "train" / "image" / "lonely.jpg")
    with caplog.at_level(logging.WARNING, logger="data.datasets.ddr"):
        assert _counts(ddr.index(tmp_path)) == FULL
    assert "lonely.jpg has no lesion mask" in caplog.text


def test_mask_without_its_image_fails(tmp_path):
    base = make_ddr(tmp_path)
    write_mask(_mask(base, "train", "stray", "EX"))
    with pytest.raises(DataError, match=r"stray\.tif: mask of image 'stray'"):
        ddr.index(tmp_path)


def test_wrong_root_names_the_markers(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    with pytest.raises(DataError) as error:
        ddr.index(tmp_path)
    assert "'DR_grading' or 'lesion_segmentation'" in str(error.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("008-0002-000.jpg 6", "grade 6 out of range 0..4"),
        ("008-0002-000.jpg x", "grade 'x' is not an integer"),
        ("008-0002-000.jpg", "grade '' is not an integer"),  # a line without its label column
    ],
)
def test_bad_label_names_file_and_row(tmp_path, line, message):
    base = make_ddr(tmp_path)
    labels = base / "DR_grading" / "valid.txt"
    write_text(labels, f"008-0001-000.jpg 1\n{line}\n")
    with pytest.raises(DataError) as error:
        ddr.index(tmp_path)
    assert f"{labels} row 2: {message}" in str(error.value)


def test_listed_image_missing_names_file_row_and_image(tmp_path):
    base = make_ddr(tmp_path)
    (base / "DR_grading" / "test" / "009-0001-000.jpg").unlink()
    with pytest.raises(DataError) as error:
        ddr.index(tmp_path)
    assert "test.txt row 1: image '009-0001-000.jpg' not found" in str(error.value)


def test_only_ungradable_images_is_an_empty_dataset(tmp_path):
    base = tmp_path / "DDR-dataset" / "DR_grading"
    (base / "train").mkdir(parents=True)
    write_text(base / "train.txt", "a.jpg 5\nb.jpg 5\n")
    with pytest.raises(DataError, match="no usable images found under"):
        ddr.index(tmp_path)


def test_path_with_spaces_and_non_ascii(tmp_path):
    root = tmp_path / "données DDR ü"
    make_ddr(root)
    result = load_index("ddr", root)
    assert _counts(result) == FULL
    assert all(record.image.is_file() for record in result.records)
    assert all(
        path.is_file() for record in result.records for path in record.masks if path is not None
    )
