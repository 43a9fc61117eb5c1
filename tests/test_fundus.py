"""FOV mask and FOV crop on a real fundus (skimage's retina) and drawn discs."""

import cv2
import numpy as np
import pytest
import skimage.data

from data.fundus import crop_to_fov_square, fov_mask
from data.records import DataError


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    image = skimage.data.retina()
    return cv2.resize(image, (353, 353), interpolation=cv2.INTER_AREA)


def _disc_photo(
    height: int, width: int, centre: tuple[int, int], radius: int, seed: int = 0
) -> np.ndarray:
    """Dark JPEG-like noise outside, a bright textured disc inside (a fundus stand-in)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 14, size=(height, width, 3)).astype(np.uint8)
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, centre, radius, 1, -1)
    inside = rng.integers(90, 200, size=(height, width, 3)).astype(np.uint8)
    image[disc.astype(bool)] = inside[disc.astype(bool)]
    return image


def test_retina_fov_is_a_plausible_circle(retina):
    mask = fov_mask(retina)
    rows, cols = np.nonzero(mask)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert 0.6 < mask.mean() < 0.9
    assert abs(height - width) <= 0.03 * width
    assert mask.sum() / (height * width) == pytest.approx(np.pi / 4, abs=0.03)
    assert abs(rows.mean() - retina.shape[0] / 2) < 0.05 * retina.shape[0]


def test_fov_mask_ignores_dark_noise_and_fills_dark_lesions():
    image = _disc_photo(120, 160, (80, 60), 50)
    cv2.circle(image, (80, 60), 8, (5, 5, 5), -1)  # a black blob inside the field
    expected = np.zeros((120, 160), np.uint8)
    cv2.circle(expected, (80, 60), 50, 1, -1)
    mask = fov_mask(image)
    iou = (mask & expected.astype(bool)).sum() / (mask | expected.astype(bool)).sum()
    assert iou > 0.95
    assert mask[60, 80]


def test_fov_mask_accepts_float_images(retina):
    np.testing.assert_array_equal(fov_mask(retina.astype(np.float32) / 255.0), fov_mask(retina))


def test_fov_mask_rejects_non_rgb():
    with pytest.raises(DataError, match="HxWx3"):
        fov_mask(np.zeros((10, 10), np.uint8))


def test_crop_is_square_and_masks_follow_the_image():
    image = _disc_photo(100, 180, (120, 50), 40, seed=1)
    marker = np.zeros((100, 180), np.uint8)
    marker[50, 140] = 1  # 20 px right of the disc centre
    cropped, masks, fov = crop_to_fov_square(image, [marker, marker * 2])
    side = cropped.shape[0]
    assert cropped.shape == (side, side, 3) and fov.shape == (side, side)
    assert abs(side - 81) <= 2
    row, col = np.argwhere(masks[0])[0]
    assert (row, col) == tuple(np.argwhere(masks[1])[0])
    assert abs(row - side // 2) <= 1 and abs(col - (side // 2 + 20)) <= 1
    np.testing.assert_array_equal(cropped[row, col], image[50, 140])


def test_crop_pads_a_cut_off_field_to_a_centred_square():
    image = _disc_photo(
        80, 140, (70, 40), 60, seed=2
    )  # taller than the image: top and bottom cut off
    cropped, stacked, fov = crop_to_fov_square(image, np.zeros((3, 80, 140), bool), margin=0.0)
    assert cropped.shape[0] == cropped.shape[1] >= 119
    assert stacked.shape == (3, *fov.shape)
    assert not cropped[0].any() and not cropped[-1].any()  # zero padding above and below
    assert fov[cropped.shape[0] // 2].sum() > 0.9 * cropped.shape[0]


def test_crop_margin_grows_the_square():
    image = _disc_photo(100, 100, (50, 50), 30, seed=3)
    tight = crop_to_fov_square(image)[0].shape[0]
    loose = crop_to_fov_square(image, margin=0.1)[0].shape[0]
    assert loose == pytest.approx(tight * 1.2, abs=2)


def test_crop_without_field_raises():
    with pytest.raises(DataError, match="no field of view"):
        crop_to_fov_square(np.zeros((50, 50, 3), np.uint8))


def test_crop_rejects_mismatched_masks():
    with pytest.raises(DataError, match="mask shape"):
        crop_to_fov_square(_disc_photo(60, 60, (30, 30), 20), [np.zeros((10, 10))])


def _circle(height: int, width: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, centre, radius, 1, -1)
    return disc.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_fov_mask_on_grey_background():
    image = _disc_photo(120, 160, (80, 60), 50)
    outside = ~_circle(120, 160, (80, 60), 50)
    image[outside] = 128
    assert _iou(fov_mask(image), _circle(120, 160, (80, 60), 50)) > 0.95


def test_fov_mask_on_near_black_background_with_dark_periphery():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 25, size=(120, 160, 3)).astype(np.uint8)  # DDR: not exactly black
    disc = _circle(120, 160, (80, 60), 50)
    image[disc] = (70, 35, 15)  # a dim fundus
    assert _iou(fov_mask(image), disc) > 0.95


def test_fov_mask_ignores_white_frame_and_burned_in_text():
    image = _disc_photo(120, 160, (80, 60), 45)
    image[:8], image[-8:], image[:, :8], image[:, -8:] = 255, 255, 255, 255  # white frame
    image[10:16, 10:30] = (220, 20, 20)  # red text in the top-left corner
    mask = fov_mask(image)
    assert _iou(mask, _circle(120, 160, (80, 60), 45)) > 0.95
    assert not mask[:8].any() and not mask[12, 20]


def test_fov_mask_with_notch_and_mirrored_image():
    image = _disc_photo(120, 160, (80, 60), 50)
    cv2.rectangle(
        image, (128, 56), (134, 64), (150, 150, 150), -1
    )  # EyePACS-style notch on the rim
    disc = _circle(120, 160, (80, 60), 50)
    mask = fov_mask(image)
    assert _iou(mask, disc) > 0.93
    np.testing.assert_array_equal(fov_mask(image[:, ::-1].copy()), mask[:, ::-1])


def test_tightly_cropped_circle_is_cropped_to_a_padded_square():
    image = _disc_photo(100, 160, (80, 50), 70)  # the circle runs off the top and bottom (APTOS)
    cropped, _, fov = crop_to_fov_square(image)
    assert cropped.shape[0] == cropped.shape[1]
    assert abs(cropped.shape[0] - 141) <= 3
    assert not cropped[0].any() and not cropped[-1].any()  # black padding above and below
    assert fov[cropped.shape[0] // 2].mean() > 0.95
