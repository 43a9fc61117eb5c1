"""Tiny fundus-like images and masks for dataset fixture trees built inside tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def fundus_array(
    height: int = 48, width: int = 64, seed: int = 0, background: int = 0
) -> np.ndarray:
    """An HxWx3 uint8 orange disc (the FOV) on a uniform background, with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    radius = 0.45 * min(height, width)
    inside = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= radius**2
    image = np.full((height, width, 3), background, dtype=np.uint8)
    colour = np.array([200, 90, 40], dtype=np.int16)
    noise = rng.integers(-10, 10, size=(height, width, 3))
    image[inside] = np.clip(colour + noise[inside], 0, 255).astype(np.uint8)
    return image


def write_image(
    path: Path, height: int = 48, width: int = 64, seed: int = 0, background: int = 0
) -> Path:
    """Write a tiny fundus image; the format follows the suffix (.jpg, .jpeg, .png, .tif, upper case too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = fundus_array(height, width, seed, background)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}[
        path.suffix.lower()
    ]
    Image.fromarray(array).save(path, format=fmt)
    return path


def lesion_array(
    height: int = 48, width: int = 64, box: tuple[int, int, int, int] = (10, 20, 14, 26)
) -> np.ndarray:
    """An HxW bool array, True inside ``box = (top, left, bottom, right)``."""
    mask = np.zeros((height, width), dtype=bool)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = True
    return mask


def write_mask(
    path: Path,
    height: int = 48,
    width: int = 64,
    box: tuple[int, int, int, int] | None = (10, 20, 14, 26),
    style: str = "red",
) -> Path:
    """Write a lesion mask. ``style``: ``red`` (RGB, lesion (255,0,0), IDRiD), ``palette`` (P mode,
    index 1 = red, the shared IDRiD copy), ``binary`` (L, 0/255), ``ones`` (L, 0/1),
    ``soft`` (L with anti-aliased values 1-254 and a core of 255, FGADR). ``box=None``: all zero."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = (
        lesion_array(height, width, box)
        if box is not None
        else np.zeros((height, width), dtype=bool)
    )
    fmt = {".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG"}[path.suffix.lower()]
    if style == "red":
        rgb = np.zeros((height, width, 3), dtype=np.uint8)
        rgb[mask, 0] = 255
        Image.fromarray(rgb).save(path, format=fmt)
    elif style == "palette":
        image = Image.frombytes("P", (width, height), mask.astype(np.uint8).tobytes())
        image.putpalette([0, 0, 0, 255, 0, 0])
        image.save(path, format=fmt)
    elif style == "binary":
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path, format=fmt)
    elif style == "ones":
        Image.fromarray(mask.astype(np.uint8), mode="L").save(path, format=fmt)
    elif style == "soft":
        values = np.zeros((height, width), dtype=np.uint8)
        values[mask] = 255
        ring = np.zeros_like(mask)
        if box is not None:
            top, left, bottom, right = box
            ring[max(top - 1, 0) : bottom + 1, max(left - 1, 0) : right + 1] = True
            ring &= ~mask
        values[ring] = 60  # anti-aliased edge below the 128 threshold
        Image.fromarray(values, mode="L").save(path, format=fmt)
    else:
        raise ValueError(f"unknown mask style {style!r}")
    return path


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path
