"""What resolution a lesion type needs: how much of its contrast survives a given image size.

Each annotated lesion (a connected component of its mask) is compared with a thin ring of
background around it in the green channel, where red lesions (MA, HE) are dark and exudates
bright. The image is shrunk to ``S x S`` (area, as the cache does) and brought back (bicubic), and
the lesion's contrast there is divided by its contrast at full size: 1 means the size keeps the
lesion as visible as the source does, 0 that it is gone. This measures what an input at that size
can show, independently of any trained network (docs/RESULTS.md, issue 14).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage

RING_GAP = 1  # px between a lesion and its background ring (its blurred edge)
RING_WIDTH = 3  # px of the ring
MIN_RING_PIXELS = 5
MIN_CONTRAST = 3.0  # grey levels: fainter lesions (no visible contrast at full size) are left out


def resample_views(green: np.ndarray, sizes: Sequence[int]) -> dict[int, np.ndarray]:
    """``green`` (``N x N``) shrunk to each size (area) and brought back to ``N`` (bicubic)."""
    n = green.shape[0]
    return {
        size: cv2.resize(
            cv2.resize(green, (size, size), interpolation=cv2.INTER_AREA),
            (n, n),
            interpolation=cv2.INTER_CUBIC,
        )
        for size in sizes
    }


def contrast_retention(
    green: np.ndarray, lesion: np.ndarray, background: np.ndarray, sizes: Sequence[int]
) -> dict[int, np.ndarray]:
    """Per lesion component of ``lesion`` (``N x N`` bool), its contrast at each size over its
    contrast at ``N``: ``{size: ratios}``. ``background`` marks pixels a ring may use (inside the
    FOV, no lesion of any type)."""
    if (
        green.ndim != 2
        or green.shape[0] != green.shape[1]
        or lesion.shape != green.shape
        or background.shape != green.shape
    ):
        raise ValueError(
            f"expected square N x N green, lesion and background planes, got {green.shape}, {lesion.shape}, {background.shape}"
        )
    green = green.astype(np.float32)
    views = resample_views(green, sizes)
    labels, _ = ndimage.label(lesion, structure=np.ones((3, 3), dtype=bool))
    ratios: dict[int, list[float]] = {size: [] for size in sizes}
    reach = RING_GAP + RING_WIDTH + 1
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        window = tuple(slice(max(part.start - reach, 0), part.stop + reach) for part in box)
        component = labels[window] == index
        ring = (
            ndimage.binary_dilation(component, iterations=RING_GAP + RING_WIDTH)
            & ~ndimage.binary_dilation(component, iterations=RING_GAP)
            & background[window]
        )
        if ring.sum() < MIN_RING_PIXELS:
            continue
        full = green[window][ring].mean() - green[window][component].mean()
        if abs(full) < MIN_CONTRAST:
            continue
        for size, view in views.items():
            ratios[size].append((view[window][ring].mean() - view[window][component].mean()) / full)
    return {size: np.asarray(values, dtype=np.float64) for size, values in ratios.items()}
