"""The one image decoder: dataset images (``data.prepare``'s cache, the duplicate finder) and
photographs to grade (``predict.py``, the saliency CLI) are read by :func:`decode_rgb`, so a
photograph is decoded exactly as the training data was.

Any common format (JPEG, PNG, TIFF, BMP) in 8 or 16 bits, grey, RGB, RGBA, palette or CMYK, comes
out as upright HxWx3 uint8 RGB: EXIF-rotated photographs are turned upright; 16-bit and 32-bit
grey are scaled by their value range (65535 for 16-bit files, 255 for 8-bit values stored wider);
alpha is composited over black (the background outside a fundus camera's field of view). A
header promising more than ``max_pixels`` is refused before any pixel is decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from data.records import DataError

# Decompression-bomb guard: a header promising more pixels than this is refused before decoding.
# 100 MP is four times the largest fundus camera frame (6000x4000) and about 300 MB decoded.
MAX_PIXELS = 100_000_000
ORIENTATION_TAG = 0x0112  # EXIF orientation; 5-8 swap width and height
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class DecodeError(DataError):
    """A file that cannot be decoded; ``kind`` says why (missing, empty, too_large, unreadable),
    which predict.py writes as the photograph's status."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def draft_factor(size: tuple[int, int], min_side: int) -> int:
    """The JPEG DCT scaling (1, 2, 4, 8) that keeps the shorter side at least ``min_side``."""
    return max(1, min(size) // max(min_side, 1))


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 from any PIL mode: 16-bit and 32-bit grey by value range, alpha over black."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max() <= 1.0 else 1.0
        grey = np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def decode_rgb(
    path: str | Path, min_side: int | None = None, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, tuple[int, int]]:
    """``path`` as upright HxWx3 uint8 RGB, and its full-resolution upright ``(height, width)``.

    ``min_side``: JPEGs are decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, much faster) as long
    as the shorter side stays at least ``min_side``. Raises :class:`DecodeError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError("missing", f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DecodeError("empty", f"{path}: zero-byte file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    "too_large",
                    f"{path}: {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} (--max-pixels)",
                )
            if min_side is not None and image.format == "JPEG":
                factor = draft_factor((width, height), min_side)
                if factor >= 2:
                    image.draft("RGB", (width // factor, height // factor))
            image.load()
            if image.getexif().get(ORIENTATION_TAG) in TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            array = to_rgb(ImageOps.exif_transpose(image))
    except DecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise DecodeError("too_large", f"{path}: {error}") from None
    except UnidentifiedImageError:
        raise DecodeError("unreadable", f"{path}: not an image PIL can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DecodeError("unreadable", f"{path}: truncated or corrupt image ({error})") from None
    return np.ascontiguousarray(array), (height, width)
