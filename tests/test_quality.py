"""Each quality flag on a photograph made to raise it, and none on clean photographs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from data.photo import prepare_photo
from data.quality import BLUR_SHARPNESS, DARK_LUMINANCE, MIN_FOV_FRACTION, OVEREXPOSED_FRACTION
from data.synthetic import render_sample


@pytest.fixture(scope="module")
def render() -> np.ndarray:
    return render_sample(0, "test", 0, 512).image


def _flags(image: np.ndarray) -> tuple[str, ...]:
    return prepare_photo(image, 64).quality.flags


def test_clean_photographs_raise_no_flag(render):
    retina = skimage.data.retina()
    for image in (render, retina, cv2.resize(retina, (128, 128), interpolation=cv2.INTER_AREA)):
        quality = prepare_photo(image, 64).quality
        assert quality.flags == () and quality.gradable, quality


def test_too_dark(render):
    dark = (render.astype(np.float32) * 0.2).astype(np.uint8)
    quality = prepare_photo(dark, 64).quality
    assert quality.luminance < DARK_LUMINANCE and quality.flags == ("too_dark",)


def test_overexposed(render):
    bright = np.clip(render.astype(np.float32) * 3.5, 0, 255).astype(np.uint8)
    quality = prepare_photo(bright, 64).quality
    assert (
        quality.saturated > OVEREXPOSED_FRACTION
        and "overexposed" in quality.flags
        and "too_dark" not in quality.flags
    )


def test_blurred(render):
    blurred = cv2.GaussianBlur(
        render, (0, 0), 0.01 * render.shape[0]
    )  # sigma 1 % of the FOV diameter
    quality = prepare_photo(blurred, 64).quality
    assert quality.sharpness < BLUR_SHARPNESS and quality.flags == ("blurred",)
    assert prepare_photo(render, 64).quality.sharpness > 4 * BLUR_SHARPNESS


def test_fov_too_small(render):
    canvas = np.zeros((1200, 1200, 3), np.uint8)
    canvas[500:628, 500:628] = cv2.resize(render, (128, 128), interpolation=cv2.INTER_AREA)
    quality = prepare_photo(canvas, 64).quality
    assert quality.fov_fraction < MIN_FOV_FRACTION and quality.flags == ("fov_too_small",)
    tiny = cv2.resize(
        render, (48, 48), interpolation=cv2.INTER_AREA
    )  # fills its frame, but 48 px across
    assert "fov_too_small" in _flags(tiny)


@pytest.mark.parametrize("fill", [0, 128, 255])
def test_no_fov(fill):
    prepared = prepare_photo(np.full((120, 160, 3), fill, np.uint8), 64)
    assert (
        prepared.hr is None
        and prepared.quality.flags == ("no_fov",)
        and not prepared.quality.gradable
    )
