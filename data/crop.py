"""Batched random crops and flips of collated samples: one draw per sample, no Python loop over the batch."""

from __future__ import annotations

import torch

from data.records import DataError

# Keys cropped at HR size; "lr" is cropped at LR size with the matching offset.
HR_KEYS = ("hr", "masks", "fov")


def _gather_crops(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int
) -> torch.Tensor:
    """``images [N,C,H,W]``, per-sample ``top``/``left`` ``[N]`` -> ``[N,C,size,size]`` by advanced indexing."""
    steps = torch.arange(size, device=images.device)
    rows = (top.view(-1, 1) + steps).view(-1, 1, size, 1)
    cols = (left.view(-1, 1) + steps).view(-1, 1, 1, size)
    batch = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return images[batch, channels, rows, cols]


def random_crop(
    batch: dict,
    hr_crop: int,
    scale: int,
    generator: torch.Generator | None = None,
    lesion_share: float = 0.0,
) -> dict:
    """Crop ``hr``/``masks``/``fov`` to ``hr_crop`` and ``lr`` to ``hr_crop // scale`` at aligned offsets.

    Offsets are multiples of ``scale`` so every LR pixel maps onto whole HR pixels. Other keys
    pass through. ``hr_crop`` of 0 or at least the image size returns the batch unchanged.
    ``lesion_share``: each sample's crop is centred on a lesion pixel with this probability
    (:func:`lesion_offsets`); 0 draws exactly what it drew before the option existed.
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
    if lesion_share > 0:
        top, left = lesion_offsets(batch, top, left, hr_crop, scale, lesion_share, generator)
    cropped = dict(batch)
    for key in HR_KEYS:
        cropped[key] = _gather_crops(batch[key], top * scale, left * scale, hr_crop)
    cropped["lr"] = _gather_crops(batch["lr"], top, left, lr_crop)
    return cropped


def lesion_offsets(
    batch: dict,
    top: torch.Tensor,
    left: torch.Tensor,
    hr_crop: int,
    scale: int,
    share: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the uniform LR-unit offsets ``top``/``left [N]`` of a share of the samples by crops
    centred on a lesion pixel, so rare lesions (~1% of pixels) are in most crops.

    Per sample, with probability ``share`` (a Bernoulli draw): a lesion type among those with a
    valid mask (``mask_valid``) and at least one pixel in ``masks [N,L,H,W]``, uniformly, then one
    of its pixels, uniformly; the crop's top-left corner goes ``hr_crop // 2`` above and left of
    it, rounded down to the LR grid (so the pixel sits up to ``scale - 1`` px past the centre) and
    clamped inside the image (the pixel stays inside the crop). A sample without any lesion pixel
    keeps its uniform crop. Three uniform numbers per sample on the CPU generator, picks by inverse
    CDF (``searchsorted``) on the device: no host sync, no loop.
    """
    masks = batch["masks"]
    n, lesions, height, width = masks.shape
    device = masks.device
    use, type_draw, pixel_draw = torch.rand((3, n), generator=generator).to(
        device, non_blocking=True
    )
    present = masks.flatten(2) > 0.5  # [N,L,H*W]
    valid = (
        batch["mask_valid"].to(device).bool()
        if "mask_valid" in batch
        else torch.ones(n, lesions, dtype=torch.bool, device=device)
    )
    usable = valid & present.any(-1)  # [N,L]
    kinds = usable.sum(1)  # lesion types to choose from
    pick = torch.minimum((type_draw * kinds).long(), (kinds - 1).clamp(min=0))
    lesion = (
        (usable.cumsum(1) <= pick.view(-1, 1)).sum(1).clamp(max=lesions - 1)
    )  # the (pick+1)-th usable type
    pixels = present[torch.arange(n, device=device), lesion].to(torch.int32).cumsum(1)  # [N,H*W]
    count = pixels[:, -1:]
    target = (
        torch.minimum((pixel_draw.view(-1, 1) * count).to(torch.int32), (count - 1).clamp(min=0))
        + 1
    )
    index = (
        torch.searchsorted(pixels, target).view(-1).clamp(max=height * width - 1)
    )  # the target-th lesion pixel
    row, col = index // width, index % width
    centred_top = torch.div(row - hr_crop // 2, scale, rounding_mode="floor").clamp(
        0, (height - hr_crop) // scale
    )
    centred_left = torch.div(col - hr_crop // 2, scale, rounding_mode="floor").clamp(
        0, (width - hr_crop) // scale
    )
    chosen = (use < share) & (kinds > 0)
    return torch.where(chosen, centred_top, top), torch.where(chosen, centred_left, left)


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
