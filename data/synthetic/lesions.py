"""Lesion drawing for the synthetic dataset: each lesion is an opacity map painted on a local patch.

- MA: dark red dots, radius 0.25-0.55 % of the FOV diameter (under 125 um), soft-edged;
- HE: dot/blot haemorrhages (irregular, textured) and flame haemorrhages (elongated radially from the
  disc, striated), multiplied into the background so vessels show through;
- EX: sharp-edged yellow spots in clumps or circinate rings around the macula;
- SE: pale, fluffy cotton-wool spots along the arcades near the disc;
- proliferative signs: neovascular tufts (thin tortuous loops on the disc or an arcade; counted as
  ``NV``, in no lesion mask, drawn in ``new_vessels``) and a boat-shaped preretinal haemorrhage
  (counted as ``PRH``, marked in the HE mask because it is a haemorrhage, but not in the HE count).

The lesion masks are exactly the pixels a lesion's opacity touched, clipped to the FOV, so pixels outside
the masks (and ``new_vessels``) equal the lesion-free background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from data.records import LESIONS
from data.synthetic.backgrounds import Anatomy

ALPHA_CUTOFF = (
    0.03  # opacities below this are dropped, so the mask is where the lesion changed pixels
)


@dataclass
class Canvas:
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
    rng: np.random.Generator, canvas: Canvas, at: np.ndarray, anatomy: Anatomy
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
    rng: np.random.Generator, canvas: Canvas, at: np.ndarray, anatomy: Anatomy
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
    rng: np.random.Generator, canvas: Canvas, at: np.ndarray, anatomy: Anatomy
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
    canvas: Canvas,
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
    rng: np.random.Generator, canvas: Canvas, at: np.ndarray, anatomy: Anatomy
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
    rng: np.random.Generator, canvas: Canvas, at: np.ndarray, anatomy: Anatomy
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
    rng: np.random.Generator, canvas: Canvas, at: np.ndarray, anatomy: Anatomy
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


def _record(canvas: Canvas, lesion: str, window: tuple[slice, slice], touched: np.ndarray) -> bool:
    """Add a lesion's touched pixels to its mask channel; True if it left any."""
    canvas.masks[LESIONS.index(lesion)][window] |= touched
    return bool(touched.any())
