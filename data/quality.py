"""Image-quality flags of a fundus photograph: is it fit to grade at all?

Measured on the field-of-view square (``data.fundus.crop_to_fov_square``) brought to at most
``QUALITY_SIDE`` pixels, so the numbers do not depend on the camera's resolution; a smaller
photograph is measured at its own size (downscaling only sharpens, so a small sharp photograph
is not called blurred). Each threshold was set on the 413 IDRiD training photographs (none of
them is flagged, measured at 128, 256 and 512 px) and on the same photographs made to fail; the
tests (``tests/test_quality.py``) make an image that raises each flag:

=================  =========================================================================
flag               raised when
=================  =========================================================================
``no_fov``         no field of view is found (a blank, black or non-fundus image)
``too_dark``       mean luminance inside the FOV < ``DARK_LUMINANCE`` = 25 (of 255); IDRiD's
                   darkest photograph is at 35.8, its 1st percentile 47.6
``overexposed``    more than ``OVEREXPOSED_FRACTION`` = 10 % of FOV pixels have luminance >=
                   ``SATURATED_LUMINANCE`` = 250; no IDRiD photograph has any such pixel
``blurred``        sharpness < ``BLUR_SHARPNESS`` = 0.5: 1000 x the variance of the Laplacian of
                   the green channel divided by its mean, inside the FOV shrunk by 5 % (the
                   rim is an edge of its own). IDRiD's least sharp photograph scores 0.81 at
                   512 px (0.57 at 256 px); a Gaussian blur of sigma 0.5 % (1 %) of the FOV
                   diameter brings 87 % (94 %) of them under the threshold
``fov_too_small``  the FOV covers less than ``MIN_FOV_FRACTION`` = 10 % of the image (IDRiD:
                   69-71 %, a full circle in a square: 79 %), or its square is narrower than
                   ``MIN_FOV_SIDE`` = 64 pixels in the file
=================  =========================================================================

A flagged photograph is listed as ``ungradable`` with its flags, never given a grade.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

QUALITY_SIDE = 512
DARK_LUMINANCE = 25.0
SATURATED_LUMINANCE = 250.0
OVEREXPOSED_FRACTION = 0.10
BLUR_SHARPNESS = 0.5
MIN_FOV_FRACTION = 0.10
MIN_FOV_SIDE = 64
RIM_FRACTION = 0.05
FLAGS = ("no_fov", "too_dark", "overexposed", "blurred", "fov_too_small")


@dataclass(frozen=True)
class Quality:
    """The measures of one photograph and the flags they raise (empty: fit to grade)."""

    flags: tuple[str, ...]
    luminance: float = float("nan")  # mean inside the FOV, 0-255
    saturated: float = float("nan")  # fraction of FOV pixels at or above SATURATED_LUMINANCE
    sharpness: float = float("nan")  # see the module docstring
    fov_fraction: float = 0.0  # FOV area / image area
    fov_side: int = 0  # side of the FOV square in the file's pixels

    @property
    def gradable(self) -> bool:
        return not self.flags


def no_fov() -> Quality:
    """The quality of a photograph in which no field of view was found."""
    return Quality(flags=("no_fov",))


def luminance(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an HxWx3 uint8 RGB image, float32 0-255."""
    rgb = image.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def sharpness(image: np.ndarray, fov: np.ndarray) -> float:
    """1000 x variance of the Laplacian of the mean-normalised green channel inside the shrunk FOV."""
    side = fov.shape[0]
    margin = max(1, round(RIM_FRACTION * side))
    inner = (
        cv2.erode(
            fov.astype(np.uint8),
            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2),
        )
        > 0
    )
    if np.count_nonzero(inner) < 16:
        return 0.0
    green = image[..., 1].astype(np.float32)
    mean = float(green[inner].mean())
    if mean <= 0:
        return 0.0
    laplacian = cv2.Laplacian(green / mean, cv2.CV_32F, ksize=1)
    return 1000.0 * float(laplacian[inner].var())


def assess(square: np.ndarray, fov: np.ndarray, fov_fraction: float, fov_side: int) -> Quality:
    """Flags of a FOV square (``SxSx3`` uint8, ``S <= QUALITY_SIDE``) with its ``SxS`` bool FOV.

    ``fov_fraction`` and ``fov_side`` describe the FOV in the whole photograph (area fraction,
    square side in the file's pixels).
    """
    if not fov.any():
        return no_fov()
    luma = luminance(square)[fov]
    measures = {
        "luminance": float(luma.mean()),
        "saturated": float(np.count_nonzero(luma >= SATURATED_LUMINANCE)) / luma.size,
        "sharpness": sharpness(square, fov),
        "fov_fraction": fov_fraction,
        "fov_side": int(fov_side),
    }
    flags = []
    if measures["luminance"] < DARK_LUMINANCE:
        flags.append("too_dark")
    if measures["saturated"] > OVEREXPOSED_FRACTION:
        flags.append("overexposed")
    if measures["sharpness"] < BLUR_SHARPNESS:
        flags.append("blurred")
    if fov_fraction < MIN_FOV_FRACTION or fov_side < MIN_FOV_SIDE:
        flags.append("fov_too_small")
    return Quality(flags=tuple(flags), **measures)
