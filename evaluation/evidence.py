"""The evidence panel of one graded photograph, drawn with PIL (a few milliseconds, no matplotlib).

Tiles left to right: the photograph as given, the model's input (the LR image, shown with its
pixels), the SR image, the four lesion maps over SR in distinct colours with a legend, and the
Grad-CAM of the predicted grade over SR. With ``--input hr`` the LR and SR tiles give way to the
graded HR image. A header line names the file, the grade and the referable-DR probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from data.records import GRADE_NAMES, LESION_NAMES, LESIONS

TILE = 320  # side of one image tile in pixels
MARGIN = 8
HEADER = 44
CAPTION = 20
LEGEND = 20 * len(LESIONS) + 8
# Lesion overlay colours, chosen to stand out on the orange-red fundus and from each other.
LESION_COLOURS: dict[str, tuple[int, int, int]] = {
    "MA": (0, 230, 255),  # cyan
    "HE": (60, 255, 60),  # green
    "EX": (40, 80, 255),  # blue
    "SE": (255, 60, 255),  # magenta
}
LESION_THRESHOLD = 0.5  # a pixel is drawn (and counted in the CSV's areas) at this probability
OVERLAY_ALPHA = 0.8
CAM_ALPHA = 0.5
_JET = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``[3,H,W]`` or ``[H,W,3]`` float in [0,1] (or uint8) -> ``[H,W,3]`` uint8."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array)


def _fit(image: np.ndarray, nearest: bool = False) -> Image.Image:
    """An RGB array letterboxed (black) into a TILE x TILE tile."""
    picture = Image.fromarray(image)
    factor = TILE / max(picture.size)
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    picture = picture.resize(
        size, Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    )
    tile = Image.new("RGB", (TILE, TILE))
    tile.paste(picture, ((TILE - size[0]) // 2, (TILE - size[1]) // 2))
    return tile


def lesion_overlay(image: np.ndarray, lesion_probs: np.ndarray) -> np.ndarray:
    """``[H,W,3]`` uint8 with each lesion's pixels at probability >= 0.5 painted in its colour.

    ``lesion_probs``: ``[4,H,W]`` in [0,1], order MA, HE, EX, SE; small lesions (MA) are painted last.
    """
    out = image.astype(np.float32)
    for index in reversed(range(len(LESIONS))):
        mask = lesion_probs[index] >= LESION_THRESHOLD
        colour = np.asarray(LESION_COLOURS[LESIONS[index]], dtype=np.float32)
        out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * colour
    return out.astype(np.uint8)


def cam_overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """``[H,W,3]`` uint8 under a jet-coloured ``[H,W]`` map in [0,1] at alpha 0.5."""
    heat = _JET[np.clip(np.asarray(cam) * 255, 0, 255).astype(np.uint8)]
    return ((1 - CAM_ALPHA) * image.astype(np.float32) + CAM_ALPHA * heat).astype(np.uint8)


def _legend(draw: ImageDraw.ImageDraw, left: int, top: int, areas: Sequence[float] | None) -> None:
    font = _font(13)
    for index, name in enumerate(LESIONS):
        y = top + 4 + 20 * index
        draw.rectangle([left, y, left + 14, y + 14], fill=LESION_COLOURS[name], outline=(0, 0, 0))
        area = f"  {100 * areas[index]:.2f} % of FOV" if areas is not None else ""
        draw.text((left + 20, y), f"{name} {LESION_NAMES[name]}{area}", fill=(0, 0, 0), font=font)


def draw_panel(
    path: str | Path,
    photograph: np.ndarray,
    graded: np.ndarray,
    lesion_probs: np.ndarray,
    cam: np.ndarray | None,
    title: str,
    lr: np.ndarray | None = None,
    lesion_areas: Sequence[float] | None = None,
    cam_grade: int | None = None,
) -> Path:
    """Write one photograph's evidence panel as PNG and return its path.

    photograph: ``[h,w,3]`` uint8 (any aspect); graded: the image the grader saw (SR, or HR with
    ``lr=None``), ``[3,H,W]`` float in [0,1] or ``[H,W,3]`` uint8; lesion_probs ``[4,H,W]`` and cam
    ``[H,W]`` in [0,1] (None: no Grad-CAM tile, as for an exported ONNX file); lr: the model's
    LR input, or None when HR was graded directly.
    """
    graded_rgb = to_uint8(graded)
    tiles = [("photograph", _fit(to_uint8(photograph)))]
    if lr is not None:
        lr_rgb = to_uint8(lr)
        tiles.append(
            (f"model input (LR {lr_rgb.shape[1]}x{lr_rgb.shape[0]})", _fit(lr_rgb, nearest=True))
        )
        tiles.append(
            (f"super-resolved (SR {graded_rgb.shape[1]}x{graded_rgb.shape[0]})", _fit(graded_rgb))
        )
        over = "SR"
    else:
        tiles.append(
            (f"graded image (HR {graded_rgb.shape[1]}x{graded_rgb.shape[0]})", _fit(graded_rgb))
        )
        over = "HR"
    tiles.append(
        (
            f"lesions on {over} (p >= {LESION_THRESHOLD})",
            _fit(lesion_overlay(graded_rgb, np.asarray(lesion_probs))),
        )
    )
    lesion_column = len(tiles) - 1
    if cam is not None:
        target = f"grade {cam_grade}" if cam_grade is not None else "predicted grade"
        tiles.append((f"Grad-CAM of {target}", _fit(cam_overlay(graded_rgb, np.asarray(cam)))))
    width = MARGIN + len(tiles) * (TILE + MARGIN)
    height = HEADER + CAPTION + TILE + LEGEND + MARGIN
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, 8), title, fill=(0, 0, 0), font=_font(16))
    caption_font = _font(13)
    for column, (caption, tile) in enumerate(tiles):
        left = MARGIN + column * (TILE + MARGIN)
        draw.text((left, HEADER), caption, fill=(60, 60, 60), font=caption_font)
        canvas.paste(tile, (left, HEADER + CAPTION))
    _legend(draw, MARGIN + lesion_column * (TILE + MARGIN), HEADER + CAPTION + TILE, lesion_areas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=False, compress_level=3)
    return path


def panel_title(
    name: str,
    grade: int | None,
    probabilities: Sequence[float] | None,
    referable: float | None,
    flags: Sequence[str] = (),
    reference: int | None = None,
) -> str:
    """``IMG.jpg;  grade 2 (moderate), p = 0.61;  referable DR p = 0.83;  reference grade 2;  quality flags: ...``."""
    parts = [name]
    if grade is not None and probabilities is not None:
        parts.append(
            f"grade {grade} ({GRADE_NAMES[grade] if grade < len(GRADE_NAMES) else grade}), p = {probabilities[grade]:.2f}"
        )
    if referable is not None:
        parts.append(f"referable DR p = {referable:.2f}")
    if reference is not None:
        parts.append(f"reference grade {reference}")
    if flags:
        parts.append("quality flags: " + ", ".join(flags))
    return ";  ".join(parts)
