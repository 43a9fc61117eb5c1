"""Fundus preprocessing: field-of-view (FOV) mask, crop to a centred FOV square.

Offline preprocessing in numpy/cv2, not the training hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from data.records import DataError

CORNER_FRACTION = 0.06  # side of the corner patches that estimate the background colour
THRESHOLD_FRACTION = (
    0.15  # threshold sits this far from the background towards the FOV's typical distance
)
MIN_CONTRAST = (
    12.0  # on a 0-255 scale; a colour closer than this to the background is background (JPEG noise)
)
WHITE_LEVEL = 225  # pixels whose every channel exceeds this and that touch the border form a frame
DETECTION_SIDE = (
    640  # the FOV is found on a copy whose longer side is at most this (fast on 4288x2848)
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


def _clear_bright_frame(pixels: np.ndarray) -> np.ndarray:
    """Black out near-white regions touching the image border (DeepDRiD's white frames with burned-in text)."""
    white = pixels.min(axis=2) > WHITE_LEVEL
    if not white.any():
        return pixels
    _, labels = cv2.connectedComponents(white.astype(np.uint8), connectivity=8)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    frame = np.isin(labels, border[border > 0])
    if not frame.any():
        return pixels
    cleared = pixels.copy()
    cleared[frame] = 0.0
    return cleared


def _background_colour(pixels: np.ndarray) -> np.ndarray:
    """Median colour of the four corner patches, then the per-channel median over corners.

    The corners lie outside the circular field on every camera, including tightly cropped circles
    whose FOV touches the top and bottom; one odd corner (a burned-in label) does not move it.
    """
    height, width = pixels.shape[:2]
    patch_h, patch_w = (
        max(1, round(height * CORNER_FRACTION)),
        max(1, round(width * CORNER_FRACTION)),
    )
    corners = [
        pixels[:patch_h, :patch_w],
        pixels[:patch_h, -patch_w:],
        pixels[-patch_h:, :patch_w],
        pixels[-patch_h:, -patch_w:],
    ]
    medians = np.stack([np.median(corner.reshape(-1, 3), axis=0) for corner in corners])
    return np.median(medians, axis=0)


def _fov_mask_at_native_size(pixels: np.ndarray) -> np.ndarray:
    pixels = _clear_bright_frame(pixels)
    distance = np.abs(pixels - _background_colour(pixels)).max(axis=2)
    height, width = distance.shape
    blur = max(3, (min(height, width) // 100) | 1)
    distance = cv2.GaussianBlur(distance, (blur, blur), 0)
    threshold = max(MIN_CONTRAST, THRESHOLD_FRACTION * float(np.percentile(distance, 90)))
    mask = _largest_component(distance > threshold)
    return _fill_holes(mask) if mask.any() else mask


def fov_mask(image: np.ndarray) -> np.ndarray:
    """Circular field of view of a fundus photograph as an HxW bool mask.

    image: HxWx3 uint8, or float in [0,1]. Near-white frames touching the border are blacked out
    first; the background colour is estimated from the corners (black, near-black or grey), and the
    FOV is where the blurred colour distance from it exceeds a threshold between the background and
    the typical FOV distance. The largest component is kept and its holes (dark lesions) filled, so
    a notch on the rim or an inverted (mirrored) image makes no difference. Large images are
    analysed at ``DETECTION_SIDE`` and the mask is scaled back (about 10x faster on 4288x2848).
    """
    pixels = _to_uint8_scale(image)
    height, width = pixels.shape[:2]
    factor = DETECTION_SIDE / max(height, width)
    if factor >= 1:
        return _fov_mask_at_native_size(pixels)
    small = cv2.resize(
        pixels, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA
    )
    mask = _fov_mask_at_native_size(small).astype(np.float32)
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5


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
