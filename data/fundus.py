"""Fundus preprocessing: field-of-view (FOV) mask, crop to a centred FOV square, Ben Graham normalisation.

Offline preprocessing in numpy/cv2, not the training hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from data.records import DataError

BORDER_STRIP_FRACTION = 0.04  # width of the left/right strips that estimate the background level
THRESHOLD_FRACTION = 0.15  # threshold sits this far from the background level towards the FOV level
MIN_CONTRAST = (
    12.0  # on a 0-255 scale; below this above the background nothing counts as FOV (JPEG noise)
)


def _to_uint8_scale(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8, or float in [0,1], as float32 on a 0-255 scale."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"expected an HxWx3 image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    return image.astype(np.float32) * 255.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected foreground component of a bool mask."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border (dark lesions inside the FOV)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood == 0
    return (padded.astype(bool) | holes)[1:-1, 1:-1]


def fov_mask(image: np.ndarray) -> np.ndarray:
    """Circular field of view of a fundus photograph as an HxW bool mask.

    image: HxWx3 uint8, or float in [0,1]. Thresholds the blurred channel maximum between the
    background level (median of the left/right border strips, which are outside the FOV on almost
    every camera) and the FOV level, keeps the largest component and fills its holes.
    """
    brightness = _to_uint8_scale(image).max(axis=2)
    height, width = brightness.shape
    blur = max(3, (min(height, width) // 100) | 1)
    brightness = cv2.GaussianBlur(brightness, (blur, blur), 0)
    strip = max(1, round(width * BORDER_STRIP_FRACTION))
    background = float(
        np.median(np.concatenate([brightness[:, :strip], brightness[:, -strip:]], axis=1))
    )
    foreground = float(np.percentile(brightness, 90))
    threshold = background + max(MIN_CONTRAST, THRESHOLD_FRACTION * (foreground - background))
    mask = _largest_component(brightness > threshold)
    return _fill_holes(mask) if mask.any() else mask


def _square_box(fov: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Bounding box ``(top, left, side, side)`` of the FOV, grown by ``margin`` of its size, as a square."""
    rows = np.flatnonzero(fov.any(axis=1))
    cols = np.flatnonzero(fov.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = round(max(bottom - top, right - left) * (1.0 + 2.0 * margin))
    centre_y, centre_x = (top + bottom) / 2.0, (left + right) / 2.0
    return round(centre_y - side / 2.0), round(centre_x - side / 2.0), side, side


def _crop_pad(array: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """Cut ``side x side`` at (top, left) from an HxW(xC) array, zero-filling whatever lies outside it."""
    out = np.zeros((side, side, *array.shape[2:]), dtype=array.dtype)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom = min(top + side, array.shape[0])
    src_right = min(left + side, array.shape[1])
    out[src_top - top : src_bottom - top, src_left - left : src_right - left] = array[
        src_top:src_bottom, src_left:src_right
    ]
    return out


def crop_to_fov_square(
    image: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray | None = None,
    margin: float = 0.0,
) -> tuple[np.ndarray, list[np.ndarray] | np.ndarray | None, np.ndarray]:
    """Crop image (and masks identically) to the FOV bounding box, zero-padded to a centred square.

    image: HxWx3; masks: list of HxW arrays or a ``[K,H,W]`` array; margin: extra border as a fraction
    of the FOV size. Returns ``(image, masks, fov)`` with side ``S``: ``SxSx3``, masks like the input
    (``[K,S,S]`` or a list of SxS), and the SxS bool FOV mask. Raises DataError if no FOV is found.
    """
    fov = fov_mask(image)
    if not fov.any():
        raise DataError(f"no field of view found in image of shape {image.shape}")
    top, left, side, _ = _square_box(fov, margin)
    cropped_masks: list[np.ndarray] | np.ndarray | None = None
    if masks is not None:
        for mask in masks:
            if mask.shape != image.shape[:2]:
                raise DataError(
                    f"mask shape {mask.shape} does not match image shape {image.shape[:2]}"
                )
        if isinstance(masks, np.ndarray):
            stacked = _crop_pad(np.moveaxis(masks, 0, -1), top, left, side)
            cropped_masks = np.ascontiguousarray(np.moveaxis(stacked, -1, 0))
        else:
            cropped_masks = [_crop_pad(mask, top, left, side) for mask in masks]
    return _crop_pad(image, top, left, side), cropped_masks, _crop_pad(fov, top, left, side)


def ben_graham(image: np.ndarray, sigma: float, fov: np.ndarray | None = None) -> np.ndarray:
    """Kaggle-2015 local-contrast normalisation ``4*img - 4*gaussian(img, sigma) + 128``, zero outside the FOV.

    Evens out illumination across fundi from different cameras. image: HxWx3 uint8 (or float in [0,1]);
    returns HxWx3 uint8. The FOV is computed when not given.
    """
    if sigma <= 0:
        raise DataError(f"sigma must be > 0, got {sigma}")
    pixels = _to_uint8_scale(image)
    fov = fov_mask(image) if fov is None else fov
    blurred = cv2.GaussianBlur(pixels, (0, 0), sigma)
    normalised = np.clip(4.0 * pixels - 4.0 * blurred + 128.0, 0, 255).astype(np.uint8)
    normalised[~fov] = 0
    return normalised
