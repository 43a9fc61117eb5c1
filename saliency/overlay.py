"""Saliency figures: RGB overlays written as PNG, and contact sheets (matplotlib Figure on Agg).

Colour order is RGB everywhere; the one BGR conversion is at the OpenCV write, so a red fundus
stays red (pytorch-grad-cam's ``show_cam_on_image`` defaults to BGR, a known source of swapped
colours). The heat map's opacity grows with the saliency (``alpha * map``): where the map is 0
the overlay is the image itself. Pixel-level maps are shown saturated at their 99th percentile
(:func:`saturate`); the ``.npy`` files and the metrics use the maps unclipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from data.records import DataError

COLORMAP = "jet"
ALPHA = 0.6
SATURATION_PERCENTILE = 99.0
PANEL_INCHES = 2.2
DPI = 100
ROWS_PER_SHEET = 8


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def to_rgb_array(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``[3,H,W]`` tensor/array in [0,1] (or ``[H,W,3]``) -> ``[H,W,3]`` float in [0,1]."""
    array = _numpy(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = np.moveaxis(array, 0, -1)
    return np.clip(array, 0.0, 1.0)


def overlay(
    image: np.ndarray | torch.Tensor, saliency: np.ndarray | torch.Tensor, alpha: float = ALPHA
) -> np.ndarray:
    """RGB image ``[3,H,W]`` in [0,1] and a display map ``[H,W]`` (or ``[1,H,W]``) in [0,1] ->
    ``[H,W,3]`` uint8 RGB: ``(1 - alpha*m) * image + alpha*m * jet(m)``."""
    rgb = to_rgb_array(image)
    heat_value = np.clip(_numpy(saliency).reshape(rgb.shape[:2]), 0.0, 1.0)
    heat = colormaps[COLORMAP](heat_value)[..., :3]
    weight = alpha * heat_value[..., None]
    blended = (1.0 - weight) * rgb + weight * heat
    return np.round(blended * 255.0).astype(np.uint8)


def saturate(
    saliency: np.ndarray | torch.Tensor, percentile: float = SATURATION_PERCENTILE
) -> np.ndarray:
    """A display map divided by its ``percentile``-th percentile and clipped to [0,1], for overlays
    of pixel-level maps, where a few extreme pixels would otherwise leave the rest invisible (as
    Captum's ``outlier_perc``). Maps whose percentile is 0 are returned unchanged."""
    values = _numpy(saliency)
    level = float(np.percentile(values, percentile))
    return np.clip(values / level, 0.0, 1.0) if level > 0 else values


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write ``[H,W,3]`` uint8 RGB as a PNG (converted to OpenCV's BGR here and only here)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise DataError(f"could not write {path}")
    return path


@dataclass
class SheetRow:
    """One image of a contact sheet: its picture, a title, and one ``(title, overlay)`` per method."""

    title: str
    image: np.ndarray
    panels: list[tuple[str, np.ndarray]]
    contour: np.ndarray | None = None  # [H,W] {0,1}: e.g. lesion ground truth, drawn in cyan


def contact_sheet(path: str | Path, rows: Sequence[SheetRow], title: str = "") -> Path:
    """A grid, one row per image: the image, then each method's overlay. Written as PNG."""
    cols = 1 + max(len(row.panels) for row in rows)
    figure = Figure(
        figsize=(PANEL_INCHES * cols, PANEL_INCHES * len(rows) + 0.5), layout="constrained"
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax_row, row in zip(axes, rows):
        for ax, (panel_title, picture) in zip(ax_row, [(row.title, row.image), *row.panels]):
            ax.imshow(picture, interpolation="nearest")
            if row.contour is not None and 0 < row.contour.max() and row.contour.min() < 1:
                ax.contour(row.contour, levels=[0.5], colors="cyan", linewidths=0.5)
            ax.set_title(panel_title, fontsize="small")
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def sheet_name(number: int) -> str:
    """``contact_sheet.png``, then ``contact_sheet_2.png``, ... for sheets of ``ROWS_PER_SHEET`` images."""
    return "contact_sheet.png" if number == 1 else f"contact_sheet_{number}.png"
