"""The embedded semi-synthetic fundus dataset: real normal fundi with rendered DR lesions, masks and ICDR grades.

``python train.py`` uses it when no dataset is given, so the project trains and tests without downloads.

Backgrounds are real normal fundi: ``skimage.data.retina()`` (CC0) and a few grade-0 IDRiD training images
shipped in ``data/backgrounds/`` (CC BY 4.0, see its README). Each sample draws a background, augments it
(mirroring, rotation, scale, shift, brightness/contrast/gamma/colour), draws a target grade from
``class_mix`` and renders lesions consistent with it, each in a local patch with its own opacity map:

- MA: dark red dots, radius 0.25-0.55 % of the FOV diameter (under 125 um), soft-edged;
- HE: dot/blot haemorrhages (irregular, textured) and flame haemorrhages (elongated radially from the
  disc, striated), multiplied into the background so vessels show through;
- EX: sharp-edged yellow spots in clumps or circinate rings around the macula;
- SE: pale, fluffy cotton-wool spots along the arcades near the disc;
- proliferative signs: neovascular tufts (thin tortuous loops on the disc or an arcade; counted as
  ``NV``, in no lesion mask, drawn in ``new_vessels``) and a boat-shaped preretinal haemorrhage
  (counted as ``PRH``, marked in the HE mask because it is a haemorrhage, but not in the HE count).

The lesion masks are exactly the pixels a lesion's opacity touched, clipped to the FOV, so pixels outside
the masks (and ``new_vessels``) equal the lesion-free background. The label is computed from what was
rendered inside the FOV by :func:`icdr_grade`, never copied from the target. Everything is a pure
function of ``(seed, split, index)``: bit-identical in any process and any order of access.
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import math
import multiprocessing
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
from tqdm import tqdm

from data.degrade import degrade
from data.fundus import crop_to_fov_square
from data.records import LESIONS, NUM_GRADES, DataError, make_sample

log = logging.getLogger(__name__)

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SCALES: tuple[int, ...] = (2, 4, 8)
BACKGROUND_CHOICES: tuple[str, ...] = ("all", "retina")
BACKGROUND_DIR = Path(__file__).resolve().parent / "backgrounds"
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
PROLIFERATIVE_SIGNS: tuple[str, ...] = ("NV", "PRH")
COUNT_KEYS: tuple[str, ...] = (*LESIONS, *PROLIFERATIVE_SIGNS)
NUM_QUADRANTS = 4
MIN_SIZE = 16

# ICDR "severe" scaled down from ">20 intraretinal haemorrhages in each of 4 quadrants" (4-2-1 rule) to what
# one 45-50 degree photograph shows: at least this many haemorrhages in each quadrant around the fovea.
SEVERE_HE_PER_QUADRANT = 5
# Fovea-to-disc-centre distance in disc diameters (anatomy); sets the disc diameter of each background.
FOVEA_DISC_DISTANCE_DD = 2.5
ALPHA_CUTOFF = (
    0.03  # opacities below this are dropped, so the mask is where the lesion changed pixels
)
ANATOMY_WORK_SIZE = 256  # disc/fovea are estimated once per background at this size


# -------------------------------------------------------------------------------------------------
# Grade rule


def icdr_grade(quadrant_counts: Mapping[str, Sequence[int]], proliferative: bool) -> int:
    """ICDR grade from lesion counts per quadrant (around the fovea) and whether proliferative signs exist.

    4 proliferative (NV or preretinal haemorrhage); 3 severe: >= SEVERE_HE_PER_QUADRANT haemorrhages in
    every quadrant; 2 moderate: any haemorrhage, hard or soft exudate; 1 mild: microaneurysms only; 0 none.
    ``quadrant_counts`` maps lesion names (MA, HE, EX, SE; missing = none) to 4 non-negative counts.
    """
    for name, counts in quadrant_counts.items():
        if name not in LESIONS or len(counts) != NUM_QUADRANTS or min(counts) < 0:
            raise DataError(
                f"quadrant_counts[{name!r}] must be 4 counts >= 0 for one of {LESIONS}, got {counts}"
            )
    totals = {name: sum(quadrant_counts.get(name, ())) for name in LESIONS}
    if proliferative:
        return 4
    if min(quadrant_counts.get("HE", (0,) * NUM_QUADRANTS)) >= SEVERE_HE_PER_QUADRANT:
        return 3
    if totals["HE"] or totals["EX"] or totals["SE"]:
        return 2
    return 1 if totals["MA"] else 0


# -------------------------------------------------------------------------------------------------
# Backgrounds


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


def _augmented_background(
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


# -------------------------------------------------------------------------------------------------
# Lesion drawing: each lesion is an opacity map on a local patch


@dataclass
class _Canvas:
    """The image being painted, its lesion masks, the new-vessel mask and the FOV that clips everything."""

    image: np.ndarray  # uint8 [S,S,3]
    fov: np.ndarray  # bool [S,S]
    masks: np.ndarray = field(init=False)  # bool [4,S,S]
    new_vessels: np.ndarray = field(init=False)  # bool [S,S]

    def __post_init__(self) -> None:
        size = self.image.shape[0]
        self.masks = np.zeros((len(LESIONS), size, size), dtype=bool)
        self.new_vessels = np.zeros((size, size), dtype=bool)

    def patch(
        self, centre: np.ndarray, half: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Window of half-size ``half`` px around ``centre`` clipped to the image: (slices, dx, dy) or None."""
        size = self.image.shape[0]
        x0, y0 = (max(0, math.floor(c - half)) for c in centre)
        x1, y1 = (min(size, math.ceil(c + half) + 1) for c in centre)
        if x1 <= x0 or y1 <= y0:
            return None
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(centre[0])
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(centre[1])
        return (slice(y0, y1), slice(x0, x1)), dx, dy

    def paint(
        self, window: tuple[slice, slice], alpha: np.ndarray, blend: str, colour: np.ndarray
    ) -> np.ndarray:
        """Composite one lesion; returns where it changed the image (bool, window-sized).

        ``multiply``: background * (1 - alpha * (1 - colour)), dark lesions that keep vessels visible;
        ``screen``: towards 1 - (1 - background) * (1 - colour), bright lesions that keep the local tint;
        ``cover``: towards colour * the window's median background, opaque blood in front of the vessels.
        """
        alpha = np.broadcast_to(alpha, self.fov[window].shape) * self.fov[window]
        peak = float(alpha.max()) if alpha.size else 0.0
        if peak <= 0.0:
            return np.zeros(alpha.shape, dtype=bool)
        touched = alpha >= min(ALPHA_CUTOFF, 0.5 * peak)
        alpha = np.where(touched, alpha, 0.0).astype(np.float32)[..., None]
        background = self.image[window].astype(np.float32) * np.float32(1.0 / 255.0)
        colour = colour.astype(np.float32)
        if blend == "multiply":
            painted = background * (1.0 - alpha * (1.0 - colour))
        elif blend == "screen":
            target = 1.0 - (1.0 - background) * (1.0 - colour)
            painted = background + alpha * (target - background)
        else:
            target = colour * np.median(background[self.fov[window]], axis=0)
            painted = background + alpha * (target - background)
        self.image[window] = np.clip(np.rint(painted * 255.0), 0, 255).astype(np.uint8)
        return touched


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """Cubic ramp 0 -> 1 on [0, 1], clamped outside."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Value noise in [0,1] with about ``cells`` blobs across the window (texture inside a lesion)."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.clip(cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


@dataclass(frozen=True)
class _Shape:
    """An irregular ellipse: semi-axes in px, orientation, and boundary harmonics (k, amplitude, phase)."""

    semi_major: float
    semi_minor: float
    angle: float
    harmonics: tuple[tuple[int, float, float], ...]

    def signed_distance(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Approximate distance in px to the boundary, negative inside."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        major = max(self.semi_major, 0.5)
        minor = max(self.semi_minor, 0.5)
        u = (dx * cos + dy * sin) / major
        v = (dy * cos - dx * sin) / minor
        radius = np.sqrt(u * u + v * v)
        boundary = np.ones_like(radius)
        if self.harmonics:
            theta = np.arctan2(v, u)
            for k, amplitude, phase in self.harmonics:
                boundary += amplitude * np.cos(k * theta + phase)
        return (radius - boundary) * np.float32(0.5 * (major + minor))

    def ink(self) -> float:
        """Opacity factor for sub-pixel lesions, so a 0.3 px dot stays faint but present."""
        return min(1.0, max(self.semi_major, 0.05) * max(self.semi_minor, 0.05) / 0.25)


def _random_shape(
    rng: np.random.Generator,
    radius: float,
    elongation: tuple[float, float],
    irregularity: float,
    angle: float,
) -> _Shape:
    """Irregular ellipse of mean radius ``radius`` px, axis ratio in ``elongation`` (major/minor)."""
    ratio = rng.uniform(*elongation)
    harmonics = tuple(
        (k, float(rng.uniform(0.0, irregularity)), float(rng.uniform(0, 2 * math.pi)))
        for k in (2, 3)
    )
    return _Shape(radius * math.sqrt(ratio), radius / math.sqrt(ratio), angle, harmonics)


def _edge_alpha(distance: np.ndarray, edge: float) -> np.ndarray:
    """Opacity 1 inside, 0 outside, smooth ramp ``edge`` px wide centred on the boundary."""
    return _smoothstep(0.5 - distance / max(edge, 0.75))


# Multiplicative tints (dark lesions) and screen colours (bright lesions), RGB in [0,1].
HE_COLOUR = np.array([0.62, 0.15, 0.16])
MA_COLOUR = np.array([0.6, 0.18, 0.2])
PRH_COLOUR = np.array([0.66, 0.14, 0.12])
NV_COLOUR = np.array([0.8, 0.35, 0.38])
EX_COLOUR = np.array([0.7, 0.62, 0.2])
SE_COLOUR = np.array([0.5, 0.5, 0.42])


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 0.06) -> np.ndarray:
    """Per-lesion colour variation."""
    return np.clip(colour + rng.uniform(-amount, amount, size=3), 0.0, 1.0)


def draw_microaneurysm(
    rng: np.random.Generator, canvas: _Canvas, at: np.ndarray, anatomy: Anatomy
) -> bool:
    """Small round dark red dot with a soft edge; returns whether anything landed in the FOV."""
    radius = rng.uniform(0.0025, 0.0055) * anatomy.fov_diameter
    shape = _random_shape(rng, radius, (1.0, 1.2), 0.05, rng.uniform(0, math.pi))
    window = canvas.patch(at, radius * 1.3 + 2.0)
    if window is None:
        return False
    slices, dx, dy = window
    alpha = _edge_alpha(shape.signed_distance(dx, dy), max(1.0, 0.5 * radius)) * shape.ink()
    alpha *= rng.uniform(0.75, 0.95)
    return _record(
        canvas, "MA", slices, canvas.paint(slices, alpha, "multiply", _jitter(rng, MA_COLOUR))
    )


def draw_blot_haemorrhage(
    rng: np.random.Generator, canvas: _Canvas, at: np.ndarray, anatomy: Anatomy
) -> bool:
    """Dot/blot haemorrhage: irregular, dark red, mottled inside, soft edge, vessels showing through."""
    radius = rng.uniform(0.007, 0.022) * anatomy.fov_diameter
    shape = _random_shape(rng, radius, (1.0, 1.6), 0.12, rng.uniform(0, math.pi))
    edge = max(1.0, 0.5 * radius)
    window = canvas.patch(at, radius * 1.6 + edge + 2.0)
    if window is None:
        return False
    slices, dx, dy = window
    outline = _smooth_noise(rng, (dy.shape[0], dx.shape[1]), int(rng.integers(3, 6)))
    alpha = _edge_alpha(shape.signed_distance(dx, dy) - edge * (outline - 0.5), edge) * shape.ink()
    texture = 0.6 * _smooth_noise(rng, alpha.shape, int(rng.integers(3, 6))) + 0.4 * _smooth_noise(
        rng, alpha.shape, 9
    )
    alpha *= rng.uniform(0.85, 0.97) * (0.68 + 0.32 * texture)
    return _record(
        canvas, "HE", slices, canvas.paint(slices, alpha, "multiply", _jitter(rng, HE_COLOUR))
    )


def draw_flame_haemorrhage(
    rng: np.random.Generator, canvas: _Canvas, at: np.ndarray, anatomy: Anatomy
) -> bool:
    """Flame haemorrhage: elongated along the nerve fibres (radial from the disc), striated, feathered ends."""
    radial = at - anatomy.disc
    angle = math.atan2(radial[1], radial[0]) + rng.normal(0.0, 0.15)
    length = rng.uniform(0.018, 0.04) * anatomy.fov_diameter
    width = length * rng.uniform(0.25, 0.45)
    edge = max(1.0, 0.4 * width)
    window = canvas.patch(at, length + edge + 2.0)
    if window is None:
        return False
    slices, dx, dy = window
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    along = (dx * cos + dy * sin) / np.float32(length)
    across = dy * cos - dx * sin
    half_width = max(width, 0.5) * np.clip(1.0 - along * along, 0.0, 1.0) ** 0.7
    alpha = _edge_alpha(np.abs(across) - half_width, edge) * _edge_alpha(
        (np.abs(along) - 1.0) * length, edge
    )
    wobble = _smooth_noise(rng, alpha.shape, 4) * np.float32(2 * math.pi)
    streaks = 0.5 + 0.5 * np.sin(across * np.float32(2 * math.pi / max(1.5, 0.3 * width)) + wobble)
    texture = _smooth_noise(rng, alpha.shape, 5)
    alpha *= (
        rng.uniform(0.85, 0.97) * min(1.0, width / 0.5) * (0.72 + 0.08 * streaks + 0.2 * texture)
    )
    return _record(
        canvas, "HE", slices, canvas.paint(slices, alpha, "multiply", _jitter(rng, HE_COLOUR))
    )


def draw_hard_exudate(
    rng: np.random.Generator,
    canvas: _Canvas,
    at: np.ndarray,
    anatomy: Anatomy,
    radius_fraction: float,
) -> bool:
    """One hard exudate: bright yellow, waxy, sharp-edged irregular spot."""
    radius = radius_fraction * anatomy.fov_diameter
    shape = _random_shape(rng, radius, (1.0, 1.8), 0.2, rng.uniform(0, math.pi))
    window = canvas.patch(at, radius * 1.7 + 2.0)
    if window is None:
        return False
    slices, dx, dy = window
    distance = shape.signed_distance(dx, dy)
    alpha = _edge_alpha(distance, 0.8) * shape.ink()
    core = np.clip(
        -distance / max(0.6 * radius, 0.5), 0.0, 1.0
    )  # waxy: brighter towards the middle
    alpha *= rng.uniform(0.85, 1.0) * (0.6 + 0.2 * core + 0.2 * _smooth_noise(rng, alpha.shape, 4))
    return _record(
        canvas, "EX", slices, canvas.paint(slices, alpha, "screen", _jitter(rng, EX_COLOUR))
    )


def draw_cotton_wool_spot(
    rng: np.random.Generator, canvas: _Canvas, at: np.ndarray, anatomy: Anatomy
) -> bool:
    """Cotton-wool spot: pale whitish, fluffy irregular outline fading softly, elongated along the fibres."""
    radius = rng.uniform(0.015, 0.03) * anatomy.fov_diameter
    radial = at - anatomy.disc
    angle = math.atan2(radial[1], radial[0]) + math.pi / 2 + rng.normal(0.0, 0.3)
    shape = _random_shape(rng, radius, (1.2, 2.0), 0.12, angle)
    edge = max(1.2, 0.9 * radius)
    window = canvas.patch(at, radius * 1.8 + edge + 2.0)
    if window is None:
        return False
    slices, dx, dy = window
    fluff = _smooth_noise(rng, (dy.shape[0], dx.shape[1]), int(rng.integers(4, 8)))
    distance = shape.signed_distance(dx, dy) - edge * 0.9 * (fluff - 0.5)
    alpha = _edge_alpha(distance, edge) * shape.ink()
    alpha *= rng.uniform(0.65, 0.85) * (0.65 + 0.35 * _smooth_noise(rng, alpha.shape, 6))
    return _record(
        canvas, "SE", slices, canvas.paint(slices, alpha, "screen", _jitter(rng, SE_COLOUR, 0.04))
    )


def draw_preretinal_haemorrhage(
    rng: np.random.Generator, canvas: _Canvas, at: np.ndarray, anatomy: Anatomy
) -> bool:
    """Boat-shaped preretinal haemorrhage: flat upper fluid level, rounded bottom, dark red densest below."""
    half_width = rng.uniform(0.04, 0.07) * anatomy.fov_diameter
    depth = half_width * rng.uniform(0.55, 0.8)
    level = rng.uniform(0.0, 0.25) * depth
    window = canvas.patch(at, half_width + 4.0)
    if window is None:
        return False
    slices, dx, dy = window
    down = -anatomy.up
    below = dx * np.float32(down[0]) + dy * np.float32(down[1])
    across = dx * np.float32(-down[1]) + dy * np.float32(down[0])
    bowl = _Shape(half_width, depth, 0.0, ((3, float(rng.uniform(0, 0.05)), 0.0),))
    alpha = _edge_alpha(bowl.signed_distance(across, below), max(1.5, 0.2 * depth))
    alpha *= _edge_alpha(-level - below, 1.0)
    settled = np.sqrt(
        np.clip((below + level) / (0.6 * (depth + level)), 0.0, 1.0)
    )  # plasma above, cells below
    alpha *= (
        rng.uniform(0.88, 0.97)
        * (0.6 + 0.4 * settled)
        * (0.85 + 0.15 * _smooth_noise(rng, alpha.shape, 6))
    )
    return _record(
        canvas, "HE", slices, canvas.paint(slices, alpha, "cover", _jitter(rng, PRH_COLOUR, 0.04))
    )


def _tuft_loops(rng: np.random.Generator, radius: float) -> list[np.ndarray]:
    """Closed, gently wiggling vessel loops fanning out from the origin (a neovascular frond), as (x, y) arrays."""
    loops = []
    base = rng.uniform(0, 2 * math.pi)
    steps = np.linspace(0.0, 2 * math.pi, 48)
    for _ in range(int(rng.integers(6, 13))):
        angle = base + rng.uniform(-1.0, 1.0)
        length = radius * rng.uniform(0.4, 1.0)
        width = length * rng.uniform(0.1, 0.25)
        along = 0.5 * length * (1.0 - np.cos(steps))
        across = width * np.sin(steps) + 0.04 * length * np.sin(
            rng.integers(3, 7) * steps + rng.uniform(0, 6.3)
        )
        rotation = np.array(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        )
        loops.append((rotation @ np.vstack([along, across])).T)
    return loops


def draw_new_vessels(
    rng: np.random.Generator, canvas: _Canvas, at: np.ndarray, anatomy: Anatomy
) -> bool:
    """Neovascular tuft: thin tortuous red loops, anti-aliased; recorded in ``new_vessels``, not in a lesion mask."""
    radius = rng.uniform(0.3, 0.6) * anatomy.disc_diameter
    calibre = 0.0015 * anatomy.fov_diameter
    thickness = max(1, round(calibre))
    window = canvas.patch(at, radius + thickness + 2.0)
    if window is None:
        return False
    slices, dx, dy = window
    origin = np.array([-dx[0, 0], -dy[0, 0]])
    drawing = np.zeros((dy.shape[0], dx.shape[1]), dtype=np.uint8)
    subpixel = 16
    curves = [
        np.rint((loop + origin) * subpixel).astype(np.int32) for loop in _tuft_loops(rng, radius)
    ]
    cv2.polylines(drawing, curves, True, 255, thickness, cv2.LINE_AA, shift=4)
    alpha = drawing.astype(np.float32) * np.float32(
        rng.uniform(0.6, 0.8) * min(1.0, calibre + 0.3) / 255.0
    )
    touched = canvas.paint(slices, alpha, "multiply", _jitter(rng, NV_COLOUR, 0.04))
    canvas.new_vessels[slices] |= touched
    return bool(touched.any())


def _record(canvas: _Canvas, lesion: str, window: tuple[slice, slice], touched: np.ndarray) -> bool:
    """Add a lesion's touched pixels to its mask channel; True if it left any."""
    canvas.masks[LESIONS.index(lesion)][window] |= touched
    return bool(touched.any())


# -------------------------------------------------------------------------------------------------
# Where lesions go


def _inside(canvas: _Canvas, point: np.ndarray) -> bool:
    """Whether the pixel nearest ``point`` lies in the image and the FOV."""
    x, y = round(point[0]), round(point[1])
    size = canvas.fov.shape[0]
    return 0 <= x < size and 0 <= y < size and bool(canvas.fov[y, x])


def _sample_point(
    rng: np.random.Generator,
    canvas: _Canvas,
    anatomy: Anatomy,
    region: str,
    quadrant: int | None = None,
) -> np.ndarray | None:
    """A random lesion position in ``region`` (and ``quadrant``) inside the FOV, off the disc; None if none found.

    Regions: ``pole`` (mostly within 0.3 FOV of the fovea), ``fov`` (anywhere), ``arcade`` (0.8-2.2 disc
    diameters from the disc, above or below the disc-fovea axis), ``macula`` (0.3-1.6 DD from the fovea),
    ``disc`` (on the disc).
    """
    dd, diameter = anatomy.disc_diameter, anatomy.fov_diameter
    for _ in range(100):
        if region == "disc":
            point = anatomy.disc + _polar(rng, 0.0, 0.35 * dd)
        elif region == "arcade":
            side = rng.choice([-1.0, 1.0])
            angle = math.atan2(anatomy.temporal[1], anatomy.temporal[0]) + side * math.radians(
                rng.uniform(35, 100)
            )
            point = anatomy.disc + rng.uniform(0.8, 2.2) * dd * np.array(
                [math.cos(angle), math.sin(angle)]
            )
        elif region == "macula":
            point = anatomy.fovea + _polar(rng, 0.3 * dd, 1.6 * dd)
        elif region == "pole" and rng.random() < 0.7:
            point = anatomy.fovea + _polar(rng, 0.0, 0.3 * diameter)
        else:
            point = anatomy.fovea + _polar(rng, 0.0, 0.55 * diameter)
        off_disc = region == "disc" or np.linalg.norm(point - anatomy.disc) > 0.7 * dd
        in_quadrant = quadrant is None or anatomy.quadrant(point) == quadrant
        if off_disc and in_quadrant and _inside(canvas, point):
            return point
    return None


def _polar(rng: np.random.Generator, inner: float, outer: float) -> np.ndarray:
    """Uniform point in the annulus ``inner <= r < outer`` around the origin."""
    radius = math.sqrt(rng.uniform(inner**2, outer**2))
    angle = rng.uniform(0, 2 * math.pi)
    return np.array([radius * math.cos(angle), radius * math.sin(angle)])


class _Tally:
    """Lesions that actually landed in the FOV, per quadrant around the fovea."""

    def __init__(self, anatomy: Anatomy) -> None:
        self.anatomy = anatomy
        self.quadrants = {name: [0] * NUM_QUADRANTS for name in COUNT_KEYS}

    def add(self, name: str, point: np.ndarray, drawn: bool) -> None:
        """Count a lesion at ``point`` if it was drawn."""
        if drawn:
            self.quadrants[name][self.anatomy.quadrant(point)] += 1


def _place_haemorrhages(
    rng: np.random.Generator,
    canvas: _Canvas,
    anatomy: Anatomy,
    tally: _Tally,
    count: int,
    quadrant: int | None,
) -> None:
    """Haemorrhages: mostly dot/blot in the pole, about 30 % flame-shaped (near the arcades unless a quadrant is set)."""
    for _ in range(count):
        flame = rng.random() < 0.3
        point = _sample_point(
            rng, canvas, anatomy, "arcade" if flame and quadrant is None else "pole", quadrant
        )
        if point is None:
            continue
        flame = (
            flame and np.linalg.norm(point - anatomy.fovea) > anatomy.disc_diameter
        )  # no fibres at the fovea
        draw = draw_flame_haemorrhage if flame else draw_blot_haemorrhage
        tally.add("HE", point, draw(rng, canvas, point, anatomy))


def _place_microaneurysms(
    rng: np.random.Generator, canvas: _Canvas, anatomy: Anatomy, tally: _Tally, count: int
) -> None:
    """Microaneurysms scattered over the posterior pole."""
    for _ in range(count):
        point = _sample_point(rng, canvas, anatomy, "pole")
        if point is not None:
            tally.add("MA", point, draw_microaneurysm(rng, canvas, point, anatomy))


def _place_exudate_cluster(
    rng: np.random.Generator, canvas: _Canvas, anatomy: Anatomy, tally: _Tally
) -> None:
    """A circinate ring (partial or whole) or a clump of hard exudates near the macula."""
    centre = _sample_point(rng, canvas, anatomy, "macula")
    if centre is None:
        return
    dd = anatomy.disc_diameter
    if rng.random() < 0.5:
        count = int(rng.integers(12, 30))
        ring = rng.uniform(0.35, 0.9) * dd
        start, extent = rng.uniform(0, 2 * math.pi), rng.uniform(math.pi, 2 * math.pi)
        angles = start + extent * rng.random(count)
        radii = ring * (1.0 + rng.normal(0.0, 0.08, count))
        offsets = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    else:
        count = int(rng.integers(6, 18))
        offsets = rng.normal(0.0, 0.3 * dd, size=(count, 2))
    for offset in offsets:
        point = centre + offset
        if _inside(canvas, point):
            size = rng.uniform(0.0025, 0.007) if rng.random() < 0.8 else rng.uniform(0.007, 0.013)
            tally.add("EX", point, draw_hard_exudate(rng, canvas, point, anatomy, size))


def _place_cotton_wool_spots(
    rng: np.random.Generator, canvas: _Canvas, anatomy: Anatomy, tally: _Tally, count: int
) -> None:
    """Cotton-wool spots along the vascular arcades near the disc."""
    for _ in range(count):
        point = _sample_point(rng, canvas, anatomy, "arcade")
        if point is not None:
            tally.add("SE", point, draw_cotton_wool_spot(rng, canvas, point, anatomy))


def _render_moderate(
    rng: np.random.Generator, canvas: _Canvas, anatomy: Anatomy, tally: _Tally
) -> None:
    """Grade-2 lesions: microaneurysms plus some haemorrhages and/or exudates, short of the severe rule."""
    he_count = int(rng.integers(1, 9)) if rng.random() < 0.8 else 0
    ex_clusters = int(rng.integers(1, 3)) if rng.random() < 0.5 else 0
    se_count = int(rng.integers(1, 4)) if rng.random() < 0.4 else 0
    if he_count + ex_clusters + se_count == 0:
        he_count = int(rng.integers(2, 6))
    _place_microaneurysms(rng, canvas, anatomy, tally, int(rng.integers(2, 13)))
    _place_haemorrhages(rng, canvas, anatomy, tally, he_count, None)
    for _ in range(ex_clusters):
        _place_exudate_cluster(rng, canvas, anatomy, tally)
    _place_cotton_wool_spots(rng, canvas, anatomy, tally, se_count)


def _render_severe(
    rng: np.random.Generator, canvas: _Canvas, anatomy: Anatomy, tally: _Tally
) -> None:
    """Grade-3 lesions: many haemorrhages in every quadrant, microaneurysms, often exudates and cotton wool."""
    _place_microaneurysms(rng, canvas, anatomy, tally, int(rng.integers(6, 21)))
    for quadrant in range(NUM_QUADRANTS):
        count = int(rng.integers(SEVERE_HE_PER_QUADRANT, SEVERE_HE_PER_QUADRANT + 5))
        _place_haemorrhages(rng, canvas, anatomy, tally, count, quadrant)
    for _ in range(int(rng.integers(1, 3)) if rng.random() < 0.5 else 0):
        _place_exudate_cluster(rng, canvas, anatomy, tally)
    _place_cotton_wool_spots(
        rng, canvas, anatomy, tally, int(rng.integers(1, 5)) if rng.random() < 0.6 else 0
    )


def _render_proliferative(
    rng: np.random.Generator, canvas: _Canvas, anatomy: Anatomy, tally: _Tally
) -> None:
    """Grade-4 lesions: moderate or severe background plus new vessels and/or a preretinal haemorrhage."""
    (_render_severe if rng.random() < 0.6 else _render_moderate)(rng, canvas, anatomy, tally)
    preretinal = rng.random() < 0.5
    new_vessels = int(rng.integers(1, 3)) if (not preretinal or rng.random() < 0.5) else 0
    for _ in range(new_vessels):
        point = _sample_point(rng, canvas, anatomy, "disc" if rng.random() < 0.4 else "arcade")
        if point is not None:
            tally.add("NV", point, draw_new_vessels(rng, canvas, point, anatomy))
    if preretinal:
        point = _sample_point(rng, canvas, anatomy, "arcade")
        if point is not None:
            tally.add("PRH", point, draw_preretinal_haemorrhage(rng, canvas, point, anatomy))


def _render_lesions(
    rng: np.random.Generator, target: int, canvas: _Canvas, anatomy: Anatomy, tally: _Tally
) -> None:
    """Render lesions consistent with the ICDR ``target`` grade."""
    if target == 1:
        _place_microaneurysms(rng, canvas, anatomy, tally, int(rng.integers(1, 9)))
    elif target == 2:
        _render_moderate(rng, canvas, anatomy, tally)
    elif target == 3:
        _render_severe(rng, canvas, anatomy, tally)
    elif target == 4:
        _render_proliferative(rng, canvas, anatomy, tally)


# -------------------------------------------------------------------------------------------------
# Samples


@dataclass(frozen=True)
class SyntheticFundusImage:
    """One rendered sample; ``grade`` follows :func:`icdr_grade` on ``quadrant_counts``."""

    image: np.ndarray  # uint8 [S,S,3] RGB
    masks: np.ndarray  # bool [4,S,S], order MA, HE, EX, SE
    fov: np.ndarray  # bool [S,S]
    grade: int
    lesion_counts: dict[str, int]  # MA, HE, EX, SE, NV, PRH drawn inside the FOV
    id: str
    quadrant_counts: dict[str, tuple[int, ...]]  # the same per quadrant around the fovea
    new_vessels: np.ndarray  # bool [S,S], pixels changed by neovascular tufts (in no lesion mask)


def check_split(split: str) -> int:
    """Split code used in the seed; DataError for an unknown split."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    return SPLITS[split]


def normalise_class_mix(class_mix: Sequence[float] | None) -> np.ndarray:
    """Five non-negative class weights as probabilities (None: balanced)."""
    if class_mix is None:
        return np.full(NUM_GRADES, 1.0 / NUM_GRADES)
    weights = np.asarray(class_mix, dtype=np.float64)
    if (
        weights.shape != (NUM_GRADES,)
        or not np.all(np.isfinite(weights))
        or weights.min() < 0
        or weights.sum() <= 0
    ):
        raise DataError(
            f"class_mix must be {NUM_GRADES} non-negative weights with a positive sum, got {class_mix}"
        )
    return weights / weights.sum()


def _seed_sequences(seed: int, split: str, index: int) -> list[np.random.SeedSequence]:
    """Independent streams (background, lesions, LR noise) of sample ``index``."""
    if seed < 0 or index < 0:
        raise DataError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.SeedSequence([seed, check_split(split), index]).spawn(3)


def sample_id(split: str, index: int) -> str:
    """Stable id of a synthetic sample."""
    return f"synthetic-{split}-{index:05d}"


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise DataError(f"size must be >= {MIN_SIZE}, got {size}")


def render_background(
    seed: int, split: str, index: int, size: int, backgrounds: str = "all"
) -> tuple[np.ndarray, np.ndarray, Anatomy]:
    """The lesion-free augmented background of a sample: (image uint8 [S,S,3], fov bool [S,S], anatomy)."""
    _check_size(size)
    background_stream = _seed_sequences(seed, split, index)[0]
    return _augmented_background(np.random.default_rng(background_stream), size, backgrounds)


def render_sample(
    seed: int,
    split: str,
    index: int,
    size: int,
    class_mix: Sequence[float] | None = None,
    backgrounds: str = "all",
) -> SyntheticFundusImage:
    """Render sample ``index`` of ``split`` at ``size x size`` directly (lesion sizes follow the FOV diameter)."""
    probabilities = normalise_class_mix(class_mix)
    _check_size(size)
    background_stream, lesion_stream, _ = _seed_sequences(seed, split, index)
    image, fov, anatomy = _augmented_background(
        np.random.default_rng(background_stream), size, backgrounds
    )
    lesion_rng = np.random.default_rng(lesion_stream)
    target = int(lesion_rng.choice(NUM_GRADES, p=probabilities))
    canvas = _Canvas(image, fov)
    tally = _Tally(anatomy)
    _render_lesions(lesion_rng, target, canvas, anatomy, tally)
    quadrants = {name: tuple(counts) for name, counts in tally.quadrants.items()}
    proliferative = any(sum(quadrants[name]) for name in PROLIFERATIVE_SIGNS)
    lesion_quadrants = {name: quadrants[name] for name in LESIONS}
    return SyntheticFundusImage(
        image=canvas.image,
        masks=canvas.masks,
        fov=fov,
        grade=icdr_grade(lesion_quadrants, proliferative),
        lesion_counts={name: sum(counts) for name, counts in quadrants.items()},
        id=sample_id(split, index),
        quadrant_counts=quadrants,
        new_vessels=canvas.new_vessels,
    )


def noise_generator(seed: int, split: str, index: int) -> torch.Generator:
    """Torch generator for the LR noise of one sample, so degraded inputs are reproducible too."""
    noise_seed = _seed_sequences(seed, split, index)[2].generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(noise_seed))


# -------------------------------------------------------------------------------------------------
# Dataset

_FOV_BIT = len(LESIONS)


def _pack(rendered: SyntheticFundusImage) -> tuple[np.ndarray, np.ndarray, int]:
    """Compact form: image uint8 [3,S,S], bit planes uint8 [S,S] (bits 0-3 masks, bit 4 FOV), grade."""
    bits = np.zeros(rendered.fov.shape, dtype=np.uint8)
    for channel, mask in enumerate(rendered.masks):
        bits |= mask.astype(np.uint8) << channel
    bits |= rendered.fov.astype(np.uint8) << _FOV_BIT
    return np.ascontiguousarray(rendered.image.transpose(2, 0, 1)), bits, rendered.grade


def _render_packed(
    job: tuple[int, str, int, int, tuple[float, ...] | None, str],
) -> tuple[int, np.ndarray, np.ndarray, int]:
    """Worker entry point: render one sample and pack it (top level so a process pool can pickle it)."""
    seed, split, index, size, class_mix, backgrounds = job
    return (index, *_pack(render_sample(seed, split, index, size, class_mix, backgrounds)))


def _init_worker() -> None:
    """One OpenCV thread per worker process: the pool already uses the cores (workers never use torch)."""
    cv2.setNumThreads(1)


class SyntheticFundus(torch.utils.data.Dataset):
    """Semi-synthetic DR dataset yielding :mod:`data.records` samples (all four masks valid).

    ``hr`` is the rendered image / 255; ``lr = degrade(hr, scale, ...)`` with per-sample seeded noise.
    With ``cache=True`` rendered samples are kept as packed uint8 tensors; call :meth:`materialize` before
    building DataLoader workers so they share one cache instead of each filling its own.
    """

    def __init__(
        self,
        split: str,
        n: int,
        hr_size: int,
        scale: int,
        seed: int = 0,
        class_mix: Sequence[float] | None = None,
        backgrounds: str = "all",
        blur_kernel: int = 0,
        blur_sigma: float = 0.0,
        noise_var: float = 0.0,
        cache: bool = True,
    ) -> None:
        check_split(split)
        if n <= 0:
            raise DataError(f"n must be > 0, got {n}")
        if scale not in SCALES:
            raise DataError(f"scale must be one of {SCALES}, got {scale}")
        if hr_size <= 0 or hr_size % scale:
            raise DataError(f"hr_size must be > 0 and divisible by scale {scale}, got {hr_size}")
        _check_size(hr_size)
        if seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}")
        if backgrounds not in BACKGROUND_CHOICES:
            raise DataError(f"backgrounds must be one of {BACKGROUND_CHOICES}, got {backgrounds!r}")
        if blur_kernel and (blur_kernel < 3 or blur_kernel % 2 == 0):
            raise DataError(f"blur_kernel must be 0 (off) or an odd size >= 3, got {blur_kernel}")
        if noise_var < 0:
            raise DataError(f"noise_var must be >= 0, got {noise_var}")
        normalise_class_mix(class_mix)  # validates
        self.class_mix = None if class_mix is None else tuple(float(w) for w in class_mix)
        self.split, self.n, self.hr_size, self.scale, self.seed = split, n, hr_size, scale, seed
        self.backgrounds = backgrounds
        self.blur_kernel, self.blur_sigma, self.noise_var = blur_kernel, blur_sigma, noise_var
        self.cache = cache
        self._images: torch.Tensor | None = None  # uint8 [n,3,S,S]
        self._bits: torch.Tensor | None = None  # uint8 [n,S,S]
        self._grades = torch.full((n,), -1, dtype=torch.int64)  # -1 = not rendered yet

    def __len__(self) -> int:
        return self.n

    def _job(self, index: int) -> tuple[int, str, int, int, tuple[float, ...] | None, str]:
        return self.seed, self.split, index, self.hr_size, self.class_mix, self.backgrounds

    def _store(self, index: int, image: np.ndarray, bits: np.ndarray, grade: int) -> None:
        """Put one packed sample in the cache (allocated on first use)."""
        if self._images is None or self._bits is None:
            self._images = torch.empty((self.n, 3, self.hr_size, self.hr_size), dtype=torch.uint8)
            self._bits = torch.empty((self.n, self.hr_size, self.hr_size), dtype=torch.uint8)
        self._images[index] = torch.from_numpy(image)
        self._bits[index] = torch.from_numpy(bits)
        self._grades[index] = grade

    def _packed(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Packed sample ``index`` from the cache, rendering (and caching if enabled) when missing."""
        if self._images is not None and self._bits is not None and self._grades[index] >= 0:
            return self._images[index], self._bits[index], int(self._grades[index])
        _, image, bits, grade = _render_packed(self._job(index))
        if self.cache:
            self._store(index, image, bits, grade)
        else:
            self._grades[index] = grade
        return torch.from_numpy(image), torch.from_numpy(bits), grade

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples")
        index = i % self.n
        image, bits, grade = self._packed(index)
        hr = image.float() / 255.0
        planes = [(bits >> channel) & 1 for channel in range(_FOV_BIT + 1)]
        masks = torch.stack(planes[:_FOV_BIT]).float()
        fov = planes[_FOV_BIT].unsqueeze(0).float()
        generator = noise_generator(self.seed, self.split, index) if self.noise_var > 0 else None
        lr = degrade(hr, self.scale, self.blur_kernel, self.blur_sigma, self.noise_var, generator)
        valid = torch.ones(len(LESIONS), dtype=torch.bool)
        return make_sample(lr, hr, grade, masks, valid, fov, sample_id(self.split, index))

    def materialize(self, progress: bool = False) -> None:
        """Render every sample not yet cached so epochs only look up.

        From 64 samples on this uses 2 spawned processes, which re-import the caller's ``__main__``: call
        it from a module run as ``python -m`` or a script with an ``if __name__ == "__main__":`` guard
        (stdin scripts fall back to one process).
        """
        if not self.cache:
            raise DataError("materialize needs cache=True")
        todo = [index for index in range(self.n) if self._images is None or self._grades[index] < 0]
        if not todo:
            return
        log.info("rendering %d synthetic %s samples at %d px", len(todo), self.split, self.hr_size)
        jobs = [self._job(index) for index in todo]
        with tqdm(
            total=len(todo), disable=not progress, desc=f"synthetic {self.split}", unit="img"
        ) as bar:
            for index, image, bits, grade in _render_all(jobs):
                self._store(index, image, bits, grade)
                bar.update()

    @property
    def grades(self) -> list[int]:
        """Labels of all samples (renders what is missing, caching it when enabled), for class weights."""
        if self.cache:
            self.materialize()
        else:
            for index in range(self.n):
                if self._grades[index] < 0:
                    self._grades[index] = _render_packed(self._job(index))[3]
        return self._grades.tolist()


POOL_MIN_JOBS = 64


def _can_spawn() -> bool:
    """Whether spawned workers can re-import ``__main__`` (not so for a script piped on stdin)."""
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    return main_file is None or Path(main_file).is_file()


def _render_all(jobs: list[tuple]) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
    """Yield packed renders of ``jobs``: here for a few, else over a pool of (at most) 2 processes."""
    processes = min(2, multiprocessing.cpu_count())
    if len(jobs) < POOL_MIN_JOBS or processes < 2 or not _can_spawn():
        yield from map(_render_packed, jobs)
        return
    # spawn, not fork: forking after torch/OpenCV started thread pools can deadlock the workers
    with multiprocessing.get_context("spawn").Pool(processes, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_render_packed, jobs, chunksize=16)


# -------------------------------------------------------------------------------------------------
# CLI


class _ArgumentError(Exception):
    """A bad command-line argument, reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line instead of usage + message
        raise _ArgumentError(message)


def _parse_class_mix(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--class-mix must be comma-separated numbers, got {text!r}"
        ) from error


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m data.synthetic",
        description="Write the embedded synthetic fundus dataset to disk.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--size", type=int, default=1024, help="HR side in pixels")
    parser.add_argument(
        "--scale", type=int, default=4, help="SR scale the size must be divisible by"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="train, val or test")
    parser.add_argument(
        "--class-mix", type=_parse_class_mix, default=None, help="5 weights, e.g. 1,1,1,1,1"
    )
    parser.add_argument("--backgrounds", default="all", help="all or retina")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing labels.csv")
    return parser


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise DataError(f"could not write {path}")


def write_dataset(
    out: Path,
    n: int,
    size: int,
    scale: int,
    seed: int,
    split: str,
    class_mix: Sequence[float] | None,
    backgrounds: str,
    overwrite: bool,
) -> Path:
    """Render ``n`` samples to ``out`` (images/, masks/, fov/, labels.csv); returns the labels path."""
    SyntheticFundus(split, n, size, scale, seed, class_mix, backgrounds)  # validates every argument
    labels = out / "labels.csv"
    if labels.exists() and labels.stat().st_size > 0 and not overwrite:
        raise DataError(f"{labels} exists; pass --overwrite to replace it")
    for folder in ("images", "masks", "fov"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in tqdm(range(n), desc=f"synthetic {split}", unit="img"):
        sample = render_sample(seed, split, index, size, class_mix, backgrounds)
        image_path = Path("images") / f"{sample.id}.png"
        _write_png(out / image_path, cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        for name, mask in zip(LESIONS, sample.masks):
            _write_png(out / "masks" / f"{sample.id}_{name}.png", mask.astype(np.uint8) * 255)
        _write_png(out / "fov" / f"{sample.id}.png", sample.fov.astype(np.uint8) * 255)
        rows.append(
            [
                sample.id,
                sample.grade,
                image_path.as_posix(),
                *(sample.lesion_counts[k] for k in COUNT_KEYS),
            ]
        )
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "grade", "image", *COUNT_KEYS])
        writer.writerows(rows)
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for bad arguments or refused overwrite)."""
    try:
        args = _build_parser().parse_args(argv)
        labels = write_dataset(
            args.out,
            args.n,
            args.size,
            args.scale,
            args.seed,
            args.split,
            args.class_mix,
            args.backgrounds,
            args.overwrite,
        )
    except (_ArgumentError, DataError) as error:
        print(f"python -m data.synthetic: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} samples to {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
