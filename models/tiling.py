"""Tiled inference of a fully convolutional net over a large image (issue 28: lesion maps at HR
1024 from a segmentation net trained on crops), the same code at test and predict time.

The image is covered by ``tile`` x ``tile`` windows overlapping by ``overlap`` pixels (the last
window of a row or column flush with the image edge); each window's output is weighted by a
ramp that falls from 1 in its middle to near 0 at its edges *inside* the image (an edge on the
image border keeps weight 1: nothing there is a seam), and the weighted outputs are divided by
the summed weights. Seams therefore blend instead of showing the windows' zero padding. Windows
run ``batch`` at a time, so memory is that of ``batch`` windows whatever the image size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def window_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows covering ``[0, size)``: stride ``tile - overlap``, the last flush."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _ramp(tile: int, overlap: int, at_start: bool, at_end: bool, device) -> torch.Tensor:
    """``[tile]`` weights: linear over ``overlap`` pixels at an inner edge, 1 at an image edge."""
    position = torch.arange(tile, device=device, dtype=torch.float32) + 0.5
    weight = torch.ones(tile, device=device)
    if overlap > 0:
        if not at_start:
            weight = torch.minimum(weight, position / overlap)
        if not at_end:
            weight = torch.minimum(weight, (tile - position) / overlap)
    return weight


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int,
    overlap: int,
    batch: int = 8,
) -> torch.Tensor:
    """``fn`` (``[B,C,tile,tile] -> [B,K,tile,tile]``) over ``image`` ``[N,C,H,W]`` by blended
    windows (module docstring); ``fn(image)`` itself when one window covers the image."""
    height, width = image.shape[-2:]
    if tile >= height and tile >= width:
        return fn(image)
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got {overlap} for tile {tile}")
    rows, columns = window_starts(height, tile, overlap), window_starts(width, tile, overlap)
    windows = [(top, left) for top in rows for left in columns]
    out = norm = None
    for first in range(0, len(windows), batch):
        chosen = windows[first : first + batch]
        crops = torch.cat(
            [image[..., top : top + tile, left : left + tile] for top, left in chosen]
        )
        results = fn(crops).float().unflatten(0, (len(chosen), image.shape[0]))
        if out is None:
            out = image.new_zeros(
                (image.shape[0], results.shape[2], height, width), dtype=torch.float32
            )
            norm = image.new_zeros((1, 1, height, width), dtype=torch.float32)
        for (top, left), result in zip(chosen, results):
            weight = (
                _ramp(tile, overlap, top == 0, top + tile >= height, image.device)[:, None]
                * _ramp(tile, overlap, left == 0, left + tile >= width, image.device)[None, :]
            )
            out[..., top : top + tile, left : left + tile] += result * weight
            norm[..., top : top + tile, left : left + tile] += weight
    return out / norm
