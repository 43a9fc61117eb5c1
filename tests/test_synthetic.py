"""The embedded synthetic dataset: grade rule, determinism, masks, schema, arguments, CLI, backgrounds."""

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.records import LESIONS, SAMPLE_KEYS, DataError
from data.synthetic import (
    BACKGROUND_DIR,
    BACKGROUND_IDRID_IDS,
    SEVERE_HE_PER_QUADRANT,
    SyntheticFundus,
    icdr_grade,
    load_backgrounds,
    main,
    pool,
    render_background,
    render_sample,
)

REPO = Path(__file__).resolve().parents[1]
N = SEVERE_HE_PER_QUADRANT


def _one_hot(grade: int) -> list[float]:
    return [1.0 if g == grade else 0.0 for g in range(5)]


def _rule_grade(sample) -> int:
    lesions = {name: sample.quadrant_counts[name] for name in LESIONS}
    return icdr_grade(lesions, sample.lesion_counts["NV"] + sample.lesion_counts["PRH"] > 0)


# --- grade rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "proliferative", "grade"),
    [
        ({}, False, 0),
        ({"MA": (0, 0, 0, 0)}, False, 0),
        ({"MA": (1, 0, 0, 0)}, False, 1),
        ({"MA": (3, 0, 2, 0), "HE": (0, 0, 1, 0)}, False, 2),
        ({"EX": (0, 4, 0, 0)}, False, 2),
        ({"SE": (0, 0, 0, 1)}, False, 2),
        ({"HE": (N, N, N, N - 1)}, False, 2),
        ({"HE": (4 * N, 4 * N, 4 * N, 0)}, False, 2),
        ({"HE": (N, N, N, N)}, False, 3),
        ({"HE": (N + 9, N, N + 1, N)}, False, 3),
        ({"HE": (N, N, N, N)}, True, 4),
        ({}, True, 4),
    ],
)
def test_icdr_rule(counts, proliferative, grade):
    assert icdr_grade(counts, proliferative) == grade


@pytest.mark.parametrize("counts", [{"HE": (1, 2, 3)}, {"MA": (0, -1, 0, 0)}, {"NV": (1, 0, 0, 0)}])
def test_icdr_rule_rejects_bad_counts(counts):
    with pytest.raises(DataError, match="quadrant_counts"):
        icdr_grade(counts, False)


def test_every_label_follows_the_rule_from_rendered_counts():
    for index in range(40):
        sample = render_sample(5, "train", index, 64)
        assert sample.grade == _rule_grade(sample)
        assert sample.lesion_counts == {name: sum(q) for name, q in sample.quadrant_counts.items()}


@pytest.mark.parametrize("grade", range(5))
def test_target_grade_is_honoured(grade):
    grades = [
        render_sample(1, "train", index, 64, class_mix=_one_hot(grade)).grade for index in range(8)
    ]
    assert grades == [grade] * 8


def test_balanced_mix_gives_every_grade():
    grades = SyntheticFundus("train", 40, 64, 4, seed=2, cache=False).grades
    counts = np.bincount(grades, minlength=5)
    assert counts.min() >= 3, counts


# --- determinism ----------------------------------------------------------------------------------


def _digest(sample) -> str:
    return hashlib.sha256(
        sample.image.tobytes() + sample.masks.tobytes() + sample.fov.tobytes()
    ).hexdigest()


def test_same_arguments_give_identical_samples():
    first, second = render_sample(0, "train", 3, 64), render_sample(0, "train", 3, 64)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.masks, second.masks)
    np.testing.assert_array_equal(first.fov, second.fov)
    assert (first.grade, first.lesion_counts, first.id) == (
        second.grade,
        second.lesion_counts,
        second.id,
    )


@pytest.mark.parametrize(
    ("seed", "split", "index"), [(0, "train", 4), (0, "val", 3), (0, "test", 3), (1, "train", 3)]
)
def test_other_index_split_or_seed_differ(seed, split, index):
    assert not np.array_equal(
        render_sample(0, "train", 3, 64).image, render_sample(seed, split, index, 64).image
    )


def test_access_order_does_not_matter():
    forward, backward = SyntheticFundus("val", 5, 64, 4), SyntheticFundus("val", 5, 64, 4)
    ahead = [forward[i] for i in range(5)]
    behind = [backward[i] for i in reversed(range(5))][::-1]
    for a, b in zip(ahead, behind):
        assert a["id"] == b["id"]
        for key in ("lr", "hr", "masks", "fov", "grade"):
            assert torch.equal(a[key], b[key])


def test_same_sample_in_a_fresh_process():
    code = (
        "import hashlib; from data.synthetic import render_sample; s = render_sample(0, 'test', 7, 64); "
        "print(hashlib.sha256(s.image.tobytes() + s.masks.tobytes() + s.fov.tobytes()).hexdigest())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == _digest(render_sample(0, "test", 7, 64))


def test_materialize_in_a_process_pool_matches_rendering_here(monkeypatch):
    monkeypatch.setattr(pool, "POOL_MIN_JOBS", 2)
    pooled = SyntheticFundus("train", 6, 64, 4, seed=3)
    pooled.materialize()
    plain = SyntheticFundus("train", 6, 64, 4, seed=3, cache=False)
    for index in range(6):
        for key in ("lr", "hr", "masks", "fov", "grade"):
            assert torch.equal(pooled[index][key], plain[index][key])
    assert pooled.grades == plain.grades


# --- masks and rendering --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128])
def test_pixels_outside_masks_equal_the_lesion_free_background(size):
    for index in range(12):
        sample = render_sample(4, "train", index, size, class_mix=[0, 1, 1, 1, 1])
        background, fov, _ = render_background(4, "train", index, size)
        np.testing.assert_array_equal(fov, sample.fov)
        changed = (sample.image != background).any(axis=-1)
        assert changed.any()
        assert not (changed & ~sample.masks.any(axis=0) & ~sample.new_vessels).any()
        assert not (sample.masks & ~sample.fov).any()


def test_new_vessels_are_drawn_outside_the_lesion_masks():
    seen = 0
    for index in range(16):
        sample = render_sample(6, "train", index, 128, class_mix=_one_hot(4))
        background, _, _ = render_background(6, "train", index, 128)
        changed = (sample.image != background).any(axis=-1)
        if sample.lesion_counts["NV"] == 0:
            assert not sample.new_vessels.any()
            continue
        seen += 1
        assert (changed & sample.new_vessels & ~sample.masks.any(axis=0)).any()
        assert not (sample.new_vessels & ~changed).any()
    assert seen >= 4


@pytest.mark.parametrize("size", [64, 128])
def test_every_counted_lesion_type_has_a_mask(size):
    for index in range(25):
        sample = render_sample(7, "train", index, size)
        for channel, name in enumerate(LESIONS):
            if sample.lesion_counts[name]:
                assert sample.masks[channel].any(), (index, name)
        if sample.lesion_counts["PRH"]:
            assert sample.masks[LESIONS.index("HE")].any()


def test_lesions_scale_with_the_image():
    """Same seed at two sizes: lesion area as a fraction of the FOV stays about the same."""
    small = render_sample(8, "train", 1, 128, class_mix=_one_hot(3))
    large = render_sample(8, "train", 1, 256, class_mix=_one_hot(3))
    fraction = [s.masks[LESIONS.index("HE")].sum() / s.fov.sum() for s in (small, large)]
    assert fraction[0] == pytest.approx(fraction[1], rel=0.35)


def test_microaneurysms_stay_tiny():
    fov_area = total = count = 0
    for index in range(6):
        sample = render_sample(9, "train", index, 256, class_mix=_one_hot(1))
        total += sample.masks[LESIONS.index("MA")].sum()
        count += sample.lesion_counts["MA"]
        fov_area = sample.fov.sum()
    diameter = 2 * np.sqrt(fov_area / np.pi)
    assert count > 0
    assert total / count < np.pi * (0.012 * diameter) ** 2


def test_both_eyes_and_varied_backgrounds_occur():
    anatomies = [render_background(0, "train", index, 64)[2] for index in range(24)]
    sides = {bool(a.temporal[0] > 0) for a in anatomies}
    assert sides == {True, False}


# --- dataset --------------------------------------------------------------------------------------


def test_sample_matches_the_records_schema():
    dataset = SyntheticFundus("train", 3, 64, 4, seed=1, noise_var=0.001, blur_kernel=3)
    sample = dataset[2]
    assert set(sample) == SAMPLE_KEYS
    assert (
        sample["hr"].dtype
        == sample["lr"].dtype
        == sample["masks"].dtype
        == sample["fov"].dtype
        == torch.float32
    )
    assert sample["hr"].shape == (3, 64, 64) and sample["lr"].shape == (3, 16, 16)
    assert sample["masks"].shape == (4, 64, 64) and sample["fov"].shape == (1, 64, 64)
    assert sample["mask_valid"].dtype == torch.bool and sample["mask_valid"].all()
    assert sample["grade"].dtype == torch.int64 and sample["grade"].ndim == 0
    for key in ("hr", "lr"):
        assert 0 <= sample[key].min() and sample[key].max() <= 1
    for key in ("masks", "fov"):
        assert set(sample[key].unique().tolist()) <= {0.0, 1.0}
    rendered = render_sample(1, "train", 2, 64)
    assert sample["id"] == rendered.id == "synthetic-train-00002"
    assert torch.equal(
        sample["hr"], torch.from_numpy(rendered.image).permute(2, 0, 1).float() / 255
    )
    assert torch.equal(sample["masks"].bool(), torch.from_numpy(rendered.masks))
    assert int(sample["grade"]) == rendered.grade


def test_lr_noise_is_seeded_per_sample():
    noisy = SyntheticFundus("train", 2, 64, 2, noise_var=0.01)
    again = SyntheticFundus("train", 2, 64, 2, noise_var=0.01)
    clean = SyntheticFundus("train", 2, 64, 2)
    assert torch.equal(noisy[0]["lr"], again[0]["lr"])
    assert not torch.equal(noisy[0]["lr"], clean[0]["lr"])
    assert torch.equal(noisy[0]["hr"], clean[0]["hr"])


def test_index_out_of_range():
    with pytest.raises(IndexError):
        SyntheticFundus("train", 2, 64, 4)[2]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"split": "dev"}, "split"),
        ({"n": 0}, "n"),
        ({"hr_size": 0}, "hr_size"),
        ({"hr_size": 66}, "hr_size"),
        ({"scale": 3}, "scale"),
        ({"class_mix": [1, 1, 1]}, "class_mix"),
        ({"class_mix": [1, -1, 1, 1, 1]}, "class_mix"),
        ({"backgrounds": "none"}, "backgrounds"),
        ({"seed": -1}, "seed"),
        ({"blur_kernel": 4}, "blur_kernel"),
        ({"noise_var": -1.0}, "noise_var"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    arguments = {"split": "train", "n": 4, "hr_size": 64, "scale": 4, **kwargs}
    with pytest.raises(DataError, match=argument):
        SyntheticFundus(**arguments)


def test_render_sample_rejects_bad_arguments():
    with pytest.raises(DataError, match="split"):
        render_sample(0, "dev", 0, 64)
    with pytest.raises(DataError, match="size"):
        render_sample(0, "train", 0, 4)
    with pytest.raises(DataError, match="backgrounds"):
        render_sample(0, "train", 0, 64, backgrounds="mine")


def test_retina_only_backgrounds():
    assert len(load_backgrounds("retina")) == 1
    sample = SyntheticFundus("train", 1, 64, 4, backgrounds="retina")[0]
    assert sample["hr"].shape == (3, 64, 64)


# --- backgrounds ----------------------------------------------------------------------------------


def test_backgrounds_ship_with_the_repository(monkeypatch):
    assert 5 <= len(BACKGROUND_IDRID_IDS) <= 8
    assert BACKGROUND_DIR.is_relative_to(REPO)
    readme = (BACKGROUND_DIR / "README.md").read_text()
    for image_id in BACKGROUND_IDRID_IDS:
        assert image_id in readme
    read = []
    original = cv2.imread
    monkeypatch.setattr(
        cv2, "imread", lambda path, *args: read.append(Path(path)) or original(path, *args)
    )
    load_backgrounds.cache_clear()
    try:
        backgrounds = load_backgrounds("all")
    finally:
        load_backgrounds.cache_clear()
    assert len(backgrounds) == 1 + len(BACKGROUND_IDRID_IDS)
    assert read and all(path.is_relative_to(BACKGROUND_DIR) for path in read)


def test_background_anatomy_is_plausible():
    for background in load_backgrounds("all"):
        disc, fovea = np.array(background.disc), np.array(background.fovea)
        assert 0.25 < np.linalg.norm(fovea - disc) < 0.45, background.name
        assert abs(fovea[0] - 0.5) < 0.15 and abs(fovea[1] - 0.5) < 0.15, background.name
        assert background.fov[
            int(disc[1] * background.fov.shape[0]), int(disc[0] * background.fov.shape[1])
        ]


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_writes_files_and_refuses_to_overwrite(tmp_path, capsys):
    arguments = [
        "--out",
        str(tmp_path),
        "--n",
        "3",
        "--size",
        "64",
        "--scale",
        "4",
        "--split",
        "val",
    ]
    assert main(arguments) == 0
    with (tmp_path / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == [f"synthetic-val-{i:05d}" for i in range(3)]
    assert set(rows[0]) >= {"id", "grade", "image", *LESIONS}
    for index, row in enumerate(rows):
        rendered = render_sample(0, "val", index, 64)
        assert int(row["grade"]) == rendered.grade
        image = cv2.imread(str(tmp_path / row["image"]))
        np.testing.assert_array_equal(image[..., ::-1], rendered.image)
        for channel, name in enumerate(LESIONS):
            mask = cv2.imread(
                str(tmp_path / "masks" / f"{row['id']}_{name}.png"), cv2.IMREAD_UNCHANGED
            )
            np.testing.assert_array_equal(mask > 0, rendered.masks[channel])
            assert set(np.unique(mask)) <= {0, 255}
        assert (tmp_path / "fov" / f"{row['id']}.png").is_file()
    capsys.readouterr()
    assert main(arguments) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main([*arguments, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "extra",
    [
        ["--n", "0"],
        ["--size", "66"],
        ["--split", "dev"],
        ["--class-mix", "1,2"],
        ["--class-mix", "a"],
        ["--bogus"],
    ],
)
def test_cli_bad_arguments_print_one_line(tmp_path, capsys, extra):
    assert main(["--out", str(tmp_path), "--n", "1", "--size", "64", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err
    assert not (tmp_path / "labels.csv").exists()
