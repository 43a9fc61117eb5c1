"""Lesion masks and the FOV packed into one uint8 plane (bits 0-3: MA, HE, EX, SE; bit 4: FOV).

One byte per pixel keeps the embedded dataset's memory cache and the preprocessing cache's mask
PNGs small; unpacking is a few tensor shifts in the loader.
"""

from __future__ import annotations

import numpy as np
import torch

from data.records import LESIONS

FOV_BIT = len(LESIONS)


def pack_planes(masks: np.ndarray | list[np.ndarray], fov: np.ndarray) -> np.ndarray:
    """``masks`` ``[4,H,W]`` (or a list of 4 HxW) bool, ``fov`` HxW bool -> HxW uint8 bit planes."""
    bits = np.zeros(fov.shape, dtype=np.uint8)
    for channel, mask in enumerate(masks):
        bits |= mask.astype(bool).astype(np.uint8) << channel
    bits |= fov.astype(bool).astype(np.uint8) << FOV_BIT
    return bits


def unpack_planes(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HxW uint8 bit planes -> (masks float32 ``[4,H,W]``, fov float32 ``[1,H,W]``)."""
    shifts = torch.arange(FOV_BIT + 1, dtype=torch.uint8, device=bits.device).view(-1, 1, 1)
    planes = ((bits.unsqueeze(0) >> shifts) & 1).float()
    return planes[:FOV_BIT], planes[FOV_BIT:]
