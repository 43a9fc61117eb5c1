"""Where lesions go on a synthetic fundus and how many of each a target ICDR grade calls for."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from data.synthetic.backgrounds import Anatomy
from data.synthetic.grading import COUNT_KEYS, NUM_QUADRANTS, SEVERE_HE_PER_QUADRANT
from data.synthetic.lesions import (
    Canvas,
    draw_blot_haemorrhage,
    draw_cotton_wool_spot,
    draw_flame_haemorrhage,
    draw_hard_exudate,
    draw_microaneurysm,
    draw_new_vessels,
    draw_preretinal_haemorrhage,
)


def _inside(canvas: Canvas, point: np.ndarray) -> bool:
    """Whether the pixel nearest ``point`` lies in the image and the FOV."""
    x, y = round(point[0]), round(point[1])
    size = canvas.fov.shape[0]
    return 0 <= x < size and 0 <= y < size and bool(canvas.fov[y, x])


def _sample_point(
    rng: np.random.Generator,
    canvas: Canvas,
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


class Tally:
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
    canvas: Canvas,
    anatomy: Anatomy,
    tally: Tally,
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


def _place_scattered(
    rng: np.random.Generator,
    canvas: Canvas,
    anatomy: Anatomy,
    tally: Tally,
    count: int,
    lesion: str,
    region: str,
    draw: Callable[[np.random.Generator, Canvas, np.ndarray, Anatomy], bool],
) -> None:
    """``count`` independent lesions of one kind at random points of ``region``."""
    for _ in range(count):
        point = _sample_point(rng, canvas, anatomy, region)
        if point is not None:
            tally.add(lesion, point, draw(rng, canvas, point, anatomy))


def _place_microaneurysms(
    rng: np.random.Generator, canvas: Canvas, anatomy: Anatomy, tally: Tally, count: int
) -> None:
    """Microaneurysms scattered over the posterior pole."""
    _place_scattered(rng, canvas, anatomy, tally, count, "MA", "pole", draw_microaneurysm)


def _place_exudate_cluster(
    rng: np.random.Generator, canvas: Canvas, anatomy: Anatomy, tally: Tally
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
    rng: np.random.Generator, canvas: Canvas, anatomy: Anatomy, tally: Tally, count: int
) -> None:
    """Cotton-wool spots along the vascular arcades near the disc."""
    _place_scattered(rng, canvas, anatomy, tally, count, "SE", "arcade", draw_cotton_wool_spot)


def _render_moderate(
    rng: np.random.Generator, canvas: Canvas, anatomy: Anatomy, tally: Tally
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
    rng: np.random.Generator, canvas: Canvas, anatomy: Anatomy, tally: Tally
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
    rng: np.random.Generator, canvas: Canvas, anatomy: Anatomy, tally: Tally
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


def render_lesions(
    rng: np.random.Generator, target: int, canvas: Canvas, anatomy: Anatomy, tally: Tally
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
