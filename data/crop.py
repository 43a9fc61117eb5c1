"""Batched random crops and flips of collated samples: one draw per sample, no Python loop over the batch."""
from __future__ import annotations

import torch

from data.records import DataError

# Keys cropped at HR size; "lr" is cropped at LR size with the matching offset.
HR_KEYS = ("hr", "masks", "fov")


def _gather_crops(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """``images [N,C,H,W]``, per-sample ``top``/``left`` ``[N]`` -> ``[N,C,size,size]`` by advanced indexing."""
    steps = torch.arange(size, device=images.device)
    rows = (top.view(-1, 1) + steps).view(-1, 1, size, 1)
    cols = (left.view(-1, 1) + steps).view(-1, 1, 1, size)
    batch = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return images[batch, channels, rows, cols]


def random_crop(batch: dict, hr_crop: int, scale: int, generator: torch.Generator | None = None) -> dict:
    """Crop ``hr``/``masks``/``fov`` to ``hr_crop`` and ``lr`` to ``hr_crop // scale`` at aligned offsets.

    Offsets are multiples of ``scale`` so every LR pixel maps onto whole HR pixels. Other keys
    pass through. ``hr_crop`` of 0 or at least the image size returns the batch unchanged.
    """
    height, width = batch["hr"].shape[-2:]
    if hr_crop <= 0 or hr_crop >= min(height, width):
        return batch
    if hr_crop % scale:
        raise DataError(f"crop size {hr_crop} is not divisible by the scale {scale}")
    n = batch["hr"].shape[0]
    device = batch["hr"].device
    lr_crop = hr_crop // scale
    top = torch.randint(0, (height - hr_crop) // scale + 1, (n,), generator=generator).to(device)
    left = torch.randint(0, (width - hr_crop) // scale + 1, (n,), generator=generator).to(device)
    cropped = dict(batch)
    for key in HR_KEYS:
        cropped[key] = _gather_crops(batch[key], top * scale, left * scale, hr_crop)
    cropped["lr"] = _gather_crops(batch["lr"], top, left, lr_crop)
    return cropped


# Keys flipped with the sample: every image-shaped tensor (the last two: cached outputs of frozen nets).
FLIP_KEYS = ("hr", "lr", "masks", "fov", "lesion_logits", "stage_image")


def random_flip(batch: dict, generator: torch.Generator | None = None) -> dict:
    """Flip each sample left-right and top-bottom, each with probability 1/2 (training augmentation).

    One draw per sample on the CPU generator (reproducible whatever the device), applied to the
    image, its LR version, lesion masks and FOV alike with ``torch.where``: no host sync, no loop.
    """
    n = batch["hr"].shape[0]
    device = batch["hr"].device
    flips = (torch.rand((2, n), generator=generator) < 0.5).to(device, non_blocking=True)
    flipped = dict(batch)
    for key in FLIP_KEYS:
        if key not in batch:
            continue
        image = batch[key]
        for flip, dim in zip(flips, (-1, -2)):
            image = torch.where(flip.view(-1, 1, 1, 1), image.flip(dim), image)
        flipped[key] = image
    return flipped
