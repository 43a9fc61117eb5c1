"""Background fundi of the synthetic dataset: loading, disc/fovea estimation and per-sample augmentation.

Backgrounds are real normal fundi: ``skimage.data.retina()`` (CC0) and a few grade-0 IDRiD training images
shipped in ``data/backgrounds/`` (CC BY 4.0, see its README). Each sample draws one and augments it
(mirroring, rotation, scale, shift, brightness/contrast/gamma/colour).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from data.fundus import crop_to_fov_square
from data.records import DataError

log = logging.getLogger(__name__)

BACKGROUND_CHOICES: tuple[str, ...] = ("all", "retina")
BACKGROUND_DIR = Path(__file__).resolve().parents[1] / "backgrounds"
# Grade-0 IDRiD training images shipped as backgrounds; an IDRiD loader must keep them out of validation.
BACKGROUND_IDRID_IDS: tuple[str, ...] = (
    "IDRiD_138",
    "IDRiD_139",
    "IDRiD_157",
    "IDRiD_166",
    "IDRiD_195",
    "IDRiD_204",
    "IDRiD_210",
)
# Fovea-to-disc-centre distance in disc diameters (anatomy); sets the disc diameter of each background.
FOVEA_DISC_DISTANCE_DD = 2.5
ANATOMY_WORK_SIZE = 256  # disc/fovea are estimated once per background at this size


@dataclass(frozen=True)
class Background:
    """A normal fundus cropped to its FOV square, with disc and fovea centres as fractions of the side."""

    name: str
    image: np.ndarray  # uint8 [S,S,3] RGB
    fov: np.ndarray  # bool [S,S]
    disc: tuple[float, float]  # (x, y) / S
    fovea: tuple[float, float]  # (x, y) / S
    fov_diameter: float  # FOV width / S


def _blurred_luminance(image: np.ndarray, size: int) -> np.ndarray:
    """Luminance of ``image`` at ``size x size``, blurred to about a disc radius (float32)."""
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    return cv2.GaussianBlur(small.mean(axis=2), (0, 0), 0.03 * size)


def _estimate_anatomy(
    image: np.ndarray, fov: np.ndarray
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Disc centre (brightest blurred spot) and fovea (darkest spot near 0.35 FOV temporal to it), as fractions."""
    size = ANATOMY_WORK_SIZE
    luminance = _blurred_luminance(image, size)
    small_fov = cv2.resize(fov.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    inner = cv2.erode(small_fov, np.ones((15, 15), np.uint8)).astype(bool)
    disc_y, disc_x = np.unravel_index(np.argmax(np.where(inner, luminance, -1.0)), luminance.shape)
    columns = np.flatnonzero(small_fov.any(axis=0))
    temporal = 1.0 if (columns[0] + columns[-1]) / 2 > disc_x else -1.0
    prior_x, prior_y = disc_x + temporal * 0.35 * size, disc_y + 0.02 * size
    rows, cols = np.mgrid[:size, :size]
    near = (cols - prior_x) ** 2 + (rows - prior_y) ** 2 < (0.1 * size) ** 2
    fovea_y, fovea_x = np.unravel_index(
        np.argmin(np.where(near & inner, luminance, np.inf)), luminance.shape
    )
    return (disc_x / size, disc_y / size), (fovea_x / size, fovea_y / size)


def _make_background(name: str, image: np.ndarray) -> Background:
    """Crop a fundus photograph to its FOV square and locate its disc and fovea."""
    square, _, fov = crop_to_fov_square(image)
    square[~fov] = 0
    disc, fovea = _estimate_anatomy(square, fov)
    columns = np.flatnonzero(fov.any(axis=0))
    return Background(name, square, fov, disc, fovea, (columns[-1] - columns[0] + 1) / fov.shape[1])


@functools.cache
def load_backgrounds(choice: str = "all") -> tuple[Background, ...]:
    """The background fundi: ``retina`` (skimage only) or ``all`` (plus the IDRiD images in data/backgrounds)."""
    if choice not in BACKGROUND_CHOICES:
        raise DataError(f"backgrounds must be one of {BACKGROUND_CHOICES}, got {choice!r}")
    backgrounds = [_make_background("skimage-retina", skimage.data.retina())]
    if choice == "all":
        for image_id in BACKGROUND_IDRID_IDS:
            path = BACKGROUND_DIR / f"{image_id}.jpg"
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DataError(f"missing or unreadable background image {path}")
            backgrounds.append(_make_background(image_id, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    log.debug("loaded %d backgrounds (%s)", len(backgrounds), choice)
    return tuple(backgrounds)


@functools.lru_cache(maxsize=64)
def _resized_background(choice: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Background ``index`` and its FOV (uint8 0/255) resized to ``size``, cached so warps start from it."""
    background = load_backgrounds(choice)[index]
    shrinking = size < background.image.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    image = cv2.resize(background.image, (size, size), interpolation=interpolation)
    fov = cv2.resize(
        background.fov.astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_LINEAR
    )
    return image, fov


# -------------------------------------------------------------------------------------------------
# Augmented background


@dataclass(frozen=True)
class Anatomy:
    """Landmarks of one augmented sample in pixels; quadrants are split along/across the disc-fovea axis."""

    disc: np.ndarray  # (x, y)
    fovea: np.ndarray  # (x, y)
    temporal: np.ndarray  # unit vector disc -> fovea
    up: (
        np.ndarray
    )  # unit vector of "up" in the original photograph (gravity, for the preretinal level)
    fov_diameter: float  # px
    disc_diameter: float  # px

    def quadrant(self, point: np.ndarray) -> int:
        """Quadrant 0-3 of ``point`` around the fovea: bit 0 temporal side, bit 1 one side of the axis."""
        offset = point - self.fovea
        along = offset @ self.temporal
        across = offset[0] * -self.temporal[1] + offset[1] * self.temporal[0]
        return int(along >= 0) + 2 * int(across >= 0)


def _augmentation_matrix(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, float]:
    """Random 2x3 affine (mirror, rotation +-15 deg, scale 0.9-1.1, shift +-3 %) about the centre."""
    mirror = rng.random() < 0.5
    angle = math.radians(rng.uniform(-15.0, 15.0))
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.03, 0.03, size=2) * size
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    flip = -1.0 if mirror else 1.0
    linear = np.array([[cos * flip, -sin], [sin * flip, cos]])
    centre = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    translation = centre + shift - linear @ centre
    return np.hstack([linear, translation[:, None]]), angle, scale


def _photometric_lut(rng: np.random.Generator) -> np.ndarray:
    """Per-channel 256-entry LUT: gamma, brightness, colour gains and contrast, keeping black black."""
    values = np.arange(256, dtype=np.float64) / 255.0
    gamma = rng.uniform(0.8, 1.25)
    brightness = rng.uniform(0.85, 1.15)
    contrast = rng.uniform(0.85, 1.2)
    gains = rng.uniform([0.93, 0.9, 0.85], [1.07, 1.1, 1.15])
    mid = 0.35
    channels = brightness * gains[None, :] * values[:, None] ** gamma
    channels = mid + contrast * (channels - mid)
    channels *= np.minimum(1.0, values / 0.04)[:, None]
    return np.clip(np.rint(channels * 255.0), 0, 255).astype(np.uint8).reshape(256, 1, 3)


def _warp_point(matrix: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to an (x, y) point."""
    return matrix[:, :2] @ point + matrix[:, 2]


def augmented_background(
    rng: np.random.Generator, size: int, choice: str
) -> tuple[np.ndarray, np.ndarray, Anatomy]:
    """Draw and augment one background at ``size``: (image uint8 [S,S,3], fov bool [S,S], anatomy)."""
    backgrounds = load_backgrounds(choice)
    index = int(rng.integers(len(backgrounds)))
    background = backgrounds[index]
    image, fov = _resized_background(choice, index, size)
    matrix, angle, scale = _augmentation_matrix(rng, size)
    warped = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
    )
    warped_fov = cv2.warpAffine(fov, matrix, (size, size), flags=cv2.INTER_LINEAR) > 127
    warped = cv2.LUT(warped, _photometric_lut(rng))
    disc = _warp_point(matrix, np.array(background.disc) * size)
    fovea = _warp_point(matrix, np.array(background.fovea) * size)
    distance = float(np.linalg.norm(fovea - disc))
    anatomy = Anatomy(
        disc=disc,
        fovea=fovea,
        temporal=(fovea - disc) / distance,
        up=np.array([math.sin(angle), -math.cos(angle)]),
        fov_diameter=background.fov_diameter * size * scale,
        disc_diameter=distance / FOVEA_DISC_DISTANCE_DD,
    )
    return warped, warped_fov, anatomy
