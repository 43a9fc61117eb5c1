"""One synthetic sample from ``(seed, split, index)``: augmented background, lesions for a drawn grade, label.

The target grade is drawn from ``class_mix``; the label is computed from what was rendered inside the FOV
by :func:`~data.synthetic.grading.icdr_grade`, never copied from the target. Everything is a pure function
of ``(seed, split, index)``: bit-identical in any process and any order of access.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data.records import LESIONS, NUM_GRADES, DataError
from data.synthetic.backgrounds import Anatomy, augmented_background
from data.synthetic.grading import PROLIFERATIVE_SIGNS, icdr_grade
from data.synthetic.lesions import Canvas
from data.synthetic.placement import Tally, render_lesions

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
MIN_SIZE = 16


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


def check_size(size: int) -> None:
    """DataError unless ``size`` is at least MIN_SIZE."""
    if size < MIN_SIZE:
        raise DataError(f"size must be >= {MIN_SIZE}, got {size}")


def render_background(
    seed: int, split: str, index: int, size: int, backgrounds: str = "all"
) -> tuple[np.ndarray, np.ndarray, Anatomy]:
    """The lesion-free augmented background of a sample: (image uint8 [S,S,3], fov bool [S,S], anatomy)."""
    check_size(size)
    background_stream = _seed_sequences(seed, split, index)[0]
    return augmented_background(np.random.default_rng(background_stream), size, backgrounds)


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
    check_size(size)
    background_stream, lesion_stream, _ = _seed_sequences(seed, split, index)
    image, fov, anatomy = augmented_background(
        np.random.default_rng(background_stream), size, backgrounds
    )
    lesion_rng = np.random.default_rng(lesion_stream)
    target = int(lesion_rng.choice(NUM_GRADES, p=probabilities))
    canvas = Canvas(image, fov)
    tally = Tally(anatomy)
    render_lesions(lesion_rng, target, canvas, anatomy, tally)
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
